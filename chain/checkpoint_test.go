package chain

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures/guest"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// ckWait bounds each wait for the guest: the host's cores are shared.
const ckWait = 3 * time.Minute

// ckRig is the real guest as a VM that qchain starts, writing records of
// run on vda, its console appended to console.
type ckRig struct {
	t       *testing.T
	m       *Manager
	name    string
	run     string
	console string
}

func newCkRig(t *testing.T, withCommand bool) *ckRig {
	need(t, "qemu-system-x86_64")
	f := guest.ForTest(t)
	dir := t.TempDir()
	r := &ckRig{t: t, name: "ck", run: "ck", console: filepath.Join(dir, "console"),
		m: &Manager{Store: &Store{Dir: filepath.Join(dir, "state")}}}
	r.m.BeforeStep = func(op string, i int, s Step) {
		if StepHook != nil {
			StepHook(op, i, s)
		}
	}
	img := filepath.Join(dir, "vda.qcow2")
	if err := qcow2.Create(img, qcow2.CreateOptions{Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ckWait)
	defer cancel()
	cmd, err := guest.VMCommand(ctx, guest.Options{Fixture: f, Disks: []guest.Disk{{Path: img}}, Workload: guest.Workload{Run: r.run, Delay: 10 * time.Millisecond}}, r.console)
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{Name: r.name, Disks: []Disk{{Target: "vda", Active: img}}, Command: cmd}
	if err := r.m.Store.Define(vm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.kill)
	if !withCommand {
		// An attached VM: started by the test, known to qchain by its
		// QMP socket alone.
		vm := r.vm()
		if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
			t.Fatal(err)
		}
		l, err := r.m.Store.Lock(r.name, false)
		if err != nil {
			t.Fatal(err)
		}
		l.VM.Command = nil
		if err := l.Save(); err != nil {
			t.Fatal(err)
		}
		l.Unlock()
		_ = vm
	}
	return r
}

func (r *ckRig) vm() *VM {
	vm, err := r.m.Store.Load(r.name)
	if err != nil {
		r.t.Fatal(err)
	}
	return vm
}

