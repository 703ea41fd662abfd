package chain

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/qmp"
)

// liveTimeout bounds the whole live test's qemu.
const liveTimeout = 5 * time.Minute

// liveVM is a qemu-system-x86_64 with no guest, the VM's disks as -drive
// vda and vdb, and two QMP monitors: qchain's and the test's.
type liveVM struct {
	t       *testing.T
	cmd     *exec.Cmd
	exited  chan struct{}
	stderr  *strings.Builder
	qchain  string // the socket the VM is defined with
	testSoc string
	conn    *qmp.Conn // the test's monitor
	device  bool      // disks are -blockdev nodes behind virtio-blk devices
}

func startLiveVM(t *testing.T, disks map[string]string) *liveVM {
	t.Helper()
	return startLiveVMKind(t, disks, false)
}

// startLiveVMKind starts the VM with its disks as -drive vda and vdb, or
// with device set as -blockdev nodes behind virtio-blk devices with ids
// vda and vdb, on a q35 machine that never runs (-S): the way libvirt
// starts a VM today.
func startLiveVMKind(t *testing.T, disks map[string]string, device bool) *liveVM {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "qcl-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	v := &liveVM{t: t, qchain: filepath.Join(sockDir, "s1"), testSoc: filepath.Join(sockDir, "s2"), exited: make(chan struct{}), stderr: &strings.Builder{}, device: device}
	args := []string{"-machine", "none", "-nodefaults", "-display", "none"}
	if device {
		args = []string{"-machine", "q35,accel=tcg", "-S", "-nodefaults", "-display", "none"}
	}
	for _, tg := range []string{"vda", "vdb"} {
		if device {
			args = append(args,
				"-blockdev", fmt.Sprintf(`{"driver":"qcow2","node-name":"%s-orig","file":{"driver":"file","filename":%q}}`, tg, disks[tg]),
				"-device", fmt.Sprintf("virtio-blk-pci,drive=%s-orig,id=%s", tg, tg))
			continue
		}
		args = append(args, "-drive", fmt.Sprintf("if=none,id=%s,file=%s,format=qcow2,node-name=%s-orig", tg, disks[tg], tg))
	}
	args = append(args, "-qmp", "unix:"+v.qchain+",server=on,wait=off", "-qmp", "unix:"+v.testSoc+",server=on,wait=off")
	ctx, cancel := context.WithTimeout(context.Background(), liveTimeout)
	v.cmd = exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	v.cmd.WaitDelay = 5 * time.Second
	v.cmd.Stderr = v.stderr
	// Dies with the test binary too (a test timeout skips the cleanup).
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := v.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(func() {
		v.cmd.Process.Kill() // the qemu this test started, by its own handle
		<-v.exited
		cancel()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-v.exited:
			t.Fatalf("qemu-system-x86_64 exited at start: %s", v.stderr)
		default:
		}
		if c, err := net.Dial("unix", v.testSoc); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-system-x86_64 does not listen on %s: %s", v.testSoc, v.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	v.conn, err = qmp.Dial(dctx, v.testSoc, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.conn.Close() })
	return v
}

// hmp runs an HMP command on the test's monitor.
func (v *liveVM) hmp(line string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return v.conn.HumanMonitorCommand(ctx, line)
}

// io is what HMP qemu-io names the target's disk by: the drive, or the
// device (-d) when there is no drive.
func (v *liveVM) io(target string) string {
	if v.device {
		return "-d " + target + "/virtio-backend"
	}
	return target
}

// write runs a qemu-io write in the guest's disk through HMP.
func (v *liveVM) write(target string, g guestOp) error {
	out, err := v.hmp(fmt.Sprintf("qemu-io %s \"%s\"", v.io(target), strings.Replace(g.cmd(), " -q", "", 1)))
	if err != nil {
		return err
	}
	// qemu 7.2 prints qemu-io's report on its stdout, not in the reply:
	// a reply is an error (an unknown disk, a bad command); the data
	// checks at each checkpoint catch a write that did not land.
	if strings.TrimSpace(out) != "" {
		return fmt.Errorf("qemu-io %s %q: %s", target, g.cmd(), out)
	}
	return nil
}

func (v *liveVM) flush() {
	v.t.Helper()
	for _, tg := range []string{"vda", "vdb"} {
		if out, err := v.hmp(fmt.Sprintf("qemu-io %s flush", v.io(tg))); err != nil || strings.TrimSpace(out) != "" {
			v.t.Fatalf("flush %s: %v %s", tg, err, out)
		}
	}
}

// liveWrite is one guest write, in the order the monitor ran them.
type liveWrite struct {
	target string
	op     guestOp
}

// writer writes into the running VM's disks until stopped.
type writer struct {
	mu     sync.Mutex
	writes []liveWrite
	err    error
	stop   chan struct{}
	done   chan struct{}
}

func (v *liveVM) startWriter(rnd *rand.Rand) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	seed := rnd.Int63()
	go func() {
		defer close(w.done)
		rnd := rand.New(rand.NewSource(seed))
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			lw := liveWrite{target: []string{"vda", "vdb"}[rnd.Intn(2)],
				op: guestOp{kind: "write", pattern: byte(1 + rnd.Intn(255)), off: rnd.Intn(rClusters) * rCluster, length: rCluster}}
			if err := v.write(lw.target, lw.op); err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				return
			}
			w.mu.Lock()
			w.writes = append(w.writes, lw)
			w.mu.Unlock()
			time.Sleep(time.Duration(2+rnd.Intn(8)) * time.Millisecond)
		}
	}()
	return w
}

