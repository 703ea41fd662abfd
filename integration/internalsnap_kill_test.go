package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qchain/qchain/qcow2"
)

// Disk-only internal snapshots have one journal step per operation
// (internal-snapshot, internal-apply, internal-delete), and the qchain
// binary has no hook to stop before it (Manager.BeforeStep is for Go
// callers): the kill points are found from outside. The journal's
// appearance marks "planned, nothing done"; offline, a
// qemu-storage-daemon wrapper (--storage-daemon) that blocks on its k-th
// run marks "k-1 images done", and kills timed from the k-th daemon's
// QMP socket land around its snapshot command; live, a QMP proxy between
// qchain and the VM's monitor marks "the transaction (or snapshot-delete
// job) not sent" and "done in qemu, not yet seen by qchain". The native
// revert has no such mark: its kills are timed from the journal.

// ikWrapper is the storage daemon qchain runs in these tests: it logs its
// arguments, one run a line, to $QCHAIN_IK_DIR/runs; on run number
// $QCHAIN_IK_BLOCK it creates $QCHAIN_IK_DIR/blocked and waits (to die
// with qchain: the parent-death signal survives the exec); every other
// run is the real daemon.
const ikWrapper = `#!/bin/sh
echo "$*" >> "$QCHAIN_IK_DIR/runs"
n=$(wc -l < "$QCHAIN_IK_DIR/runs")
if [ "$n" -eq "${QCHAIN_IK_BLOCK:-0}" ]; then
	: > "$QCHAIN_IK_DIR/blocked"
	exec sleep 120
fi
exec qemu-storage-daemon "$@"
`

// ikEnv is a VM with disks vda (an overlay of gold.qcow2) and vdb whose
// disk-only internal snapshots are taken, reverted and deleted by a
// qchain killed on the way.
type ikEnv struct {
	*scEnv
	vm      string
	wrapper string
	proxy   *qmpProxy // live only
	q       *bkQemu   // live only
	vmDisks []ikDisk
}

// ikPoint is where a run is killed: wait returns once qchain is there,
// or false when it exited first.
type ikPoint struct {
	name string
	// block is the storage daemon run the wrapper blocks on (0: none).
	block int
	wait  func(e *ikEnv, exited <-chan struct{}) bool
	// exact says the point must be reached (not a timing guess).
	exact bool
}

func journalPoint(delay time.Duration) ikPoint {
	return ikPoint{name: fmt.Sprintf("journal+%s", delay), wait: func(e *ikEnv, exited <-chan struct{}) bool {
		for {
			if _, err := os.Stat(e.journal()); err == nil {
				time.Sleep(delay)
				return true
			}
			select {
			case <-exited:
				return false
			case <-time.After(200 * time.Microsecond):
			}
		}
	}}
}

// daemonPoint stops the k-th storage daemon run before it starts.
func daemonPoint(k int) ikPoint {
	return ikPoint{name: fmt.Sprintf("before-daemon-%d", k), block: k, exact: true, wait: func(e *ikEnv, exited <-chan struct{}) bool {
		return waitFile(filepath.Join(e.root, "ik", "blocked"), exited)
	}}
}

// daemonRunPoint kills qchain delay after the QMP socket of the k-th
// storage daemon run appeared: about when qchain sends it the snapshot
// command. The daemon gets its parent-death signal then.
func daemonRunPoint(k int, delay time.Duration) ikPoint {
	return ikPoint{name: fmt.Sprintf("daemon-%d-socket+%s", k, delay), wait: func(e *ikEnv, exited <-chan struct{}) bool {
		for {
			b, _ := os.ReadFile(filepath.Join(e.root, "ik", "runs"))
			if lines := strings.Split(string(b), "\n"); len(lines) > k {
				_, sock, _ := strings.Cut(lines[k-1], "socket,path=")
				sock, _, _ = strings.Cut(sock, ",")
				if _, err := os.Stat(sock); err == nil {
					time.Sleep(delay)
					return true
				}
			}
			select {
			case <-exited:
				return false
			case <-time.After(100 * time.Microsecond):
			}
		}
	}}
}

// qmpPoint kills qchain before the proxy forwards command to qemu, or
// (after) once qemu answered it, before qchain sees the answer.
func qmpPoint(command string, after bool) ikPoint {
	when := map[bool]string{false: "before", true: "after"}[after]
	return ikPoint{name: when + "-" + command, exact: true, wait: func(e *ikEnv, exited <-chan struct{}) bool {
		select {
		case <-e.proxy.arm(command, after):
			return true
		case <-exited:
			return false
		}
	}}
}