// kill ends a qemu the test left running (it has a session of its own).
func (r *ckRig) kill() {
	b, err := os.ReadFile(r.m.Store.pidPath(r.name))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && qemuAlive(pid, r.vm().QMP) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (r *ckRig) consoleSize() int64 {
	fi, err := os.Stat(r.console)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func (r *ckRig) waitAck(offset int64, n uint64) *guest.ConsoleLog {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ckWait)
	defer cancel()
	c, err := guest.WaitConsoleAck(ctx, r.console, r.run, offset, n)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// lastOnDisk returns the last intact record of the snapshot's disk.
func (r *ckRig) lastOnDisk(snap string) uint64 {
	r.t.Helper()
	s := r.vm().Snapshot(snap)
	if s == nil {
		r.t.Fatalf("no snapshot %s", snap)
	}
	last, err := guest.CheckRecords(s.File("vda"), r.run, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	return last
}

// revertAndCheck reverts to checkpoint snap (the VM running or not) and
// checks that the guest runs on from it without booting.
func (r *ckRig) revertAndCheck(snap string) {
	r.t.Helper()
	last := r.lastOnDisk(snap)
	r.stop()
	off := r.consoleSize()
	if _, err := r.m.RevertWith(r.name, snap, RevertOptions{Force: true}); err != nil {
		r.t.Fatal(err)
	}
	r.checkResumed(off, last)
}

func (r *ckRig) checkResumed(off int64, last uint64) {
	r.t.Helper()
	acks := r.restoredAcks(off, last, 5)
	if acks[0] != last && acks[0] != last+1 {
		r.t.Fatalf("after the revert to a checkpoint whose disk ends at %d the guest acknowledged %d first", last, acks[0])
	}
}

// restoredAcks waits until the guest restored after offset has
// acknowledged n records and returns its acknowledgements. Those the old
// qemu printed before the revert quit it come first in the log: the
// restored guest's start where the numbers fall back (or at once when
// the first is at most upTo+1).
func (r *ckRig) restoredAcks(off int64, upTo, n uint64) []uint64 {
	r.t.Helper()
	for deadline := time.Now().Add(ckWait); ; {
		c, err := guest.ReadConsoleLog(r.console, r.run, off)
		if err != nil {
			r.t.Fatal(err)
		}
		if c.Readies != 0 {
			r.t.Fatalf("the guest booted after the revert (READY %d): its memory was not restored", c.Next)
		}
		acks := c.Acks
		for i := 1; i < len(acks); i++ {
			if acks[i] <= acks[i-1] {
				acks = acks[i:]
				break
			}
		}
		if len(acks) > 0 && acks[0] <= upTo+1 {
			for i := 1; i < len(acks); i++ {
				if acks[i] != acks[i-1]+1 {
					r.t.Fatalf("acknowledgements after the revert jump from %d to %d", acks[i-1], acks[i])
				}
			}
			if uint64(len(acks)) >= n {
				return acks
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no %d records acknowledged after the revert within %s: %v", n, ckWait, c.Acks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *ckRig) stop() {
	r.t.Helper()
	if err := r.m.StopVM(r.name, StopOptions{Force: true}); err != nil && !errors.Is(err, errNotRunning) {
		r.t.Fatal(err)
	}
}

// crashAt runs op with the step hook stopping it (as a killed qchain
// stops) before step stopAt runs, and reports whether it stopped there.
func crashAt(t *testing.T, op func() error, stopAt int) bool {
	stopped, err := runCrashing(t, op, stopAt)
	if !stopped && err != nil {
		t.Fatal(err)
	}
	return stopped
}

// TestCheckpointCrashEveryStep stops checkpoint create and revert before
// each of their journal steps, then recovers: the checkpoint exists with
// its memory and, reverted to, the guest runs on from it; an interrupted
// revert, recovered, leaves the guest running on from the checkpoint.
func TestCheckpointCrashEveryStep(t *testing.T) {
	r := newCkRig(t, true)
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(0, 10)
	for i := 0; ; i++ {
		name := "create" + strconv.Itoa(i)
		if r.vm().Snapshot(name) != nil {
			t.Fatalf("%s exists before it was taken", name)
		}
		if !crashAt(t, func() error { _, err := r.m.CreateCheckpoint(r.name, name, CheckpointOptions{}); return err }, i) {
			if i < 3 {
				t.Fatalf("a checkpoint create has %d steps, want 3", i)
			}
			break // the operation has fewer steps
		}
		t.Logf("create stopped before step %d", i+1)
		if _, err := r.m.CreateSnapshot(r.name, "x", "", false); !errors.Is(err, ErrUnfinished) {
			t.Fatalf("create stopped before step %d: another operation: %v, want ErrUnfinished", i+1, err)
		}
		if _, err := r.m.Recover(r.name); err != nil {
			t.Fatalf("recovering a create stopped before step %d: %v", i+1, err)
		}
		s := r.vm().Snapshot(name)
		if s == nil || s.Memory == nil {
			t.Fatalf("create stopped before step %d, recovered: snapshot %+v", i+1, s)
		}
		if !r.m.Answers(r.vm()) {
			t.Fatalf("create stopped before step %d, recovered: the VM does not run", i+1)
		}
		r.waitAck(r.consoleSize(), 1) // it writes on
		r.revertAndCheck(name)
	}

	// A revert stopped before each step.
	snap := "create0"
	last := r.lastOnDisk(snap)
	for i := 0; ; i++ {
		off := r.consoleSize()
		if !crashAt(t, func() error { _, err := r.m.RevertWith(r.name, snap, RevertOptions{Force: true}); return err }, i) {
			if i < 2 {
				t.Fatalf("a checkpoint revert has %d steps, want at least 2", i)
			}
			break
		}
		t.Logf("revert stopped before step %d", i+1)
		if _, err := r.m.Recover(r.name); err != nil {
			t.Fatalf("recovering a revert stopped before step %d: %v", i+1, err)
		}
		r.checkResumed(off, last)
	}
	r.stop()
}

// TestCheckpointQemuDies kills qemu while a checkpoint is being taken:
// the checkpoint is rolled back, or recover keeps a disk-only snapshot;
// either way every acknowledged record is in the VM's disk; and a VM without a command line (an
// attached one) can take a checkpoint but not revert to it.
func TestCheckpointQemuDies(t *testing.T) {
	r := newCkRig(t, true)
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(0, 10)
	setStepHook(t, func(op string, i int, s Step) {
		if s.Kind == StepSaveMemory {
			r.kill()
			for r.m.Store.Process(r.vm()).Running {
				time.Sleep(10 * time.Millisecond)
			}
		}
	})
	_, err := r.m.CreateCheckpoint(r.name, "c", CheckpointOptions{})
	StepHook = nil
	if err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("a checkpoint whose qemu died: %v", err)
	}
	t.Logf("as expected: %v", err)
	if _, err := r.m.Recover(r.name); err != nil {
		t.Fatal(err)
	}
	// Two outcomes keep everything: qemu died before the disks switched
	// (the checkpoint is rolled back, no snapshot), or at or after the
	// switch (the disks' snapshot is kept, without memory). Which one
	// depends on how far the save got when the kill landed.
	vm := r.vm()
	s := vm.Snapshot("c")
	switch {
	case strings.Contains(err.Error(), "not taken (nothing changed)"):
		if s != nil {
			t.Fatalf("rolled back, yet snapshot %+v exists", s)
		}
	case s == nil || s.Memory != nil:
		t.Fatalf("recovered: snapshot %+v, want a disk-only one", s)
	}
	if err := Verify(vm); err != nil {
		t.Fatal(err)
	}
	acked := uint64(0)
	if c, err := guest.ReadConsoleLog(r.console, r.run, 0); err == nil {
		acked = c.LastAck()
	}
	if _, err := guest.CheckRecords(vm.Disks[0].Active, r.run, acked); err != nil {
		t.Fatal(err)
	}
}

// TestCheckpointAttached: a VM qchain did not start has no command line:
// a checkpoint of it works, a revert to it is refused before anything
// stops.
func TestCheckpointAttached(t *testing.T) {
	r := newCkRig(t, false)
	r.waitAck(0, 5)
	if _, err := r.m.CreateCheckpoint(r.name, "c", CheckpointOptions{Live: true}); err != nil {
		t.Fatal(err)
	}
	_, err := r.m.RevertWith(r.name, "c", RevertOptions{Force: true})
	if err == nil || !strings.Contains(err.Error(), "has no qemu command line") {
		t.Fatalf("revert of an attached VM's checkpoint: %v", err)
	}
	if !r.m.Answers(r.vm()) {
		t.Fatal("a refused revert stopped the VM")
	}
	if _, err := r.m.StartVM(r.name, StartOptions{}); err == nil || !strings.Contains(err.Error(), "no qemu command line") {
		t.Fatalf("starting a VM without a command line: %v", err)
	}
	// The test started it: stop it through QMP.
	if err := r.m.StopVM(r.name, StopOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
}

// TestCheckpointLoadFails reverts to a checkpoint whose memory state is
// damaged inside (same size, same magic): qemu exits during the load, the
// revert is a one-line error and is rolled back: the VM's disks and
// snapshots are as before, and it boots from its current state.
func TestCheckpointLoadFails(t *testing.T) {
	r := newCkRig(t, true)
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(0, 5)
	s, err := r.m.CreateCheckpoint(r.name, "c", CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.stop()
	before := r.vm()
	f, err := os.OpenFile(s.Memory.File, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("\xff", 4096)), 8); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = r.m.RevertWith(r.name, "c", RevertOptions{Force: true})
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("revert to a damaged memory state: %v", err)
	}
	t.Logf("as expected: %v", err)
	after := r.vm()
	if after.Disks[0].Active != before.Disks[0].Active || after.Current != before.Current || r.m.Answers(after) {
		t.Fatalf("a failed revert changed the VM: %+v -> %+v", before, after)
	}
	if _, err := os.Stat(filepath.Join(r.m.Store.vmDir(r.name), "journal.json")); !os.IsNotExist(err) {
		t.Fatalf("a rolled-back revert left its journal: %v", err)
	}
	off := r.consoleSize()
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(off, 1)
	r.stop()
}

// TestCheckpointNVRAM: a checkpoint copies the VM's firmware variable
// store, a revert puts the copy back before qemu starts, and deleting the
// checkpoint removes the copy.
func TestCheckpointNVRAM(t *testing.T) {
	r := newCkRig(t, true)
	vars := filepath.Join(t.TempDir(), "vars.fd")
	if err := os.WriteFile(vars, []byte("at the checkpoint"), 0o640); err != nil {
		t.Fatal(err)
	}
	l, err := r.m.Store.Lock(r.name, false)
	if err != nil {
		t.Fatal(err)
	}
	l.VM.NVRAM = vars
	if err := l.Save(); err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(0, 5)
	s, err := r.m.CreateCheckpoint(r.name, "c", CheckpointOptions{Live: true})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(s.Memory.NVRAM); err != nil || string(b) != "at the checkpoint" {
		t.Fatalf("NVRAM copy %q: %q, %v", s.Memory.NVRAM, b, err)
	}
	if err := os.WriteFile(vars, []byte("later"), 0o640); err != nil {
		t.Fatal(err)
	}
	r.revertAndCheck("c")
	if b, err := os.ReadFile(vars); err != nil || string(b) != "at the checkpoint" {
		t.Fatalf("NVRAM after the revert: %q, %v", b, err)
	}
	if fi, err := os.Stat(vars); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("NVRAM mode after the revert: %v, %v", fi.Mode(), err)
	}
	r.stop()
	if _, err := r.m.Delete(r.name, "c", DeleteOptions{}, false); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{s.Memory.File, s.Memory.NVRAM} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Fatalf("%s stays after the checkpoint's deletion: %v", f, err)
		}
	}
}

// TestInternalCheckpoint takes an internal checkpoint of the running
// guest, lets it write on, reverts (running: snapshot-load; stopped:
// -loadvm): the guest does not boot, acknowledges from the checkpoint's
// count on, and its disk lost the records written after the checkpoint.
// Deleting the checkpoint removes the tag from the image.
func TestInternalCheckpoint(t *testing.T) {
	r := newCkRig(t, true)
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(0, 10)
	revert := func(running bool) {
		t.Helper()
		c0, _ := guest.ReadConsoleLog(r.console, r.run, 0)
		s, err := r.m.CreateInternalCheckpoint(r.name, "i", CheckpointOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !s.Internal || s.Memory == nil || s.Memory.File != r.vm().Disks[0].Active {
			t.Fatalf("internal checkpoint: %+v", s)
		}
		if err := Verify(r.vm()); err != nil {
			t.Fatal(err)
		}
		c1 := r.waitAck(0, c0.LastAck()+1)
		from, to := c0.LastAck(), c1.LastAck()
		r.waitAck(0, to+40)
		if _, err := r.m.RevertWith(r.name, "i", RevertOptions{}); err == nil || !strings.Contains(err.Error(), "--force") {
			t.Fatalf("revert to an internal checkpoint without --force: %v", err)
		}
		if !running {
			r.stop()
		}
		off := r.consoleSize()
		if _, err := r.m.RevertWith(r.name, "i", RevertOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
		acks := r.restoredAcks(off, to, 10)
		if acks[0] < from || acks[0] > to+1 {
			t.Fatalf("after the revert the guest acknowledged %d first; at the checkpoint it had acknowledged %d..%d", acks[0], from, to)
		}
		r.stop()
		c, _ := guest.ReadConsoleLog(r.console, r.run, off)
		last, err := guest.CheckRecords(r.vm().Disks[0].Active, r.run, c.LastAck())
		if err != nil {
			t.Fatal(err)
		}
		if last > c.LastAck()+1 {
			t.Fatalf("the disk holds records up to %d, the restored guest acknowledged %d: the disk was not reverted", last, c.LastAck())
		}
		if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
			t.Fatal(err)
		}
		r.waitAck(r.consoleSize(), 1)
		if _, err := r.m.Delete(r.name, "i", DeleteOptions{}, false); err != nil {
			t.Fatal(err)
		}
		c2 := r.conn()
		tagged := qemuHasTag(t, c2, r.vm().Disks[0].Active, "i")
		c2.Close() // QEMU's QMP socket takes one client at a time
		if tagged {
			t.Fatal("the deleted internal checkpoint's tag stays in the image")
		}
	}
	revert(true)
	revert(false)
	r.stop()
}

func (r *ckRig) conn() *qmp.Conn {
	c, err := DialVM(context.Background(), r.vm())
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// TestInternalAfterExternalRevert takes an internal checkpoint of a VM an
// external checkpoint's revert started: on QEMU 9.0+ that load turned
// mapped-ram on, which snapshot-save and snapshot-load cannot write or
// read ("Error while writing VM state"), so they run with it off.
func TestInternalAfterExternalRevert(t *testing.T) {
	r := newCkRig(t, true)
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(0, 5)
	if _, err := r.m.CreateCheckpoint(r.name, "ext", CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.RevertWith(r.name, "ext", RevertOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(r.consoleSize(), 3)
	if _, err := r.m.CreateInternalCheckpoint(r.name, "int", CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(r.consoleSize(), 3)
	if _, err := r.m.RevertWith(r.name, "int", RevertOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(r.consoleSize(), 3)
	r.stop()
}

// TestInternalCheckpointForeignTag refuses an internal checkpoint whose
// name a disk image holds already as a tag qchain did not take (here by
// qemu-img while the VM was stopped): the save's rerun check would take
// that tag for a save done and record a checkpoint with no memory state.
func TestInternalCheckpointForeignTag(t *testing.T) {
	need(t, "qemu-img")
	r := newCkRig(t, true)
	img := r.vm().Disks[0].Active
	if out, err := exec.Command("qemu-img", "snapshot", "-c", "int", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img snapshot -c: %v: %s", err, out)
	}
	if _, err := r.m.StartVM(r.name, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitAck(0, 3)
	_, err := r.m.CreateInternalCheckpoint(r.name, "int", CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "already holds an internal snapshot int") {
		t.Fatalf("internal checkpoint over a tag qemu-img took: %v", err)
	}
	if vm := r.vm(); vm.Snapshot("int") != nil || vm.Current != "" {
		t.Fatalf("the refused checkpoint is in the metadata: %+v", vm.Snapshots)
	}
	r.stop()
}

// qemuHasTag reports whether the running qemu sees internal snapshot tag
// in its node of image file.
func qemuHasTag(t *testing.T, c *qmp.Conn, file, tag string) bool {
	t.Helper()
	var nodes []struct {
		File  string `json:"file"`
		Image struct {
			Snapshots []struct {
				Name string `json:"name"`
			} `json:"snapshots"`
		} `json:"image"`
	}
	if err := c.Execute(context.Background(), "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if !same(qmp.PlainFilename(n.File), file) {
			continue
		}
		for _, s := range n.Image.Snapshots {
			if s.Name == tag {
				return true
			}
		}
	}
	return false
}
