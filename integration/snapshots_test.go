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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// scEnv is a state directory and an images folder for the snapshot
// commands of one test.
type scEnv struct {
	t     *testing.T
	bin   string
	root  string // holds img/ and state/
	img   string
	state string
	q     *fixtures.Qemu
}

func newSCEnv(t *testing.T) *scEnv {
	bin := requireTools(t)
	for _, tool := range []string{"qemu-io", "qemu-storage-daemon"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not on PATH", tool)
		}
	}
	root := t.TempDir()
	e := &scEnv{t: t, bin: bin, root: root, img: filepath.Join(root, "img"), state: filepath.Join(root, "state")}
	if err := os.Mkdir(e.img, 0o700); err != nil {
		t.Fatal(err)
	}
	e.q = fixtures.NewQemu(t, e.img)
	return e
}

// run runs qchain with --state-dir given through QCHAIN_STATE_DIR.
func (e *scEnv) run(args ...string) fixtures.Result {
	e.t.Helper()
	return e.runEnv([]string{"QCHAIN_STATE_DIR=" + e.state}, args...)
}

func (e *scEnv) runEnv(env []string, args ...string) fixtures.Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Dir = e.img
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := fixtures.Result{Cmd: "qchain " + strings.Join(args, " "), Stdout: []byte(stdout.String()), Stderr: []byte(stderr.String())}
	if ee, ok := err.(*exec.ExitError); ok {
		res.ExitCode = ee.ExitCode()
	} else if err != nil {
		res.Err = err
	}
	if ctx.Err() != nil {
		e.t.Fatalf("%s: timed out", res.Cmd)
	}
	return res
}

// ok runs a command that must succeed and returns its stdout.
func (e *scEnv) ok(args ...string) string {
	e.t.Helper()
	res := e.run(args...)
	if res.Err != nil || res.ExitCode != 0 {
		e.t.Fatalf("%s: exit %d, %v\nstdout: %s\nstderr: %s", res.Cmd, res.ExitCode, res.Err, res.Stdout, res.Stderr)
	}
	return string(res.Stdout)
}

// fails runs a command that must fail with a one-line error on stderr
// containing every part of want, and change no file.
func (e *scEnv) fails(want []string, args ...string) string {
	e.t.Helper()
	before := mustFingerprint(e.t, e.root)
	res := e.run(args...)
	if res.Err != nil || res.ExitCode == 0 {
		e.t.Errorf("%s: exit %d (%v), want a failure\nstdout: %s", res.Cmd, res.ExitCode, res.Err, res.Stdout)
		return ""
	}
	msg := string(res.Stderr)
	if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "qchain: ") {
		e.t.Errorf("%s: stderr is not one line starting with \"qchain: \": %q", res.Cmd, msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			e.t.Errorf("%s: error %q does not mention %q", res.Cmd, strings.TrimSpace(msg), w)
		}
	}
	if d := fingerprintDiff(before, mustFingerprint(e.t, e.root)); d != "" {
		e.t.Errorf("%s failed but changed files:\n%s", res.Cmd, d)
	}
	return strings.TrimSpace(msg)
}

// scVMShow is `vm show --output=json`.
type scVMShow struct {
	Name    string `json:"name"`
	QMP     string `json:"qmp"`
	Current string `json:"current"`
	Disks   []struct {
		Target string   `json:"target"`
		Active string   `json:"active"`
		Chain  []string `json:"chain"`
	} `json:"disks"`
}

// scSnapshot is `snapshot info --output=json` and a `snapshot list
// --output=json` entry.
type scSnapshot struct {
	Name     string    `json:"name"`
	Parent   string    `json:"parent"`
	Children []string  `json:"children"`
	Current  bool      `json:"current"`
	Created  time.Time `json:"created"`
	Disks    []struct {
		Target string `json:"target"`
		File   string `json:"file"`
	} `json:"disks"`
}

func (e *scEnv) show(vm string) scVMShow {
	e.t.Helper()
	var s scVMShow
	out := e.ok("vm", "show", "--output=json", vm)
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		e.t.Fatalf("vm show --output=json: %v\n%s", err, out)
	}
	return s
}