func waitFile(name string, exited <-chan struct{}) bool {
	for {
		if _, err := os.Stat(name); err == nil {
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(time.Millisecond):
		}
	}
}

func newIKEnv(t *testing.T) *ikEnv {
	e := &ikEnv{scEnv: newSCEnv(t), vm: "ik"}
	dir := filepath.Join(e.root, "ik")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.wrapper = filepath.Join(dir, "storage-daemon")
	if err := os.WriteFile(e.wrapper, []byte(ikWrapper), 0o700); err != nil {
		t.Fatal(err)
	}
	return e
}

// disks are the VM's disks, read once: internal snapshots never change
// the active images.
func (e *ikEnv) disks() []ikDisk {
	e.t.Helper()
	if e.vmDisks == nil {
		for _, d := range e.show(e.vm).Disks {
			e.vmDisks = append(e.vmDisks, ikDisk{Target: d.Target, Active: d.Active})
		}
	}
	return e.vmDisks
}

type ikDisk struct{ Target, Active string }

func (e *ikEnv) journal() string { return filepath.Join(e.state, "vms", e.vm, "journal.json") }

// killAt runs qchain with args, kills it (SIGKILL) at p and reports
// whether it was killed (false: it exited before p).
func (e *ikEnv) killAt(p ikPoint, args ...string) bool {
	e.t.Helper()
	dir := filepath.Join(e.root, "ik")
	os.Remove(filepath.Join(dir, "runs"))
	os.Remove(filepath.Join(dir, "blocked"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Dir = e.img
	cmd.Env = append(os.Environ(), "QCHAIN_STATE_DIR="+e.state, "QCHAIN_IK_DIR="+dir, fmt.Sprintf("QCHAIN_IK_BLOCK=%d", p.block))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	reached := p.wait(e, exited)
	cmd.Process.Kill() // the qchain this test started
	<-exited
	if e.proxy != nil {
		e.proxy.disarm()
	} else {
		e.waitUnlocked()
	}
	if !reached && p.exact {
		e.t.Fatalf("qchain %s exited (%s) before %s: %s", strings.Join(args, " "), cmd.ProcessState, p.name, stderr.String())
	}
	return reached
}

// waitUnlocked waits until no process holds the VM's images: the
// storage daemon of a killed qchain quits on its own (it is sent SIGTERM
// when qchain dies, and first finishes the command it runs).
func (e *ikEnv) waitUnlocked() {
	e.t.Helper()
	for _, d := range e.disks() {
		for start := time.Now(); ; time.Sleep(2 * time.Millisecond) {
			busy, err := qcow2.InUse(d.Active)
			if err != nil {
				e.t.Fatal(err)
			}
			if !busy {
				break
			}
			if time.Since(start) > 20*time.Second {
				e.t.Fatalf("%s is still in use 20s after qchain was killed", d.Active)
			}
		}
	}
}

// ikSnapshot is a `snapshot list --output=json` entry.
type ikSnapshot struct {
	Name     string `json:"name"`
	Current  bool   `json:"current"`
	Internal bool   `json:"internal"`
	Disks    []struct {
		Target string `json:"target"`
		File   string `json:"file"`
	} `json:"disks"`
}

func (e *ikEnv) list() []ikSnapshot {
	e.t.Helper()
	var l []ikSnapshot
	out := e.ok("snapshot", "list", "--output=json", e.vm)
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		e.t.Fatalf("snapshot list --output=json: %v\n%s", err, out)
	}
	return l
}

func names(l []ikSnapshot) []string {
	var out []string
	for _, s := range l {
		out = append(out, s.Name)
	}
	sort.Strings(out)
	return out
}

// recoverAndCheck runs recover after a kill and checks the tree: the
// snapshot list is exactly without or exactly with (the operation did not
// happen or happened entirely; nothing else), every image is clean
// (qemu-img check exit 0; with leaksOK leaks alone, exit 3, are
// reported and given back) and holds exactly the tags of the internal
// snapshots qchain lists in it. It returns whether the operation
// happened.
func (e *ikEnv) recoverAndCheck(what string, leaksOK bool, without, with []string) bool {
	e.t.Helper()
	e.ok("recover", e.vm)
	if _, err := os.Stat(e.journal()); err == nil {
		e.t.Fatalf("%s: a journal is left after recover", what)
	}
	l := e.list()
	got := names(l)
	sort.Strings(without)
	sort.Strings(with)
	var happened bool
	switch {
	case slices.Equal(got, with):
		happened = true
	case slices.Equal(got, without):
	default:
		e.t.Fatalf("%s: after recover the snapshots are %v: want %v (not done) or %v (done)", what, got, without, with)
	}
	if e.q != nil {
		e.q.io(e.t, "vda")
		e.q.io(e.t, "vdb")
	}
	tags := map[string][]string{}
	for _, d := range e.disks() {
		tags[d.Active] = []string{}
	}
	for _, s := range l {
		for _, d := range s.Disks {
			if s.Internal {
				tags[d.File] = append(tags[d.File], s.Name)
			}
		}
	}
	for f, want := range tags {
		sort.Strings(want)
		if got := imageTags(e.t, f); !slices.Equal(got, want) {
			e.t.Fatalf("%s: qemu-img snapshot -l %s lists %v, qchain's internal snapshots in it are %v", what, f, got, want)
		}
		imageClean(e.t, what, f, leaksOK)
	}
	return happened
}

// imageTags lists the internal snapshot names of image with qemu-img.
func imageTags(t *testing.T, image string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-img", "snapshot", "-U", "-l", image).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img snapshot -l %s: %v\n%s", image, err, out)
	}
	tags := []string{}
	for _, line := range strings.Split(string(out), "\n") {
		// ID TAG VM-SIZE DATE VM-CLOCK [ICOUNT]; the header starts with ID.
		if f := strings.Fields(line); len(f) > 1 && f[0] != "ID" && f[0] != "Snapshot" {
			tags = append(tags, f[1])
		}
	}
	sort.Strings(tags)
	return tags
}

