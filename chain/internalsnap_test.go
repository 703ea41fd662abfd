package chain

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/chain/imagesnap"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// isRig is a stopped VM with two qcow2 disks (vda an overlay of a base
// image, vdb a plain image), for disk-only internal snapshots.
type isRig struct {
	t   *testing.T
	m   *Manager
	dir string
}

func newISRig(t *testing.T) *isRig {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	dir := t.TempDir()
	r := &isRig{t: t, dir: dir, m: &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}}
	base := filepath.Join(dir, "base.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "8M")
	write(t, base, 0x42, "0")
	vda, vdb := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", vda)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", vdb, "8M")
	write(t, vda, 1, "0")
	write(t, vdb, 1, "0")
	if err := r.m.Store.Define(&VM{Name: "vm", Disks: []Disk{{Target: "vda", Active: vda}, {Target: "vdb", Active: vdb}}, Originals: []string{vda, vdb}}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *isRig) vm() *VM {
	r.t.Helper()
	vm, err := r.m.Store.Load("vm")
	if err != nil {
		r.t.Fatal(err)
	}
	return vm
}

// sums is the guest view of every disk.
func (r *isRig) sums() []string {
	r.t.Helper()
	var out []string
	for _, d := range r.vm().Disks {
		out = append(out, sum(r.t, d.Active))
	}
	return out
}

// writeAll writes pattern p into every disk's active image.
func (r *isRig) writeAll(p byte, off string) {
	r.t.Helper()
	for _, d := range r.vm().Disks {
		write(r.t, d.Active, p, off)
	}
}

// tags returns the internal snapshots of file as qemu-img lists them.
func (r *isRig) tags(file string) []string {
	r.t.Helper()
	tags, err := tagsIn(file)
	if err != nil {
		r.t.Fatal(err)
	}
	return tags
}

// check runs Verify and qemu-img check on every file of the VM.
func (r *isRig) check(step string) {
	r.t.Helper()
	vm := r.vm()
	if err := Verify(vm); err != nil {
		r.t.Fatalf("%s: %v", step, err)
	}
	for _, d := range vm.Disks {
		for _, f := range vm.trackedFiles(d.Target) {
			if out, err := exec.Command("qemu-img", "check", "-U", f).CombinedOutput(); err != nil {
				r.t.Fatalf("%s: qemu-img check %s: %v\n%s", step, f, err, out)
			}
		}
	}
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not mention %q", err, p)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %q is not one line", err)
	}
}