func (e *scEnv) active(vm, target string) string {
	e.t.Helper()
	for _, d := range e.show(vm).Disks {
		if d.Target == target {
			return d.Active
		}
	}
	e.t.Fatalf("VM %s has no disk %s", vm, target)
	return ""
}

func (e *scEnv) info(vm, snap string) scSnapshot {
	e.t.Helper()
	var s scSnapshot
	out := e.ok("snapshot", "info", "--output=json", vm, snap)
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		e.t.Fatalf("snapshot info --output=json: %v\n%s", err, out)
	}
	return s
}

// define makes vm1: vda an overlay of gold.qcow2, vdb a plain image.
func (e *scEnv) define(name string, extra ...string) {
	e.t.Helper()
	if _, err := os.Stat(filepath.Join(e.img, "gold.qcow2")); err != nil {
		e.q.Create("gold.qcow2", "8M", "cluster_size=65536")
		e.q.IO("qcow2", "gold.qcow2", "write -q -P 0x47 0 2M")
	}
	e.q.Overlay(name+"-vda.qcow2", "gold.qcow2", "qcow2", "")
	e.q.Create(name+"-vdb.qcow2", "8M")
	e.q.IO("qcow2", name+"-vdb.qcow2", "write -q -P 0x01 1M 1M")
	args := append([]string{"vm", "define", "--disk", "vda=" + name + "-vda.qcow2", "--disk", "vdb=" + e.q.Path(name+"-vdb.qcow2")}, extra...)
	e.ok(append(args, name)...)
}

// write writes a pattern into both disks' active images.
func (e *scEnv) write(vm string, pattern byte) {
	e.t.Helper()
	for _, tg := range []string{"vda", "vdb"} {
		e.q.IO("qcow2", e.active(vm, tg), fmt.Sprintf("write -q -P 0x%02x %dk 128k", pattern, int(pattern)*64))
	}
}