// imageClean fails unless qemu-img check finds image clean (exit 0) or,
// with leaksOK, leaking clusters only (exit 3).
func imageClean(t *testing.T, what, image string, leaksOK bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-img", "check", "-U", image).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 && leaksOK {
		// Given back, so that the next kill is checked for leaks of its own.
		t.Logf("%s: qemu-img check %s: leaks only (exit 3), repaired: %s", what, image, strings.TrimSpace(string(out)))
		if out, err := exec.CommandContext(ctx, "qemu-img", "check", "-q", "-r", "leaks", image).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img check -r leaks %s: %v\n%s", image, err, out)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: qemu-img check %s: %v\n%s", what, image, err, out)
	}
}

// sums returns the sha256 of each disk's current guest view.
func (e *ikEnv) sums() []string {
	e.t.Helper()
	var out []string
	for _, d := range e.disks() {
		out = append(out, e.rawSum(d.Active, ""))
	}
	return out
}

// rawSum is the sha256 of image's guest view, or of its internal
// snapshot tag's, converted to raw by qemu-img.
func (e *ikEnv) rawSum(image, tag string) string {
	e.t.Helper()
	raw := filepath.Join(e.root, "ik", "view.raw")
	args := []string{"convert", "-U", "-O", "raw"}
	if tag != "" {
		args = append(args, "-l", "snapshot.name="+tag)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "qemu-img", append(args, image, raw)...).CombinedOutput(); err != nil {
		e.t.Fatalf("qemu-img convert %s (%s): %v\n%s", image, tag, err, out)
	}
	defer os.Remove(raw)
	f, err := os.Open(raw)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		e.t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestInternalSnapshotKill9 kills qchain (SIGKILL) at every point of the
// disk-only internal snapshot operations (create live and offline,
// revert offline, delete live and offline), runs recover, and checks
// that each operation happened entirely or not at all, the images are
// clean and hold exactly the tags qchain lists, and the disks read as
// before (offline: content compared; live: qemu runs on and its disks
// answer reads of the data written before).
func TestInternalSnapshotKill9(t *testing.T) {
	t.Run("offline", func(t *testing.T) {
		t.Parallel()
		testInternalSnapshotKill9Offline(t)
	})
	t.Run("live", func(t *testing.T) {
		t.Parallel()
		testInternalSnapshotKill9Live(t)
	})
}

func testInternalSnapshotKill9Offline(t *testing.T) {
	e := newIKEnv(t)
	e.define(e.vm)
	e.write(e.vm, 1)
	e.ok("snapshot", "create", "--internal", e.vm, "base")
	baseSums := e.sums()
	e.write(e.vm, 2)
	want := []string{"base"}

	wrap := "--storage-daemon=" + e.wrapper
	points := []ikPoint{journalPoint(0), daemonPoint(1), daemonPoint(2)}
	for _, ms := range []int{0, 2, 5} {
		points = append(points, daemonRunPoint(1, time.Duration(ms)*time.Millisecond))
	}
	for _, ms := range []int{0, 3} {
		points = append(points, daemonRunPoint(2, time.Duration(ms)*time.Millisecond))
	}
	points = append(points, journalPoint(100*time.Millisecond))
	before := e.sums()
	for i, p := range points {
		name := fmt.Sprintf("k%d", i)
		what := "create " + name + " killed at " + p.name
		e.killAt(p, "snapshot", "create", "--internal", wrap, e.vm, name)
		if e.recoverAndCheck(what, false, want, append(slices.Clone(want), name)) {
			want = append(want, name)
			for j, d := range e.disks() {
				if got := e.rawSum(d.Active, name); got != before[j] {
					t.Fatalf("%s: disk %s's snapshot %s does not read as the disk did", what, d.Target, name)
				}
			}
		}
		t.Logf("%s: recovered as %s", what, map[bool]string{false: "not taken", true: "taken"}[slices.Contains(want, name)])
		if got := e.sums(); !slices.Equal(got, before) {
			t.Fatalf("%s: the disks read differently after recover", what)
		}
	}

	// Reverts to base, the disks changed before each: the revert runs
	// natively (qcow2.ApplySnapshot, no daemon), so the kills are timed
	// from the journal. A kill between its refcount raise and the end of
	// its refcount lowering leaks clusters, which recover does not give
	// back (the rerun finds the image at the snapshot already): check
	// may exit 3 here, never 2. QEMU's own apply leaks the same way:
	// `qemu-img snapshot -a` killed at its 2nd or 3rd write (strace -e
	// inject=pwrite64:signal=SIGKILL:when=N) leaves leaks (exit 3) or
	// even COPIED flag errors (exit 2), on 7.2 and 10.0 alike.
	for i, d := range []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 20 * time.Millisecond} {
		p := journalPoint(d)
		what := "revert to base killed at " + p.name
		e.write(e.vm, byte(3+i))
		before := e.sums()
		e.killAt(p, "snapshot", "revert", "--force", e.vm, "base")
		e.recoverAndCheck(what, true, want, want)
		got := e.sums()
		cur := e.show(e.vm).Current
		switch {
		case slices.Equal(got, baseSums) && cur == "base":
			t.Logf("%s: recovered as reverted", what)
		case slices.Equal(got, before) && cur != "base":
			t.Logf("%s: recovered as not reverted", what)
		default:
			t.Fatalf("%s: current %q and the disks read as neither before the revert nor base", what, cur)
		}
	}

	// Deletes of the snapshots the creates left (base stays).
	points = []ikPoint{journalPoint(0), daemonPoint(1), daemonPoint(2),
		daemonRunPoint(1, 0), daemonRunPoint(1, 3*time.Millisecond), daemonRunPoint(2, 0), daemonRunPoint(2, 3*time.Millisecond)}
	before = e.sums()
	for _, p := range points {
		if len(want) < 2 {
			break
		}
		name := want[len(want)-1]
		what := "delete " + name + " killed at " + p.name
		e.killAt(p, "snapshot", "delete", wrap, e.vm, name)
		if e.recoverAndCheck(what, false, slices.Clone(want), slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == name })) {
			want = slices.DeleteFunc(want, func(s string) bool { return s == name })
		}
		t.Logf("%s: recovered as %s", what, map[bool]string{false: "not deleted", true: "deleted"}[!slices.Contains(want, name)])
		if got := e.sums(); !slices.Equal(got, before) {
			t.Fatalf("%s: the disks read differently after recover", what)
		}
	}
	for i, d := range e.disks() {
		if got := e.rawSum(d.Active, "base"); got != baseSums[i] {
			t.Fatalf("disk %s's snapshot base does not read as it did", d.Target)
		}
	}
	imageClean(t, "the backing file", filepath.Join(e.img, "gold.qcow2"), false)
}