func (w *writer) finish() ([]liveWrite, error) {
	close(w.stop)
	<-w.done
	return w.writes, w.err
}

// TestLiveSnapshots runs snapshot operations on a running qemu while the
// test writes into its disks through a second monitor: creates (one
// transaction for both disks), deletes of the oldest, middle and newest
// snapshots by commit (intermediate, and active with pivot) and pull,
// rotate, and a re-created name whose overlay was merged away. Revert must
// be refused while the VM runs. At checkpoints (after a flush) every
// snapshot must read as right after its creation, each snapshot must be
// one consistent point of the write sequence on both disks, and the
// current state must read as the known writes; every file passes qemu-img
// check -U.
func TestLiveSnapshots(t *testing.T) { liveSnapshots(t, false) }

// TestLiveSnapshotsDevice is TestLiveSnapshots on a VM whose disks are
// -blockdev nodes behind devices, known to qchain by the devices' ids.
func TestLiveSnapshotsDevice(t *testing.T) { liveSnapshots(t, true) }

func liveSnapshots(t *testing.T, device bool) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon", "qemu-system-x86_64")
	r := newRig(t, 7)
	vda := filepath.Join(r.img, "live-vda.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", vda, fmt.Sprint(rDiskSize))
	mustTool(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 0 4M", vda)
	vdb := filepath.Join(r.img, "live-vdb.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "gold.qcow2", "-F", "qcow2", vdb)
	q := startLiveVMKind(t, map[string]string{"vda": vda, "vdb": vdb}, device)

	v := &vmModel{name: "live", targets: []string{"vda", "vdb"}, cur: map[string][]byte{}, parent: map[string]string{},
		snapSum: map[string]map[string]string{}, originals: []string{vda, vdb}}
	for tg, f := range map[string]string{"vda": vda, "vdb": vdb} {
		b, err := guestBytes(f)
		if err != nil {
			t.Fatal(err)
		}
		v.cur[tg] = b
	}
	if err := r.m.Store.Define(&VM{Name: "live", QMP: q.qchain, Disks: []Disk{{Target: "vda", Active: vda}, {Target: "vdb", Active: vdb}}}); err != nil {
		t.Fatal(err)
	}
	r.vms = append(r.vms, v)
	r.checkOriginals()

	var mu sync.Mutex // guards v.cur against the writer's results
	apply := func(ws []liveWrite) {
		mu.Lock()
		defer mu.Unlock()
		for _, w := range ws {
			w.op.apply(v.cur[w.target])
		}
	}
	writeSome := func(n int) {
		for range n {
			lw := liveWrite{target: []string{"vda", "vdb"}[r.rnd.Intn(2)],
				op: guestOp{kind: "write", pattern: byte(1 + r.rnd.Intn(255)), off: r.rnd.Intn(rClusters) * rCluster, length: rCluster}}
			if r.rnd.Intn(5) == 0 {
				lw.op.kind = "zero"
			}
			if err := q.write(lw.target, lw.op); err != nil {
				r.fatalf("%v", err)
			}
			apply([]liveWrite{lw})
		}
		v.dirty = true
	}
	// during runs op while the writer writes; it returns the writes.
	during := func(op func() error) ([]liveWrite, error) {
		w := q.startWriter(r.rnd)
		time.Sleep(20 * time.Millisecond)
		err := op()
		time.Sleep(20 * time.Millisecond)
		ws, werr := w.finish()
		if werr != nil {
			r.fatalf("guest write during the operation: %v", werr)
		}
		if len(ws) > 0 {
			v.dirty = true
		}
		return ws, err
	}
	// checkpoint flushes and checks every snapshot and the current state
	// from outside, and qemu-img check -U of every chain file.
	checkpoint := func(what string) {
		t.Helper()
		q.flush()
		vm := r.load(v)
		if err := Verify(vm); err != nil {
			r.fatalf("%s: Verify: %v", what, err)
		}
		names := []string{}
		for _, s := range vm.Snapshots {
			names = append(names, s.Name)
			for _, tg := range v.targets {
				b, err := guestBytes(s.File(tg))
				if err != nil {
					r.fatalf("%s: %v", what, err)
				}
				if hexSum(b) != v.snapSum[s.Name][tg] {
					r.fatalf("%s: snapshot %s disk %s (%s) no longer reads as right after its creation", what, s.Name, tg, s.File(tg))
				}
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, v.snapshots()) || vm.Current != v.current {
			r.fatalf("%s: metadata has %v (current %q), want %v (current %q)", what, names, vm.Current, v.snapshots(), v.current)
		}
		files := map[string]bool{}
		for _, d := range vm.Disks {
			b, err := guestBytes(d.Active)
			if err != nil {
				r.fatalf("%s: %v", what, err)
			}
			if hexSum(b) != hexSum(v.cur[d.Target]) {
				r.fatalf("%s: the current state of %s (%s) does not read as the known writes", what, d.Target, d.Active)
			}
			for _, f := range vm.trackedFiles(d.Target) {
				ch, err := ChainFiles(f)
				if err != nil {
					r.fatalf("%s: %v", what, err)
				}
				for _, c := range ch {
					files[c] = true
				}
			}
		}
		for f := range files {
			if out, err := runTool("qemu-img", "check", "-U", "-q", "-f", "qcow2", f); err != nil {
				r.fatalf("%s: qemu-img check -U %s: %v\n%s", what, f, err, out)
			}
		}
		r.checkOriginals() // gold and the original images (when not active)
		r.logf("checkpoint %s: %d snapshots, %d files", what, len(names), len(files))
	}

	ops := 0
	create := func(name string, concurrent bool) {
		t.Helper()
		r.step++
		mu.Lock()
		before := map[string][]byte{}
		for _, tg := range v.targets {
			before[tg] = slices.Clone(v.cur[tg])
		}
		mu.Unlock()
		var ws []liveWrite
		var err error
		var kinds []string
		op := func() error {
			setStepHook(t, func(_ string, _ int, s Step) { kinds = append(kinds, s.Kind) })
			defer func() { StepHook = nil }()
			_, err := r.m.CreateSnapshot(v.name, name, "live", false)
			return err
		}
		if concurrent {
			ws, err = during(op)
		} else {
			err = op()
		}
		if err != nil {
			r.fatalf("live create %s: %v", name, err)
		}
		ops++
		if !slices.Contains(kinds, StepLiveSnapshot) {
			r.fatalf("live create %s ran %v: no transaction switching the running VM's disks", name, kinds)
		}
		apply(ws)
		q.flush()
		vm := r.load(v)
		s := vm.Snapshot(name)
		// An original image written until this create is read-only from
		// now on: record its bytes.
		for _, tg := range v.targets {
			if f := s.File(tg); slices.Contains(v.originals, f) {
				r.stable[f] = r.fileHash(f)
			}
		}
		got := map[string]string{}
		for _, tg := range v.targets {
			b, err := guestBytes(s.File(tg))
			if err != nil {
				r.fatalf("%v", err)
			}
			got[tg] = hexSum(b)
			if vm.Disk(tg).Active == s.File(tg) {
				r.fatalf("create %s: disk %s still writes into the snapshot's file", name, tg)
			}
		}
		// The snapshot is one point of the write sequence, the same on
		// both disks (one transaction).
		state := before
		ok := false
		for j := 0; j <= len(ws); j++ {
			if j > 0 {
				ws[j-1].op.apply(state[ws[j-1].target])
			}
			if hexSum(state["vda"]) == got["vda"] && hexSum(state["vdb"]) == got["vdb"] {
				ok = true
				break
			}
		}
		if !ok {
			r.fatalf("live create %s: the snapshot is not one point in time of both disks (%d writes during it)", name, len(ws))
		}
		v.parent[name] = v.current
		v.current = name
		v.dirty = false
		v.snapSum[name] = got
		r.logf("live create %s (%d concurrent writes)", name, len(ws))
	}
	del := func(name, merge string, wantKind string) {
		t.Helper()
		r.step++
		pos := v.position(name)
		// qemu 7.2 deadlocked when an HMP qemu-io write was issued while
		// an active commit waited, drained and not yet switched, for
		// job-finalize (active commits ran with auto-finalize off then):
		// the write waits in the monitor for the drain that only
		// job-finalize, queued behind it, ends. Active commits now
		// finalize on their own, which shortens that window but was not
		// shown to close it; a guest's own I/O is only queued meanwhile,
		// so writes still stop around active commits.
		concurrent := true
		if p, err := r.m.Delete(v.name, name, DeleteOptions{Merge: merge}, true); err == nil {
			vm := r.load(v)
			for _, s := range p.Steps {
				if s.Kind == StepCommit && vm.Disk(s.Target).Active == s.Top {
					concurrent = false
				}
			}
		}
		run := during
		if !concurrent {
			run = func(op func() error) ([]liveWrite, error) { return nil, op() }
		}
		ws, err := run(func() error {
			p, err := r.m.Delete(v.name, name, DeleteOptions{Merge: merge}, false)
			if err == nil {
				var steps []string
				found := wantKind == ""
				for _, s := range p.Steps {
					steps = append(steps, s.String())
					found = found || s.Kind == wantKind
				}
				r.logf("live delete %s (%s, merge %s): %s; kept %v", name, pos, merge, strings.Join(steps, "; "), p.Kept)
				r.noteKept(p)
				if !found {
					r.fatalf("live delete %s: no %s step in %v", name, wantKind, steps)
				}
			}
			return err
		})
		apply(ws)
		if err != nil {
			r.fatalf("live delete %s (%s, merge %s): %v", name, pos, merge, err)
		}
		ops++
		v.forget(name)
	}
	revertRefused := func(name string) {
		t.Helper()
		before := dirState(t, r.img, r.state)
		_, err := r.m.Revert(v.name, name, true)
		if err == nil || !strings.Contains(err.Error(), "running") {
			r.fatalf("revert of a running VM: %v, want a refusal that says it runs", err)
		}
		if d := diffState(before, dirState(t, r.img, r.state)); d != "" {
			r.fatalf("refused revert changed files: %s", d)
		}
		ops++
	}

	writeSome(6)
	create("s1", false)
	writeSome(4)
	create("s2", true)
	writeSome(4)
	create("s3", true)
	writeSome(3)
	checkpoint("three snapshots")
	del("s2", MergeCommit, StepCommit) // middle: intermediate commit under the running chain
	checkpoint("middle committed")
	create("s4", true)
	writeSome(3)
	del("s4", MergeCommit, StepCommit) // newest: active commit with pivot
	checkpoint("newest committed")
	create("s5", true)
	writeSome(3)
	create("s6", true)
	writeSome(2)
	del("s5", MergePull, StepPull) // middle by pull
	checkpoint("middle pulled")
	revertRefused("s3")
	del("s6", MergePull, StepPull) // newest by pull into the active image
	checkpoint("newest pulled")
	create("s4", true) // a name used before: its old overlay was merged away
	writeSome(2)
	create("s7", true)
	writeSome(2)
	del("s1", MergeAuto, "") // oldest: the original image
	checkpoint("oldest deleted")
	create("s8", true)
	writeSome(2)
	revertRefused("s4")
	for i := 9; i <= 11; i++ {
		create(fmt.Sprintf("s%d", i), true)
		writeSome(2)
	}
	del("s8", MergeAuto, "")
	del("s10", MergeAuto, "")
	checkpoint("auto deletes")
	plans, err := r.m.Rotate(v.name, RotateOptions{Keep: 2})
	if err != nil {
		r.fatalf("live rotate: %v", err)
	}
	for _, p := range plans {
		v.forget(p.Snapshot)
		r.noteKept(p)
		ops++
	}
	checkpoint("rotated")
	writeSome(3)
	create("s12", true)
	del("s12", MergeAuto, "")
	checkpoint("end")

	// Stop the VM; the state must be as clean for offline use.
	qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	q.conn.Quit(qctx)
	cancel()
	select {
	case <-q.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("qemu did not quit")
	}
	r.check()
	t.Logf("%d live operations", ops)
}

// TestLiveRecover interrupts live operations and recovers them while the
// VM runs: a create whose transaction ran but was not recorded (Recover
// must see the overlays already active and not add them again), and a
// delete of the middle snapshot stopped before its first step.
func TestLiveRecover(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon", "qemu-system-x86_64")
	r := newRig(t, 8)
	disks := map[string]string{}
	v := &vmModel{name: "live", targets: []string{"vda", "vdb"}, cur: map[string][]byte{}, parent: map[string]string{}, snapSum: map[string]map[string]string{}}
	vm := &VM{Name: "live"}
	for _, tg := range v.targets {
		f := filepath.Join(r.img, "live-"+tg+".qcow2")
		mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "gold.qcow2", "-F", "qcow2", f)
		disks[tg] = f
		v.originals = append(v.originals, f)
		b, err := guestBytes(f)
		if err != nil {
			t.Fatal(err)
		}
		v.cur[tg] = b
		vm.Disks = append(vm.Disks, Disk{Target: tg, Active: f})
	}
	q := startLiveVM(t, disks)
	vm.QMP = q.qchain
	if err := r.m.Store.Define(vm); err != nil {
		t.Fatal(err)
	}
	r.vms = append(r.vms, v)
	r.checkOriginals()
	write := func(p byte) {
		for i, tg := range v.targets {
			g := guestOp{kind: "write", pattern: p, off: (int(p)%16 + i) * rCluster, length: 2 * rCluster}
			if err := q.write(tg, g); err != nil {
				r.fatalf("%v", err)
			}
			g.apply(v.cur[tg])
		}
	}
	created := func(name string) {
		q.flush()
		v.parent[name] = v.current
		v.current = name
		v.snapSum[name] = map[string]string{}
		s := r.load(v).Snapshot(name)
		for _, tg := range v.targets {
			v.snapSum[name][tg] = hexSum(v.cur[tg])
			if s == nil {
				continue // not saved yet: a crash test
			}
			if f := s.File(tg); slices.Contains(v.originals, f) {
				r.stable[f] = r.fileHash(f) // read-only from now on
			}
		}
	}
	check := func(what string) {
		t.Helper()
		q.flush()
		vm := r.load(v)
		if err := Verify(vm); err != nil {
			r.fatalf("%s: %v", what, err)
		}
		if vm.Current != v.current || len(vm.Snapshots) != len(v.parent) {
			r.fatalf("%s: metadata %d snapshots, current %q; want %v, current %q", what, len(vm.Snapshots), vm.Current, v.snapshots(), v.current)
		}
		for _, s := range vm.Snapshots {
			for _, tg := range v.targets {
				if got, err := r.guestSum(s.File(tg)); err != nil || got != v.snapSum[s.Name][tg] {
					r.fatalf("%s: snapshot %s disk %s reads differently (%v)", what, s.Name, tg, err)
				}
			}
		}
		for _, d := range vm.Disks {
			if got, err := r.guestSum(d.Active); err != nil || got != hexSum(v.cur[d.Target]) {
				r.fatalf("%s: the current state of %s reads differently (%v)", what, d.Target, err)
			}
			for _, f := range vm.trackedFiles(d.Target) {
				if out, err := runTool("qemu-img", "check", "-U", "-q", f); err != nil {
					r.fatalf("%s: qemu-img check -U %s: %v %s", what, f, err, out)
				}
			}
		}
		r.checkOriginals()
	}

	write(0x11)
	if _, err := r.m.CreateSnapshot(v.name, "s1", "", false); err != nil {
		r.fatalf("%v", err)
	}
	created("s1")
	write(0x22)
	// s2: every step runs, but the journal does not record the last one
	// (the transaction) and the metadata is the old one.
	vmJSON := filepath.Join(r.state, "vms", v.name, "vm.json")
	old, err := os.ReadFile(vmJSON)
	if err != nil {
		t.Fatal(err)
	}
	var last []byte
	var lastKind string
	setStepHook(t, func(_ string, _ int, s Step) {
		last, _ = os.ReadFile(r.journalPath(v))
		lastKind = s.Kind
	})
	if _, err := r.m.CreateSnapshot(v.name, "s2", "", false); err != nil {
		r.fatalf("%v", err)
	}
	StepHook = nil
	if lastKind != StepLiveSnapshot {
		r.fatalf("the last step of a live create is %s, want %s", lastKind, StepLiveSnapshot)
	}
	if err := os.WriteFile(vmJSON, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.journalPath(v), last, 0o600); err != nil {
		t.Fatal(err)
	}
	created("s2")
	write(0x33) // the guest already writes into the new overlays
	r.refusesUnfinished(v)
	if _, err := r.m.Recover(v.name); err != nil {
		r.fatalf("live recover of a create whose transaction had run: %v", err)
	}
	check("create recovered")

	if _, err := r.m.CreateSnapshot(v.name, "s3", "", false); err != nil {
		r.fatalf("%v", err)
	}
	created("s3")
	write(0x44)
	// Delete the middle snapshot, stopped before its first step.
	stopped, err := runCrashing(t, func() error {
		_, err := r.m.Delete(v.name, "s2", DeleteOptions{Merge: MergePull}, false)
		return err
	}, 0)
	if !stopped {
		r.fatalf("delete did not reach its first step: %v", err)
	}
	write(0x55)
	r.refusesUnfinished(v)
	if _, err := r.m.Recover(v.name); err != nil {
		r.fatalf("live recover of a delete: %v", err)
	}
	v.forget("s2")
	check("delete recovered")
}

// TestLiveCreateRollback: when the live switch fails (here: the running
// qemu lacks one of the VM's disks), nothing switched, so the snapshot is
// not taken, the new overlays are removed and no journal is left.
func TestLiveCreateRollback(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-system-x86_64")
	dir := t.TempDir()
	var files []string
	for _, n := range []string{"vda", "vdb", "vdc"} {
		f := filepath.Join(dir, n+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "4M")
		files = append(files, f)
	}
	q := startLiveVM(t, map[string]string{"vda": files[0], "vdb": files[1]})
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	vm := &VM{Name: "rb", QMP: q.qchain, Disks: []Disk{{Target: "vda", Active: files[0]}, {Target: "vdb", Active: files[1]}}}
	if err := m.Store.Define(vm); err != nil {
		t.Fatal(err)
	}
	// Make the switch fail: qemu cannot open vdb's new overlay.
	setStepHook(t, func(_ string, _ int, s Step) {
		if s.Kind == StepLiveSnapshot {
			os.Truncate(s.Files[1], 0)
		}
	})
	defer func() { StepHook = nil }()
	before, _ := os.ReadDir(dir)
	_, err := m.CreateSnapshot("rb", "s1", "", false)
	if err == nil || !strings.Contains(err.Error(), "not taken") {
		t.Fatalf("create whose switch fails: %v; want a rolled back failure", err)
	}
	if strings.Contains(err.Error(), "recover") {
		t.Errorf("a rolled back create leaves nothing to recover, but its error says so: %v", err)
	}
	after, _ := os.ReadDir(dir)
	if len(after) != len(before) {
		t.Errorf("overlay files left behind: %d entries before, %d after", len(before), len(after))
	}
	l, err := m.Store.Lock("rb", false)
	if err != nil {
		t.Fatalf("the VM still needs recovery: %v", err)
	}
	if len(l.VM.Snapshots) != 0 || l.VM.Disks[0].Active != files[0] {
		t.Errorf("metadata changed: %+v", l.VM)
	}
	l.Unlock()
}