// TestSnapshotCLI drives vm define/list/show and snapshot
// create/list/info/delete/revert/rotate and recover through the binary,
// and checks their human and JSON output.
func TestSnapshotCLI(t *testing.T) {
	e := newSCEnv(t)
	e.define("vm1")
	// --state-dir and QCHAIN_STATE_DIR name the same place.
	if out := e.runEnv(nil, "vm", "list", "--state-dir", e.state); string(out.Stdout) != "vm1\n" {
		t.Fatalf("vm list --state-dir: %q (stderr %q)", out.Stdout, out.Stderr)
	}
	var names []string
	if err := json.Unmarshal([]byte(e.ok("vm", "list", "--output=json")), &names); err != nil || len(names) != 1 || names[0] != "vm1" {
		t.Fatalf("vm list --output=json: %v %v", names, err)
	}
	show := e.show("vm1")
	if show.Name != "vm1" || len(show.Disks) != 2 {
		t.Fatalf("vm show: %+v", show)
	}
	gold := e.q.Path("gold.qcow2")
	for _, d := range show.Disks {
		want := []string{e.q.Path("vm1-" + d.Target + ".qcow2")}
		if d.Target == "vda" {
			want = append(want, gold)
		}
		if d.Active != want[0] || strings.Join(d.Chain, " ") != strings.Join(want, " ") {
			t.Errorf("vm show disk %s: active %s chain %v, want absolute paths %v", d.Target, d.Active, d.Chain, want)
		}
	}
	if out := e.ok("vm", "show", "vm1"); !strings.Contains(out, "vda: vm1-vda.qcow2* <- gold.qcow2") && !strings.Contains(out, "gold.qcow2 <- vm1-vda.qcow2*") {
		t.Errorf("vm show (human) does not draw the chain:\n%s", out)
	}

	// s1 <- s2 <- s3 <- current, with writes between.
	e.ok("snapshot", "create", "--description", "first", "vm1", "s1")
	e.write("vm1", 0x11)
	e.ok("snapshot", "create", "vm1", "s2")
	e.write("vm1", 0x22)
	e.ok("snapshot", "create", "vm1", "s3")
	e.write("vm1", 0x33)

	tree := e.ok("snapshot", "list", "--tree", "vm1")
	if tree != "s1\n  s2\n    s3  (current)\n" {
		t.Errorf("snapshot list --tree:\n%s", tree)
	}
	var list []scSnapshot
	if err := json.Unmarshal([]byte(e.ok("snapshot", "list", "--output=json", "vm1")), &list); err != nil || len(list) != 3 {
		t.Fatalf("snapshot list --output=json: %v %+v", err, list)
	}
	s2 := e.info("vm1", "s2")
	if s2.Name != "s2" || s2.Parent != "s1" || strings.Join(s2.Children, ",") != "s3" || s2.Current || s2.Created.IsZero() || len(s2.Disks) != 2 {
		t.Errorf("snapshot info s2: %+v", s2)
	}
	if s1 := e.info("vm1", "s1"); s1.Parent != "" || s1.Children == nil || s1.Disks[0].File != e.q.Path("vm1-vda.qcow2") {
		t.Errorf("snapshot info s1: %+v (the oldest snapshot's file is the original image; children is a list)", s1)
	}
	if s3 := e.info("vm1", "s3"); !s3.Current || s3.Children == nil || len(s3.Children) != 0 {
		t.Errorf("snapshot info s3: %+v", s3)
	}
	raw := e.ok("snapshot", "info", "--output=json", "vm1", "s2")
	for _, key := range []string{`"name"`, `"parent"`, `"children"`, `"current"`, `"created"`, `"disks"`, `"target"`, `"file"`} {
		if !strings.Contains(raw, key) {
			t.Errorf("snapshot info --output=json lacks %s:\n%s", key, raw)
		}
	}
	// Every snapshot file is in the chain of the active image.
	chain := map[string]bool{}
	for _, d := range e.show("vm1").Disks {
		for _, f := range d.Chain {
			chain[d.Target+" "+f] = true
		}
	}
	for _, s := range list {
		for _, d := range s.Disks {
			if !filepath.IsAbs(d.File) || !chain[d.Target+" "+d.File] {
				t.Errorf("snapshot %s disk %s: file %s is not an absolute path of the active chain", s.Name, d.Target, d.File)
			}
		}
	}

	// Dry runs print the plan and change nothing.
	before := mustFingerprint(t, e.root)
	for _, merge := range []string{"auto", "commit", "pull"} {
		out := e.ok("snapshot", "delete", "--dry-run", "--merge="+merge, "vm1", "s2")
		for _, want := range []string{"Plan to delete snapshot s2 of VM vm1", "  1. ", "vda before: ", "vda after:  ", "vdb before: ", "vdb after:  ", "files changed: "} {
			if !strings.Contains(out, want) {
				t.Errorf("delete --dry-run --merge=%s: no %q in\n%s", merge, want, out)
			}
		}
		if merge != "auto" && !strings.Contains(out, merge) {
			t.Errorf("delete --dry-run --merge=%s does not say it would %s:\n%s", merge, merge, out)
		}
	}
	var plan struct {
		Steps  []map[string]any  `json:"steps"`
		Before map[string]string `json:"before"`
		After  map[string]string `json:"after"`
	}
	if err := json.Unmarshal([]byte(e.ok("snapshot", "delete", "--dry-run", "--output=json", "vm1", "s2")), &plan); err != nil ||
		len(plan.Steps) == 0 || plan.Before["vda"] == "" || plan.After["vda"] == "" || strings.Contains(plan.After["vda"], "vm1.vda.s2.qcow2 ") {
		t.Errorf("delete --dry-run --output=json: %v %+v", err, plan)
	}
	e.ok("snapshot", "delete", "--dry-run", "--metadata", "vm1", "s1")
	if d := fingerprintDiff(before, mustFingerprint(t, e.root)); d != "" {
		t.Fatalf("dry runs changed files:\n%s", d)
	}

	// The real thing, then a branch and a rotation.
	out := e.ok("snapshot", "delete", "vm1", "s2")
	if !strings.Contains(out, "Deleted snapshot s2 of VM vm1") {
		t.Errorf("delete: %s", out)
	}
	if s3 := e.info("vm1", "s3"); s3.Parent != "s1" {
		t.Errorf("after deleting s2, s3's parent is %q, want s1", s3.Parent)
	}
	e.fails([]string{"vm1", "--force"}, "snapshot", "revert", "vm1", "s1")
	e.ok("snapshot", "revert", "--force", "vm1", "s1")
	e.write("vm1", 0x44)
	e.ok("snapshot", "create", "vm1", "s4")
	if tree := e.ok("snapshot", "list", "--tree", "vm1"); tree != "s1\n  s3\n  s4  (current)\n" {
		t.Errorf("snapshot list --tree after a branch:\n%s", tree)
	}
	e.fails([]string{"s1"}, "snapshot", "delete", "--merge=commit", "vm1", "s1") // two branches
	e.fails([]string{"current"}, "snapshot", "delete", "--children", "vm1", "s1")
	before = mustFingerprint(t, e.root)
	if out := e.ok("snapshot", "delete", "--dry-run", "--children", "vm1", "s3"); !strings.Contains(out, "remove ") {
		t.Errorf("delete --dry-run --children s3 plans no removal:\n%s", out)
	}
	if d := fingerprintDiff(before, mustFingerprint(t, e.root)); d != "" {
		t.Fatalf("dry run changed files:\n%s", d)
	}
	e.ok("snapshot", "delete", "--children", "vm1", "s3")
	out = e.ok("snapshot", "rotate", "--keep", "1", "vm1")
	if !strings.Contains(out, "Deleted snapshot s1") {
		t.Errorf("rotate --keep 1: %s", out)
	}
	if tree := e.ok("snapshot", "list", "--tree", "vm1"); tree != "s4  (current)\n" {
		t.Errorf("snapshot list --tree after rotate:\n%s", tree)
	}
	if out := e.ok("recover", "vm1"); !strings.Contains(out, "no interrupted operation") {
		t.Errorf("recover with nothing to do: %s", out)
	}
	// Nothing left behind: the images folder holds the chain and the
	// original images only.
	keep := map[string]bool{gold: true, e.q.Path("vm1-vda.qcow2"): true, e.q.Path("vm1-vdb.qcow2"): true}
	for _, d := range e.show("vm1").Disks {
		for _, f := range d.Chain {
			keep[f] = true
		}
		if res := fixtures.Run(context.Background(), e.img, "qemu-img", "check", "-q", d.Active); res.ExitCode != 0 || res.Err != nil {
			t.Errorf("qemu-img check %s: exit %d %s", d.Active, res.ExitCode, res.Stderr)
		}
	}
	ents, _ := os.ReadDir(e.img)
	for _, en := range ents {
		if !keep[filepath.Join(e.img, en.Name())] {
			t.Errorf("%s left behind", en.Name())
		}
	}
	// Files are 0600 and folders 0700 in the state directory.
	filepath.WalkDir(e.state, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	})
}