func testInternalSnapshotKill9Live(t *testing.T) {
	e := newIKEnv(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	sockDir, err := os.MkdirTemp("", "qik-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "qmp")
	e.define(e.vm, "--qmp", sock+"-proxy")
	e.write(e.vm, 1)
	e.q = startIKQemu(t, e, sock)
	e.proxy = newQMPProxy(t, sock+"-proxy", sock)
	e.q.io(t, "vda", "write -P 0x21 1M 64k")
	e.q.io(t, "vdb", "write -P 0x22 2M 64k")
	// The disks answer reads of what was written before each operation.
	answers := func(what string) {
		t.Helper()
		select {
		case <-e.q.exited:
			t.Fatalf("%s: qemu exited", what)
		default:
		}
		e.q.io(t, "vda", "read -P 0x21 1M 64k", "read -P 0x47 1M 1M")
		e.q.io(t, "vdb", "read -P 0x22 2M 64k", "read -P 0x01 1M 1M")
	}

	want := []string{}
	points := []ikPoint{journalPoint(0), qmpPoint("transaction", false), qmpPoint("transaction", true)}
	for i, p := range points {
		name := fmt.Sprintf("l%d", i)
		what := "live create " + name + " killed at " + p.name
		e.killAt(p, "snapshot", "create", "--internal", e.vm, name)
		if e.recoverAndCheck(what, false, want, append(slices.Clone(want), name)) {
			want = append(want, name)
		}
		t.Logf("%s: recovered as %s", what, map[bool]string{false: "not taken", true: "taken"}[slices.Contains(want, name)])
		answers(what)
	}
	points = []ikPoint{journalPoint(0), qmpPoint("snapshot-delete", false), qmpPoint("snapshot-delete", true)}
	for _, p := range points {
		if len(want) == 0 {
			break
		}
		name := want[len(want)-1]
		what := "live delete " + name + " killed at " + p.name
		e.killAt(p, "snapshot", "delete", e.vm, name)
		if e.recoverAndCheck(what, false, slices.Clone(want), slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == name })) {
			want = slices.DeleteFunc(want, func(s string) bool { return s == name })
		}
		t.Logf("%s: recovered as %s", what, map[bool]string{false: "not deleted", true: "deleted"}[!slices.Contains(want, name)])
		answers(what)
	}
	// What the killed runs left in qemu (a concluded job) does not stop
	// the next create and delete.
	e.ok("snapshot", "create", "--internal", e.vm, "after")
	e.recoverAndCheck("live create after the kills", false, want, append(slices.Clone(want), "after"))
	e.ok("snapshot", "delete", e.vm, "after")
	e.recoverAndCheck("live delete after the kills", false, want, want)
	answers("after the kills")
	e.q.quit(t)
	e.q = nil
	e.recoverAndCheck("after qemu quit", false, want, want)
}