// TestInternalSnapshotOffline creates, reverts and deletes disk-only
// internal snapshots of a stopped VM: tags in every active image, no
// overlay, reverts that need --force only when a disk holds changes no
// snapshot keeps.
func TestInternalSnapshotOffline(t *testing.T) {
	r := newISRig(t)
	vm := r.vm()
	s1, err := r.m.CreateInternalSnapshot("vm", "i1", "first", false)
	if err != nil {
		t.Fatal(err)
	}
	if !s1.Internal || s1.Memory != nil || s1.Parent != "" || len(s1.Disks) != 2 {
		t.Fatalf("snapshot %+v", s1)
	}
	after := r.vm()
	if after.Current != "i1" || !slices.Equal(after.Owned, vm.Owned) {
		t.Fatalf("after create: current %q, owned %v", after.Current, after.Owned)
	}
	for i, d := range after.Disks {
		if d.Active != vm.Disks[i].Active || s1.File(d.Target) != d.Active {
			t.Fatalf("disk %s: active %s, snapshot file %s (was %s)", d.Target, d.Active, s1.File(d.Target), vm.Disks[i].Active)
		}
		if got := r.tags(d.Active); !slices.Equal(got, []string{"i1"}) {
			t.Fatalf("%s holds %v", d.Active, got)
		}
	}
	r.check("created i1")
	sums1 := r.sums()

	// Nothing changed since i1: no --force needed.
	if _, err := r.m.Revert("vm", "i1", false); err != nil {
		t.Fatal(err)
	}
	r.writeAll(7, "64k")
	_, err = r.m.Revert("vm", "i1", false)
	wantErr(t, err, "disk vda", "holds changes no snapshot keeps", "--force")
	s2, err := r.m.CreateInternalSnapshot("vm", "i2", "", false)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Parent != "i1" {
		t.Fatalf("i2's parent %q", s2.Parent)
	}
	sums2 := r.sums()
	// The current state is i2's: the revert to i1 discards nothing.
	p, err := r.m.Revert("vm", "i1", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 1 || p.Steps[0].Kind != StepInternalApply {
		t.Fatalf("revert plan %+v", p.Steps)
	}
	if got := r.sums(); !slices.Equal(got, sums1) || r.vm().Current != "i1" {
		t.Fatalf("after the revert to i1: current %s, sums differ", r.vm().Current)
	}
	if lr := r.vm().LastRevert; lr == nil || lr.Snapshot != "i1" {
		t.Fatalf("the revert to i1 is not recorded for bitmap users (LastRevert %+v)", lr)
	}
	r.check("reverted to i1")
	r.writeAll(9, "128k")
	if _, err := r.m.Revert("vm", "i2", true); err != nil {
		t.Fatal(err)
	}
	if got := r.sums(); !slices.Equal(got, sums2) {
		t.Fatal("after the forced revert to i2 the disks read differently")
	}

	// Refusals: the name, a tag an image holds already, a raw disk.
	_, err = r.m.CreateInternalSnapshot("vm", "i1", "", false)
	wantErr(t, err, "already has a snapshot i1")
	run(t, "qemu-img", "snapshot", "-c", "foreign", r.vm().Disks[1].Active)
	_, err = r.m.CreateInternalSnapshot("vm", "foreign", "", false)
	wantErr(t, err, "disk vdb", "already holds an internal snapshot foreign")
	run(t, "qemu-img", "snapshot", "-d", "foreign", r.vm().Disks[1].Active)

	// Delete: the tags go, Current moves to the parent, children stay.
	if _, err := r.m.Delete("vm", "i1", DeleteOptions{}, false); err != nil {
		t.Fatal(err)
	}
	vm = r.vm()
	if vm.Current != "i2" || vm.Snapshot("i2").Parent != "" {
		t.Fatalf("after deleting i1: current %q, i2's parent %q", vm.Current, vm.Snapshot("i2").Parent)
	}
	for _, d := range vm.Disks {
		if got := r.tags(d.Active); !slices.Equal(got, []string{"i2"}) {
			t.Fatalf("%s holds %v after deleting i1", d.Active, got)
		}
	}
	if _, err := r.m.Revert("vm", "i2", false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Delete("vm", "i2", DeleteOptions{}, false); err != nil {
		t.Fatal(err)
	}
	if vm := r.vm(); vm.Current != "" || len(vm.Snapshots) != 0 {
		t.Fatalf("after deleting i2: %+v", vm)
	}
	if got := r.sums(); !slices.Equal(got, sums2) {
		t.Fatal("deleting the snapshots changed the current state")
	}
	r.check("deleted both")
}

func TestInternalSnapshotRaw(t *testing.T) {
	need(t, "qemu-img")
	dir := t.TempDir()
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	q, raw := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.raw")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "1M")
	run(t, "qemu-img", "create", "-q", "-f", "raw", raw, "1M")
	if err := m.Store.Define(&VM{Name: "vm", Disks: []Disk{{Target: "vda", Active: q}, {Target: "vdb", Active: raw}}}); err != nil {
		t.Fatal(err)
	}
	_, err := m.CreateInternalSnapshot("vm", "i", "", false)
	wantErr(t, err, "disk vdb", raw, "is raw", "need qcow2")
	if tags, _ := tagsIn(q); len(tags) != 0 {
		t.Fatalf("a refused create left tags %v", tags)
	}
}

// TestInternalSnapshotMixed mixes internal and external snapshots: an
// external snapshot over an internal one makes its image a backing file
// (no revert to it, deletes still work); merges never take an image
// holding internal snapshots out of every chain.
func TestInternalSnapshotMixed(t *testing.T) {
	r := newISRig(t)
	base := r.vm().Disks[0].Active
	if _, err := r.m.CreateInternalSnapshot("vm", "i1", "", false); err != nil {
		t.Fatal(err)
	}
	sumsI1 := r.sums()
	if _, err := r.m.CreateSnapshot("vm", "e1", "", false); err != nil {
		t.Fatal(err)
	}
	r.writeAll(3, "64k")
	// An internal snapshot of the external overlays.
	if _, err := r.m.CreateInternalSnapshot("vm", "i2", "", false); err != nil {
		t.Fatal(err)
	}
	ov1 := r.vm().Disks[0].Active
	if ov1 == base || r.vm().Snapshot("i2").File("vda") != ov1 {
		t.Fatalf("i2 is not in the overlay: %+v", r.vm().Snapshot("i2"))
	}
	sumsI2 := r.sums()
	r.check("i1, e1, i2")

	_, err := r.m.Revert("vm", "i1", true)
	wantErr(t, err, "internal snapshot i1", "no longer the active image")

	// e1's file holds i1: a pull would drop it from every chain.
	_, err = r.m.Delete("vm", "e1", DeleteOptions{Merge: MergePull}, true)
	wantErr(t, err, "by pull", base, "holds internal snapshots (i1)", "delete them first")
	// The overlay above holds i2: a commit would remove it.
	_, err = r.m.Delete("vm", "e1", DeleteOptions{Merge: MergeCommit}, true)
	wantErr(t, err, "by commit", ov1, "holds internal snapshots (i2)")
	_, err = r.m.Delete("vm", "e1", DeleteOptions{}, true)
	wantErr(t, err, "snapshot e1")

	// Deleting i1 from the backing file, offline, works.
	if _, err := r.m.Delete("vm", "i1", DeleteOptions{}, false); err != nil {
		t.Fatal(err)
	}
	if got := r.tags(base); len(got) != 0 {
		t.Fatalf("%s holds %v after deleting i1", base, got)
	}
	r.check("deleted i1")
	// e1 still cannot go: a commit would remove i2's image, and a pull
	// would change what i2 reads through its backing file.
	_, err = r.m.Delete("vm", "e1", DeleteOptions{}, true)
	wantErr(t, err, ov1, "holds internal snapshots (i2)")
	_, err = r.m.Delete("vm", "e1", DeleteOptions{Merge: MergePull}, true)
	wantErr(t, err, "by pull", ov1, "holds internal snapshots (i2)", "would change what they read")
	_ = sumsI1

	// An external snapshot after i2, deleted: auto picks the commit into
	// i2's image (a pull would drop it).
	if _, err := r.m.CreateSnapshot("vm", "e2", "", false); err != nil {
		t.Fatal(err)
	}
	r.writeAll(4, "192k")
	cur := r.sums()
	// The current state (e2's overlay) is no snapshot's: revert refuses.
	_, err = r.m.Revert("vm", "e2", false)
	wantErr(t, err, "holds changes no snapshot keeps")
	p, err := r.m.Delete("vm", "e2", DeleteOptions{}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) == 0 || p.Steps[0].Kind != StepCommit {
		t.Fatalf("e2 not deleted by commit: %+v", p.Steps)
	}
	if got := r.sums(); !slices.Equal(got, cur) {
		t.Fatal("deleting e2 changed the current state")
	}
	r.check("deleted e2")
	// i2's image is active again: the revert works, with --force.
	if _, err := r.m.Revert("vm", "i2", true); err != nil {
		t.Fatal(err)
	}
	if got := r.sums(); !slices.Equal(got, sumsI2) {
		t.Fatal("after the revert to i2 the disks read differently")
	}
	r.check("reverted to i2")

	// With i2 deleted, e1 goes too.
	if _, err := r.m.Delete("vm", "i2", DeleteOptions{}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Delete("vm", "e1", DeleteOptions{}, false); err != nil {
		t.Fatal(err)
	}
	if got := r.sums(); !slices.Equal(got, sumsI2) {
		t.Fatal("deleting i2 and e1 changed the current state")
	}
	r.check("deleted i2 and e1")

	// An external revert whose current state an internal snapshot of the
	// VM keeps needs no --force.
	if _, err := r.m.CreateSnapshot("vm", "e3", "", false); err != nil {
		t.Fatal(err)
	}
	r.writeAll(6, "256k")
	if _, err := r.m.CreateInternalSnapshot("vm", "i3", "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Revert("vm", "e3", false); err != nil {
		t.Fatalf("revert to e3 from i3's state: %v", err)
	}
	r.check("reverted to e3")
	if got := r.tags(r.vm().Snapshot("i3").File("vda")); !slices.Equal(got, []string{"i3"}) {
		t.Fatalf("i3's image holds %v after the revert to e3", got)
	}
}

// TestInternalSnapshotCrashEveryStep interrupts create, revert and delete
// of a disk-only internal snapshot before their step and half-way through
// it (one disk done): every other operation refuses, and Recover finishes
// the operation, each tag taken once.
func TestInternalSnapshotCrashEveryStep(t *testing.T) {
	for _, half := range []bool{false, true} {
		name := map[bool]string{false: "before", true: "half-way"}[half]
		t.Run(name, func(t *testing.T) {
			r := newISRig(t)
			vm := r.vm()
			vda := vm.Disks[0].Active
			ctx := context.Background()
			crash := func(op func() error, partial func()) {
				t.Helper()
				setStepHook(t, func(_ string, i int, _ Step) {
					if half {
						partial()
					}
					panic(crashSentinel{i})
				})
				func() {
					defer func() {
						if p := recover(); p != nil {
							if _, ok := p.(crashSentinel); !ok {
								panic(p)
							}
						}
						StepHook = nil
					}()
					if err := op(); err != nil {
						t.Fatal(err)
					}
					t.Fatal("the operation did not stop")
				}()
				if _, err := r.m.CreateSnapshot("vm", "other", "", false); !isUnfinished(err) {
					t.Fatalf("another operation: %v, want ErrUnfinished", err)
				}
				if _, err := r.m.Recover("vm"); err != nil {
					t.Fatal(err)
				}
				r.check("recovered")
			}

			crash(func() error { _, err := r.m.CreateInternalSnapshot("vm", "i1", "", false); return err }, func() {
				if err := imagesnap.Create(ctx, vda, "i1", imagesnap.Options{}); err != nil {
					t.Fatal(err)
				}
			})
			if s := r.vm().Snapshot("i1"); s == nil || r.vm().Current != "i1" {
				t.Fatal("i1 missing after recover")
			}
			for _, d := range r.vm().Disks {
				if got := r.tags(d.Active); !slices.Equal(got, []string{"i1"}) {
					t.Fatalf("%s holds %v", d.Active, got)
				}
			}
			sums1 := r.sums()
			r.writeAll(5, "64k")
			if _, err := r.m.CreateInternalSnapshot("vm", "i2", "", false); err != nil {
				t.Fatal(err)
			}
			sums2 := r.sums()

			crash(func() error { _, err := r.m.Revert("vm", "i1", false); return err }, func() {
				if _, err := imagesnap.Apply(vda, "i1"); err != nil {
					t.Fatal(err)
				}
			})
			if got := r.sums(); !slices.Equal(got, sums1) || r.vm().Current != "i1" {
				t.Fatalf("after the recovered revert: current %s", r.vm().Current)
			}

			crash(func() error { _, err := r.m.Delete("vm", "i2", DeleteOptions{}, false); return err }, func() {
				if _, err := imagesnap.Delete(ctx, vda, "i2", imagesnap.Options{}); err != nil {
					t.Fatal(err)
				}
			})
			if r.vm().Snapshot("i2") != nil {
				t.Fatal("i2 still there after the recovered delete")
			}
			for _, d := range r.vm().Disks {
				if got := r.tags(d.Active); !slices.Equal(got, []string{"i1"}) {
					t.Fatalf("%s holds %v", d.Active, got)
				}
			}
			_ = sums2
		})
	}
}

func isUnfinished(err error) bool {
	return err != nil && strings.Contains(err.Error(), ErrUnfinished.Error())
}

// TestInternalSnapshotLive takes disk-only internal snapshots of a running
// VM (drives, and -blockdev nodes behind devices): one transaction tags
// both disks, the guest's later writes do not reach the snapshot, a
// revert is refused while the VM runs, the force rule sees the writes,
// and a delete removes the tags through the running qemu. An internal
// snapshot under a later external one is refused a live delete.
func TestInternalSnapshotLive(t *testing.T) {
	for _, device := range []bool{false, true} {
		t.Run(map[bool]string{false: "drive", true: "device"}[device], func(t *testing.T) {
			need(t, "qemu-img", "qemu-io", "qemu-storage-daemon", "qemu-system-x86_64")
			dir := t.TempDir()
			m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
			vda, vdb := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.qcow2")
			for _, f := range []string{vda, vdb} {
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "8M")
				write(t, f, 1, "0")
			}
			q := startLiveVMKind(t, map[string]string{"vda": vda, "vdb": vdb}, device)
			if err := m.Store.Define(&VM{Name: "vm", QMP: q.qchain, Disks: []Disk{{Target: "vda", Active: vda}, {Target: "vdb", Active: vdb}}}); err != nil {
				t.Fatal(err)
			}
			q.flush()
			before := []string{sum(t, vda), sum(t, vdb)}
			s, err := m.CreateInternalSnapshot("vm", "i1", "", false)
			if err != nil {
				t.Fatal(err)
			}
			if !s.Internal || s.Memory != nil {
				t.Fatalf("snapshot %+v", s)
			}
			for _, tg := range []string{"vda", "vdb"} {
				if err := q.write(tg, guestOp{kind: "write", pattern: 9, off: 65536, length: 65536}); err != nil {
					t.Fatal(err)
				}
			}
			q.flush()
			for i, f := range []string{vda, vdb} {
				tags, err := tagsIn(f)
				if err != nil || !slices.Equal(tags, []string{"i1"}) {
					t.Fatalf("%s holds %v (%v)", f, tags, err)
				}
				if got := snapSum(t, f, "i1"); got != before[i] {
					t.Fatalf("%s: snapshot i1 reads differently from the disk when it was taken", f)
				}
				if sum(t, f) == before[i] {
					t.Fatalf("%s: the write after the snapshot did not land", f)
				}
			}
			_, err = m.Revert("vm", "i1", true)
			wantErr(t, err, "VM vm is running", "stop it before reverting its disks")

			// A create stopped before its step, and one stopped after
			// one disk alone was tagged: Recover takes every tag at one
			// instant (the lone tag is taken again with the others).
			for _, partial := range []bool{false, true} {
				name := map[bool]string{false: "c0", true: "c1"}[partial]
				stopped, err := runCrashing(t, func() error {
					if partial {
						setStepHook(t, func(_ string, i int, _ Step) {
							ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
							defer cancel()
							if err := q.conn.BlockdevSnapshotInternalSync(ctx, qmp.BlockdevSnapshotInternal{Device: q.rootOf("vda"), Name: name}); err != nil {
								t.Fatal(err)
							}
							panic(crashSentinel{i})
						})
					}
					_, err := m.CreateInternalSnapshot("vm", name, "", false)
					return err
				}, 0)
				if !stopped {
					t.Fatalf("create %s did not stop: %v", name, err)
				}
				if _, err := m.Recover("vm"); err != nil {
					t.Fatal(err)
				}
				for _, f := range []string{vda, vdb} {
					if tags, _ := tagsIn(f); !slices.Equal(tags, []string{"i1", name}) {
						t.Fatalf("after recovering create %s, %s holds %v", name, f, tags)
					}
				}
				if _, err := m.Delete("vm", name, DeleteOptions{}, false); err != nil {
					t.Fatal(err)
				}
			}
			_, err = m.CreateInternalSnapshot("vm", "i1x", "", false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Delete("vm", "i1x", DeleteOptions{}, false); err != nil {
				t.Fatal(err)
			}
			// An external snapshot over i1: its images are read-only
			// backing files of the running VM now.
			if _, err := m.CreateSnapshot("vm", "e1", "", false); err != nil {
				t.Fatal(err)
			}
			_, err = m.Delete("vm", "i1", DeleteOptions{}, false)
			wantErr(t, err, "internal snapshot i1", "read-only backing file", "stop the VM")
			_, err = m.Revert("vm", "i1", true)
			wantErr(t, err, "running")
			// Deleting e1 commits into i1's images (a pull would drop them).
			p, err := m.Delete("vm", "e1", DeleteOptions{}, false)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Steps) == 0 || p.Steps[0].Kind != StepCommit {
				t.Fatalf("e1 not deleted by commit: %+v", p.Steps)
			}
			if _, err := m.Delete("vm", "i1", DeleteOptions{}, false); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{vda, vdb} {
				if tags, _ := tagsIn(f); len(tags) != 0 {
					t.Fatalf("%s holds %v after the delete", f, tags)
				}
			}
			vm, _ := m.Store.Load("vm")
			if vm.Current != "" || len(vm.Snapshots) != 0 {
				t.Fatalf("after the deletes: %+v", vm)
			}

			// A live create stopped before its step, then qemu gone:
			// Recover takes the tags offline, at the state qemu left.
			if stopped, err := runCrashing(t, func() error { _, err := m.CreateInternalSnapshot("vm", "gone", "", false); return err }, 0); !stopped {
				t.Fatalf("create did not stop: %v", err)
			}
			q.cmd.Process.Kill()
			<-q.exited
			if _, err := m.Recover("vm"); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{vda, vdb} {
				if tags, _ := tagsIn(f); !slices.Equal(tags, []string{"gone"}) {
					t.Fatalf("after recovering with qemu gone, %s holds %v", f, tags)
				}
			}
			if vm, _ := m.Store.Load("vm"); vm.Current != "gone" {
				t.Fatalf("after the recover: current %q", vm.Current)
			}
		})
	}
}

// snapSum is the guest view of internal snapshot tag of file.
func snapSum(t *testing.T, file, tag string) string {
	t.Helper()
	c, err := qcow2.OpenChain(file, qcow2.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, err := c.WithSnapshot(tag)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(v, 0, int64(v.Size()))); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// rootOf is the name blockdev-snapshot-internal-sync takes for the
// target's disk: the drive, or the root node behind the device.
func (v *liveVM) rootOf(target string) string {
	if v.device {
		return target + "-orig"
	}
	return target
}

// TestInternalSnapshotOfflineRollback: an offline create whose second
// image is held by another process fails, and the tag already taken in
// the first image is deleted again: nothing changed, no journal.
func TestInternalSnapshotOfflineRollback(t *testing.T) {
	r := newISRig(t)
	vdb := r.vm().Disks[1].Active
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-io", "-r", "-f", "qcow2", vdb)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if busy, _ := qcow2.InUse(vdb); busy {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatal("qemu-io took no lock of the image")
		}
	}
	_, err = r.m.CreateInternalSnapshot("vm", "i1", "", false)
	wantErr(t, err, "internal snapshot i1 not taken (nothing changed)", "in use")
	for _, d := range r.vm().Disks {
		if tags := r.tags(d.Active); len(tags) != 0 {
			t.Fatalf("%s holds %v after the failed create", d.Active, tags)
		}
	}
	if vm := r.vm(); vm.Current != "" || len(vm.Snapshots) != 0 {
		t.Fatalf("after the failed create: %+v", vm)
	}
	stdin.Close()
	cmd.Wait()
	if _, err := r.m.CreateInternalSnapshot("vm", "i1", "", false); err != nil {
		t.Fatalf("create after the failed one (no journal left): %v", err)
	}
}