// TestSnapshotCLIErrors checks that bad input fails with one line on
// stderr naming the cause, a non-zero exit and no file changed.
func TestSnapshotCLIErrors(t *testing.T) {
	e := newSCEnv(t)
	e.define("vm1")
	e.ok("snapshot", "create", "vm1", "s1")
	e.write("vm1", 0x11)
	e.ok("snapshot", "create", "vm1", "s2")

	for _, c := range []struct {
		name string
		want []string
		args []string
	}{
		{"unknown VM list", []string{"nosuch"}, []string{"snapshot", "list", "nosuch"}},
		{"unknown VM show", []string{"nosuch"}, []string{"vm", "show", "nosuch"}},
		{"unknown VM create", []string{"nosuch"}, []string{"snapshot", "create", "nosuch", "x"}},
		{"unknown VM delete", []string{"nosuch"}, []string{"snapshot", "delete", "nosuch", "s1"}},
		{"unknown VM revert", []string{"nosuch"}, []string{"snapshot", "revert", "nosuch", "s1"}},
		{"unknown VM rotate", []string{"nosuch"}, []string{"snapshot", "rotate", "--keep", "1", "nosuch"}},
		{"unknown VM recover", []string{"nosuch"}, []string{"recover", "nosuch"}},
		{"unknown snapshot info", []string{"nosuch"}, []string{"snapshot", "info", "vm1", "nosuch"}},
		{"unknown snapshot delete", []string{"nosuch"}, []string{"snapshot", "delete", "vm1", "nosuch"}},
		{"unknown snapshot dry run", []string{"nosuch"}, []string{"snapshot", "delete", "--dry-run", "vm1", "nosuch"}},
		{"unknown snapshot revert", []string{"nosuch"}, []string{"snapshot", "revert", "vm1", "nosuch"}},
		{"duplicate snapshot", []string{"s1"}, []string{"snapshot", "create", "vm1", "s1"}},
		{"duplicate VM", []string{"vm1"}, []string{"vm", "define", "--disk", "vda=vm1-vda.qcow2", "vm1"}},
		{"missing disk", []string{"nofile.qcow2"}, []string{"vm", "define", "--disk", "vda=nofile.qcow2", "vm2"}},
		{"bad disk flag", []string{"TARGET=PATH"}, []string{"vm", "define", "--disk", "vda", "vm2"}},
		{"bad snapshot name", []string{"../x"}, []string{"snapshot", "create", "vm1", "../x"}},
		{"bad VM name", []string{"a/b"}, []string{"snapshot", "list", "a/b"}},
		{"bad merge", []string{"sideways"}, []string{"snapshot", "delete", "--merge=sideways", "vm1", "s1"}},
		{"children and metadata", []string{"--children", "--metadata"}, []string{"snapshot", "delete", "--children", "--metadata", "vm1", "s1"}},
		{"negative keep", []string{"keep"}, []string{"snapshot", "rotate", "--keep", "-1", "vm1"}},
		{"missing argument", []string{"NAME"}, []string{"snapshot", "create", "vm1"}},
		{"unsaved changes", []string{"--force"}, []string{"snapshot", "revert", "vm1", "s1"}},
		{"quiesce offline", []string{"quiesce"}, []string{"snapshot", "create", "--quiesce", "vm1", "s9"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			if c.name == "unsaved changes" {
				e.write("vm1", 0x22)
			}
			e.fails(c.want, c.args...)
		})
	}
	e.t = t

	// A disk file changed behind qchain's back: the active image of vda
	// now sits on another file. Every command that would act on the VM
	// stops with a clear error naming the disk; fixing the file back
	// makes them work again.
	act := e.active("vm1", "vda")
	orig := e.info("vm1", "s2").Disks[0].File
	e.q.Create("stranger.qcow2", "8M")
	e.q.Img("rebase", "-u", "-b", "stranger.qcow2", "-F", "qcow2", act)
	for _, args := range [][]string{
		{"snapshot", "create", "vm1", "s3"},
		{"snapshot", "delete", "vm1", "s1"},
		{"snapshot", "delete", "--dry-run", "vm1", "s1"},
		{"snapshot", "delete", "--children", "vm1", "s2"},
		{"snapshot", "revert", "--force", "vm1", "s1"},
		{"snapshot", "rotate", "--keep", "0", "vm1"},
	} {
		t.Run("changed behind the back/"+strings.Join(args[:2], " "), func(t *testing.T) {
			e.t = t
			e.fails([]string{"vda", "behind qchain's back"}, args...)
		})
	}
	e.t = t
	e.q.Img("rebase", "-u", "-b", filepath.Base(orig), "-F", "qcow2", act)
	e.ok("snapshot", "delete", "--dry-run", "vm1", "s1")

	// A snapshot file removed behind qchain's back.
	e.ok("snapshot", "create", "vm1", "s3")
	s1 := e.info("vm1", "s2").Disks[1].File
	if err := os.Rename(s1, s1+".moved"); err != nil {
		t.Fatal(err)
	}
	t.Run("file removed behind the back", func(t *testing.T) {
		e.t = t
		e.fails([]string{"vdb", filepath.Base(s1)}, "snapshot", "delete", "vm1", "s1")
	})
	e.t = t
	if err := os.Rename(s1+".moved", s1); err != nil {
		t.Fatal(err)
	}
	e.ok("snapshot", "delete", "--dry-run", "vm1", "s1")
}