// startIKQemu starts the VM's disks in a qemu with no guest: a monitor
// for qchain at sock (reached through the proxy) and one for the test.
func startIKQemu(t *testing.T, e *ikEnv, sock string) *bkQemu {
	t.Helper()
	var drives [][2]string
	for _, d := range e.disks() {
		drives = append(drives, [2]string{d.Target, d.Active})
	}
	return startDrivesQemu(t, sock, drives)
}

// qmpProxy passes QMP between qchain (at listen) and qemu's monitor (at
// upstream), one upstream connection per client, and can stop at a
// command: before it reaches qemu, or after qemu answered it, holding
// back the answer and everything after it.
type qmpProxy struct {
	t        *testing.T
	upstream string
	mu       sync.Mutex
	command  string
	after    bool
	hit      chan struct{}
}

func newQMPProxy(t *testing.T, listen, upstream string) *qmpProxy {
	ln, err := net.Listen("unix", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &qmpProxy{t: t, upstream: upstream}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

// arm makes the next run of command stop, and returns the channel
// closed when it does.
func (p *qmpProxy) arm(command string, after bool) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.command, p.after, p.hit = command, after, make(chan struct{})
	return p.hit
}

func (p *qmpProxy) disarm() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.command = ""
}

func (p *qmpProxy) serve(client net.Conn) {
	defer client.Close()
	up, err := net.Dial("unix", p.upstream)
	if err != nil {
		return
	}
	defer up.Close()
	awaiting := make(chan chan struct{}, 1)
	go func() {
		defer client.Close()
		r := bufio.NewReader(up)
		var hit chan struct{}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			select {
			case hit = <-awaiting:
			default:
			}
			if hit != nil && !strings.Contains(string(line), `"event"`) {
				close(hit)
				io.Copy(io.Discard, r) // qchain sees nothing more
				return
			}
			if _, err := client.Write(line); err != nil {
				return
			}
		}
	}()
	r := bufio.NewReader(client)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var cmd struct {
			Execute string `json:"execute"`
		}
		json.Unmarshal(line, &cmd)
		p.mu.Lock()
		stop := cmd.Execute != "" && cmd.Execute == p.command
		after, hit := p.after, p.hit
		if stop {
			p.command = ""
		}
		p.mu.Unlock()
		if stop && !after {
			close(hit)
			io.Copy(io.Discard, r) // until qchain is killed
			return
		}
		if stop {
			awaiting <- hit
		}
		if _, err := up.Write(line); err != nil {
			return
		}
	}
}
