package chain

import (
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/qchain/qchain/qcow2"
)

// imageBitmapFlags returns an image's persistent bitmaps and their
// directory flags, read natively.
func imageBitmapFlags(t *testing.T, file string) map[string]uint32 {
	t.Helper()
	f, err := qcow2.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bms, err := f.Bitmaps()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint32{}
	for _, b := range bms {
		out[b.Name] = b.Flags
	}
	return out
}

// TestCarryBitmapsOffline crashes an offline snapshot create after its
// overlay exists and before the bitmaps moved: the VM is locked until
// recovered, and Recover moves them (the overlay's enabled, the old
// image's disabled); a disabled bitmap and one left in use by a killed
// QEMU are not moved. Then an offline delete by commit merges the
// overlay's bitmap back, enabled, into the image that becomes active.
func TestCarryBitmapsOffline(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	dir := t.TempDir()
	disk := filepath.Join(dir, "vda.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "8M")
	run(t, "qemu-img", "bitmap", "--add", disk, "rec")
	run(t, "qemu-img", "bitmap", "--add", "--disable", disk, "off")
	write(t, disk, 1, "0")
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := m.Store.Define(&VM{Name: "vm1", Disks: []Disk{{Target: "vda", Active: disk}}}); err != nil {
		t.Fatal(err)
	}
	crash := errors.New("crash")
	StepHook = func(op string, i int, s Step) {
		if s.Kind == StepCarryBitmaps {
			panic(crash)
		}
	}
	func() {
		defer func() {
			if p := recover(); p != crash {
				t.Fatalf("create did not reach the carry step: %v", p)
			}
		}()
		m.CreateSnapshot("vm1", "s1", "", false)
	}()
	StepHook = nil
	if _, err := m.Store.Lock("vm1", false); !errors.Is(err, ErrUnfinished) {
		t.Fatalf("lock after the crash: %v, want ErrUnfinished", err)
	}
	if _, err := m.Recover("vm1"); err != nil {
		t.Fatal(err)
	}
	vm, err := m.Store.Load("vm1")
	if err != nil {
		t.Fatal(err)
	}
	ov := vm.Disks[0].Active
	// The recovering run moved rec: s1 records it (a revert keeps it).
	if got := vm.Snapshot("s1").Disks[0].Bitmaps; !slices.Equal(got, []string{"rec"}) {
		t.Errorf("s1 records the bitmaps %v after recover, want [rec]", got)
	}
	if got := imageBitmapFlags(t, ov); len(got) != 1 || got["rec"] != qcow2.BitmapAuto {
		t.Errorf("overlay's bitmaps after recover: %v, want rec enabled", got)
	}
	if got := imageBitmapFlags(t, disk); len(got) != 2 || got["rec"] != 0 || got["off"] != 0 {
		t.Errorf("old image's bitmaps after recover: %v, want rec and off disabled", got)
	}

	// A bitmap a killed QEMU left in use is not moved.
	write(t, ov, 2, "1M")
	// qemu-io opens the image writable (rec marked in use) and aborts.
	exec.Command("qemu-io", "-f", "qcow2", "-c", "abort", ov).Run()
	if got := imageBitmapFlags(t, ov); got["rec"]&qcow2.BitmapInUse == 0 {
		t.Fatalf("after qemu-io abort: %v, want rec in use", got)
	}
	if _, err := m.CreateSnapshot("vm1", "s2", "", false); err != nil {
		t.Fatal(err)
	}
	vm, _ = m.Store.Load("vm1")
	if got := imageBitmapFlags(t, vm.Disks[0].Active); len(got) != 0 {
		t.Errorf("overlay on an image with an in-use bitmap: %v, want none", got)
	}

	// Delete s1 by commit: ov (s2's file) goes into disk (s1's file).
	// ov's rec, in use, cannot be merged: disk's rec is removed rather
	// than left missing ov's writes.
	if _, err := m.Delete("vm1", "s1", DeleteOptions{Merge: MergeCommit}, false); err != nil {
		t.Fatal(err)
	}
	if got := imageBitmapFlags(t, disk); len(got) != 1 || got["off"] != 0 {
		t.Errorf("base after committing an in-use bitmap into it: %v, want off alone", got)
	}
}

// TestRevertKeepsBitmaps: a snapshot records the bitmaps it saw move (a
// recording one, not a disabled one); a revert to it gives the new overlay
// a recording bitmap of each that the snapshot's file still holds and says
// so in LastRevert.Kept, so a bitmap that began before the snapshot is
// still to be trusted. A revert in place (an internal snapshot's) keeps
// none, and a later revert that keeps some carries its time in Lossy.
func TestRevertKeepsBitmaps(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	dir := t.TempDir()
	disk := filepath.Join(dir, "vda.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "8M")
	run(t, "qemu-img", "bitmap", "--add", disk, "rec")
	run(t, "qemu-img", "bitmap", "--add", "--disable", disk, "off")
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := &Manager{Store: &Store{Dir: filepath.Join(dir, "state")}, Now: func() time.Time {
		clock = clock.Add(time.Minute)
		return clock
	}}
	if err := m.Store.Define(&VM{Name: "vm1", Disks: []Disk{{Target: "vda", Active: disk}}}); err != nil {
		t.Fatal(err)
	}
	load := func() *VM {
		t.Helper()
		vm, err := m.Store.Load("vm1")
		if err != nil {
			t.Fatal(err)
		}
		return vm
	}
	write(t, disk, 1, "0")
	if _, err := m.CreateSnapshot("vm1", "s1", "", false); err != nil {
		t.Fatal(err)
	}
	if got := load().Snapshot("s1").Disks[0].Bitmaps; !slices.Equal(got, []string{"rec"}) {
		t.Fatalf("s1 records the bitmaps %v, want [rec]", got)
	}
	write(t, load().Disks[0].Active, 2, "1M")
	if _, err := m.CreateSnapshot("vm1", "s2", "", false); err != nil {
		t.Fatal(err)
	}
	write(t, load().Disks[0].Active, 3, "2M")
	if _, err := m.Revert("vm1", "s1", true); err != nil {
		t.Fatal(err)
	}
	vm := load()
	if got := imageBitmapFlags(t, vm.Disks[0].Active); len(got) != 1 || got["rec"] != qcow2.BitmapAuto {
		t.Errorf("the revert's new overlay has the bitmaps %v, want rec recording", got)
	}
	if got := imageBitmapFlags(t, disk); got["rec"] != 0 || got["off"] != 0 {
		t.Errorf("s1's file after the revert: %v, want rec and off disabled as they were", got)
	}
	r := vm.LastRevert
	if r == nil || !slices.Equal(r.Kept, []string{"rec"}) || r.Lossy != nil {
		t.Fatalf("LastRevert %+v, want rec kept, nothing lossy", r)
	}

	// A revert in place loses every bitmap's trust (the image may hold
	// none then: QEMU refuses, and so does qchain); an external revert
	// after it keeps rec only for a user that began after it.
	run(t, "qemu-img", "bitmap", "--remove", load().Disks[0].Active, "rec")
	if _, err := m.CreateInternalSnapshot("vm1", "i1", "", false); err != nil {
		t.Fatal(err)
	}
	write(t, load().Disks[0].Active, 4, "3M")
	if _, err := m.Revert("vm1", "i1", true); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "bitmap", "--add", load().Disks[0].Active, "rec")
	inPlace := load().LastRevert
	if inPlace == nil || len(inPlace.Kept) != 0 || inPlace.Lossy != nil {
		t.Fatalf("LastRevert after an internal revert: %+v, want nothing kept", inPlace)
	}
	if _, err := m.CreateSnapshot("vm1", "s3", "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Revert("vm1", "s3", true); err != nil {
		t.Fatal(err)
	}
	r = load().LastRevert
	if r == nil || !slices.Equal(r.Kept, []string{"rec"}) || r.Lossy == nil || !r.Lossy.Equal(inPlace.Time) {
		t.Fatalf("LastRevert %+v, want rec kept and lossy at %v", r, inPlace.Time)
	}
	run(t, "qemu-img", "check", load().Disks[0].Active)
}