// TestSnapshotCLIRunning defines a VM with a QMP socket, starts a qemu on
// its disks, and checks that revert refuses while it answers, with one
// line and no file changed, and works once it stopped.
func TestSnapshotCLIRunning(t *testing.T) {
	e := newSCEnv(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	sockDir, err := os.MkdirTemp("", "qcs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "qmp")
	e.define("vm1", "--qmp", sock)
	e.ok("snapshot", "create", "vm1", "s1") // offline: the socket does not answer
	e.write("vm1", 0x11)
	e.ok("snapshot", "create", "vm1", "s2")
	show := e.show("vm1")
	if show.QMP != sock {
		t.Errorf("vm show: qmp %q, want %q", show.QMP, sock)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"-machine", "none", "-nodefaults", "-display", "none", "-qmp", "unix:" + sock + ",server=on,wait=off"}
	for _, d := range show.Disks {
		args = append(args, "-drive", "if=none,id="+d.Target+",format=qcow2,file="+d.Active)
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }() // the qemu this test started
	scWaitQMP(t, sock, exited)

	msg := e.fails([]string{"vm1", "running"}, "snapshot", "revert", "--force", "vm1", "s1")
	t.Logf("revert of a running VM: %s", msg)
	cmd.Process.Kill()
	<-exited
	e.ok("snapshot", "revert", "--force", "vm1", "s1")
}

func scWaitQMP(t *testing.T, sock string, exited chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatal("qemu-system-x86_64 exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no QMP greeting within 30s")
		}
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if strings.Contains(line, `"QMP"`) {
			return
		}
	}
}

