package chain

import (
	"fmt"
	"path/filepath"
	"slices"

	"github.com/qchain/qchain/qcow2"
)

// holdsChanges reports whether an image allocates anything of its own.
func holdsChanges(file string) (bool, error) {
	c, err := qcow2.OpenChain(file, qcow2.ChainOptions{NoBacking: true})
	if err != nil {
		return false, err
	}
	defer c.Close()
	st, err := c.Stats()
	if err != nil {
		return false, err
	}
	return st[0].AllocatedBytes > 0, nil
}

// Revert makes snapshot name's point in time current: a new overlay on its
// files for every disk. The old current state is discarded: refused when
// it holds changes no snapshot keeps, unless force; the VM's files it
// leaves needed by nothing are removed or named in the plan's Kept. A
// running VM is refused (a disk-only revert under a live guest corrupts
// it). The plan returned says what was done.
func (m *Manager) Revert(vmName, name string, force bool) (*Plan, error) {
	return m.RevertWith(vmName, name, RevertOptions{Force: force})
}

// RevertOptions configure RevertWith.
type RevertOptions struct {
	// Force discards current changes no snapshot keeps.
	Force bool
	// Paused leaves a VM reverted to a checkpoint with memory paused.
	Paused bool
}

// RevertWith is Revert; a checkpoint with memory (Snapshot.Memory) is
// reverted with RevertCheckpoint's steps.
func (m *Manager) RevertWith(vmName, name string, o RevertOptions) (*Plan, error) {
	l, err := m.Store.Lock(vmName, false)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	vm := l.VM
	s := vm.Snapshot(name)
	if s == nil {
		return nil, fmt.Errorf("VM %s has no snapshot %s", vm.Name, name)
	}
	if s.Internal && s.Memory == nil {
		return m.revertInternalDisks(l, s, o)
	}
	if s.Internal {
		return m.revertInternal(l, s, o)
	}
	if s.Memory != nil {
		return m.revertCheckpoint(l, s, o)
	}
	if vm.QMP != "" {
		if conn, err := DialVM(m.ctx(), vm); err == nil {
			conn.Close()
			return nil, fmt.Errorf("VM %s is running (its QMP socket %s answers): stop it before reverting its disks", vm.Name, vm.QMP)
		}
	}
	p, err := m.planRevert(vm, s, o.Force)
	if err != nil {
		return nil, err
	}
	j := &Journal{Op: "revert", Snapshot: name, Started: m.now(), Steps: p.Steps, Final: p.Final}
	ex := &Offline{Ctx: m.ctx(), StorageDaemon: m.StorageDaemon}
	return p, l.run(j, ex, m.BeforeStep)
}

// planRevert plans the disks' side of a revert to s: a new overlay on
// each of its files, and the removal of the VM's files nothing needs
// after.
func (m *Manager) planRevert(vm *VM, s *Snapshot, force bool) (*Plan, error) {
	name := s.Name
	if err := Verify(vm); err != nil {
		return nil, err
	}
	// An internal snapshot of the VM in the active image keeps its state
	// (the image stays while the snapshot needs it).
	if err := checkCurrentKept(vm, force, func(file, tag string) bool { return snapshotWithTag(vm, file, tag) != "" }); err != nil {
		return nil, err
	}
	final := clone(vm)
	p := &Plan{VM: vm.Name, Op: "revert", Snapshot: name, Before: map[string]string{}, After: map[string]string{}}
	var kept []string
	for i, d := range vm.Disks {
		file := s.File(d.Target)
		ov := overlayName(filepath.Dir(file), vm.Name, d.Target, name)
		p.Steps = append(p.Steps, Step{Kind: StepCreateOverlay, Target: d.Target, File: ov, Backing: relName(ov, file), BackingFmt: formatOf(file),
			Why: "new active image of " + d.Target + " at snapshot " + name})
		names, err := resumable(s, d.Target)
		if err != nil {
			return nil, err
		}
		if len(names) > 0 {
			p.Steps = append(p.Steps, Step{Kind: StepResumeBitmaps, Target: d.Target, File: ov, Base: file, Bitmaps: names,
				Why: "the dirty bitmaps that recorded " + filepath.Base(file) + " until snapshot " + name + " go on recording on the new branch"})
		}
		if i == 0 {
			kept = slices.Clone(names)
		} else {
			kept = slices.DeleteFunc(kept, func(n string) bool { return !slices.Contains(names, n) })
		}
		final.Disks[i].Active = ov
		final.Owned = append(final.Owned, ov)
		p.hint(d.Active, "the old current state, which no snapshot keeps")
		p.Changed = append(p.Changed, ov)
	}
	final.Current = name
	final.LastRevert = &Revert{Snapshot: name, Time: m.now()}
	if len(kept) > 0 {
		final.LastRevert.Kept = kept
		if r := vm.LastRevert; r != nil && len(r.Kept) == 0 {
			t := r.Time
			final.LastRevert.Lossy = &t
		} else if r != nil {
			final.LastRevert.Lossy = r.Lossy
		}
	}
	if err := m.planUnused(vm, final, p, nil, ""); err != nil {
		return nil, err
	}
	p.Changed = append(p.Changed, p.Removed...)
	p.Final = final
	for _, d := range vm.Disks {
		ch, err := chainOf(d.Active)
		if err != nil {
			return nil, err
		}
		p.Before[d.Target] = Tree(ch, d.Active)
		ov := final.Disk(d.Target).Active
		after, err := chainOf(s.File(d.Target))
		if err != nil {
			return nil, err
		}
		p.After[d.Target] = Tree(append([]string{ov}, after...), ov)
	}
	return p, nil
}

// resumable returns the bitmaps a revert to s gives target's new overlay:
// those that recorded the snapshot's file until its instant
// (SnapshotDisk.Bitmaps) and that the file still holds, consistent.
func resumable(s *Snapshot, target string) ([]string, error) {
	var want []string
	for _, d := range s.Disks {
		if d.Target == target {
			want = d.Bitmaps
		}
	}
	if len(want) == 0 || s.Internal {
		return nil, nil
	}
	f, err := qcow2.Open(s.File(target))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	bms, err := f.Bitmaps()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, b := range bms {
		if slices.Contains(want, b.Name) && b.Flags&qcow2.BitmapInUse == 0 {
			out = append(out, b.Name)
		}
	}
	return out, nil
}