// childPids lists the processes whose parent is pid.
func childPids(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, en := range ents {
		n, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", en.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// TestSnapshotCLIKill9 kills qchain with SIGKILL while its offline
// commit runs on qemu-storage-daemon, then checks that the VM refuses
// every operation until `qchain recover`, which finishes the delete.
func TestSnapshotCLIKill9(t *testing.T) {
	e := newSCEnv(t)
	e.q.Create("big.qcow2", "256M", "cluster_size=65536")
	e.q.IO("qcow2", "big.qcow2", "write -q -P 0x01 0 16M")
	e.ok("vm", "define", "--disk", "vda=big.qcow2", "vm1")
	e.ok("snapshot", "create", "vm1", "s1")
	e.q.IO("qcow2", e.active("vm1", "vda"), "write -q -P 0x02 1M 1M")
	e.ok("snapshot", "create", "vm1", "s2")
	// s3's file: what the commit below copies, long enough to be killed
	// in the middle of.
	e.q.IO("qcow2", e.active("vm1", "vda"), "write -q -P 0x03 0 160M")
	e.ok("snapshot", "create", "vm1", "s3")
	// The guest's views, to compare after recovery.
	tmp := t.TempDir()
	sum := func(file string) string {
		t.Helper()
		out := filepath.Join(tmp, "guest.raw")
		if res := fixtures.Run(context.Background(), e.img, e.bin, "export", "-o", out, file); res.ExitCode != 0 || res.Err != nil {
			t.Fatalf("%s: exit %d %v %s", res.Cmd, res.ExitCode, res.Err, res.Stderr)
		}
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(h.Sum(nil))
	}
	s1File := e.info("vm1", "s1").Disks[0].File
	s3File := e.info("vm1", "s3").Disks[0].File
	wantS1, wantS3, wantCur := sum(s1File), sum(s3File), sum(e.active("vm1", "vda"))

	// delete s2 by commit: s3's file (160 MiB) into s2's file.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, "snapshot", "delete", "--merge=commit", "vm1", "s2")
	cmd.Dir = e.img
	cmd.Env = append(os.Environ(), "QCHAIN_STATE_DIR="+e.state)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var daemons []int
	deadline := time.Now().Add(30 * time.Second)
	for len(daemons) == 0 && time.Now().Before(deadline) {
		for _, c := range childPids(cmd.Process.Pid) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); strings.HasPrefix(string(b), "qemu-storage") {
				daemons = append(daemons, c)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	if len(daemons) == 0 {
		cmd.Wait()
		t.Skip("the delete finished before its storage daemon was seen")
	}
	time.Sleep(30 * time.Millisecond) // into the job
	cmd.Process.Kill()                // the qchain this test started
	cmd.Wait()
	// The daemon qchain started is not killed with it (its own process
	// group); end it when the test ends, by its pid.
	t.Cleanup(func() {
		for _, p := range daemons {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); err == nil && strings.HasPrefix(string(b), "qemu-storage") {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	if _, err := os.Stat(filepath.Join(e.state, "vms", "vm1", "journal.json")); err != nil {
		t.Skipf("killed too late or too early: no journal (%v)", err)
	}
	e.fails([]string{"recover"}, "snapshot", "create", "vm1", "s4")
	e.fails([]string{"recover"}, "snapshot", "delete", "vm1", "s1")

	alive := func() bool {
		for _, p := range daemons {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
			if i := strings.LastIndexByte(string(b), ')'); err == nil && i > 0 && !strings.HasPrefix(string(b[i+1:]), " Z") {
				return true
			}
		}
		return false
	}
	res := e.run("recover", "vm1")
	orphan := alive()
	if res.ExitCode != 0 {
		t.Errorf("recover after kill -9 (the killed qchain's qemu-storage-daemon still running: %t): exit %d: %s", alive(), res.ExitCode, res.Stderr)
		for _, p := range daemons {
			syscall.Kill(p, syscall.SIGKILL) // the orphan of the qchain this test started
		}
		time.Sleep(200 * time.Millisecond)
		e.ok("recover", "vm1")
	}
	if got := sum(s1File); got != wantS1 {
		t.Errorf("s1 reads differently after recovery")
	}
	s3File = e.info("vm1", "s3").Disks[0].File
	if got := sum(s3File); got != wantS3 {
		t.Errorf("s3 reads differently after recovery")
	}
	if got := sum(e.active("vm1", "vda")); got != wantCur {
		t.Errorf("the current state reads differently after recovery")
	}
	if tree := e.ok("snapshot", "list", "--tree", "vm1"); tree != "s1\n  s3  (current)\n" {
		t.Errorf("after recovery: %s", tree)
	}

	if orphan && res.ExitCode == 0 {
		t.Errorf("the killed qchain's qemu-storage-daemon (pids %v) still runs after recover, holding the images open", daemons)
	}
}

// TestSnapshotCLISharedGoldInUse deletes snapshots of VM a, offline, by
// commit and by pull, while a qemu runs another VM on an overlay of the
// same gold image. The gold image is only read by those jobs, so the
// running qemu's locks must not stop them, and its bytes must not change.
func TestSnapshotCLISharedGoldInUse(t *testing.T) {
	e := newSCEnv(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	e.define("a")
	other := e.q.Overlay("b-vda.qcow2", "gold.qcow2", "qcow2", "")
	for i, name := range []string{"s1", "s2", "s3"} {
		e.ok("snapshot", "create", "a", name)
		e.write("a", byte(0x11*(i+1)))
	}
	sockDir, err := os.MkdirTemp("", "qcs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "qmp")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off", "-drive", "if=none,id=vda,format=qcow2,file="+other)
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }() // the qemu this test started
	scWaitQMP(t, sock, exited)

	gold := mustFingerprint(t, e.img)["gold.qcow2"]
	for _, c := range [][]string{
		{"snapshot", "delete", "--merge=commit", "a", "s2"},
		{"snapshot", "delete", "--merge=pull", "a", "s1"},
	} {
		if res := e.run(c...); res.ExitCode != 0 {
			t.Errorf("%s while another qemu reads gold.qcow2: exit %d: %s", res.Cmd, res.ExitCode, strings.TrimSpace(string(res.Stderr)))
			break
		}
	}
	if got := mustFingerprint(t, e.img)["gold.qcow2"]; got != gold {
		t.Errorf("gold.qcow2 changed")
	}
}
