package chain

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/qchain/qchain/chain/imagesnap"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// CreateInternalSnapshot takes disk-only internal snapshot name of the VM:
// a qcow2 internal snapshot tagged name in every disk's active image, all
// from one instant, and no overlay. A running VM takes it in one QMP
// transaction of blockdev-snapshot-internal-sync actions (the guest runs
// on); a stopped one has each image snapshotted offline (imagesnap.Create).
// Raw disks and a tag one of the images holds already are refused. With
// quiesce the running VM's guest file systems are frozen through its
// agent around the transaction.
func (m *Manager) CreateInternalSnapshot(vmName, name, description string, quiesce bool) (*Snapshot, error) {
	l, ex, release, err := m.openCreate(vmName, name)
	if err != nil {
		return nil, err
	}
	defer release()
	vm := l.VM
	if quiesce {
		if err := checkQuiesce(vm, ex); err != nil {
			return nil, err
		}
	}
	step := Step{Kind: StepInternalSnapshot, Tag: name, Why: "internal snapshot " + name + " of every disk, no overlay"}
	snap := &Snapshot{Name: name, Parent: vm.Current, Created: m.now(), Description: description, Internal: true}
	for _, d := range vm.Disks {
		if err := canTagInternal(vm, d, name); err != nil {
			return nil, err
		}
		step.Targets = append(step.Targets, d.Target)
		step.Files = append(step.Files, d.Active)
		snap.Disks = append(snap.Disks, SnapshotDisk{Target: d.Target, File: d.Active})
	}
	final := clone(vm)
	final.Snapshots = append(final.Snapshots, snap)
	final.Current = name
	j := &Journal{Op: "create", Snapshot: name, Started: m.now(), Live: ex.Live != nil, Steps: []Step{step}, Final: final}
	run := func() error {
		err := l.run(j, ex, m.BeforeStep)
		var se *StepError
		if errors.As(err, &se) {
			if rerr := m.rollbackInternalSnapshot(l, step, ex); rerr == nil {
				return fmt.Errorf("VM %s: internal snapshot %s not taken (nothing changed): %w", vm.Name, name, se.Cause())
			}
		}
		return err
	}
	if quiesce {
		err = m.frozen(vm, run)
	} else {
		err = run()
	}
	if err != nil {
		return nil, err
	}
	return l.VM.Snapshot(name), nil
}

// rollbackInternalSnapshot undoes a failed StepInternalSnapshot: every
// tag it took is deleted again (the create refused tags that were there
// before), then the journal is dropped. In the running VM the transaction
// took all or nothing, so there is nothing to delete unless a tag is
// there, which is left to Recover.
func (m *Manager) rollbackInternalSnapshot(l *Locked, s Step, ex *Offline) error {
	for _, f := range s.Files {
		if ex.Live != nil {
			if imageHasTag(f, s.Tag) {
				return fmt.Errorf("%s holds %s", f, s.Tag)
			}
			continue
		}
		tags, err := tagsIn(f)
		if err != nil {
			return err
		}
		if !slices.Contains(tags, s.Tag) {
			continue
		}
		if _, err := imagesnap.Delete(m.ctx(), f, s.Tag, imagesnap.Options{StorageDaemon: m.StorageDaemon}); err != nil {
			return err
		}
	}
	return l.dropJournal()
}

// tagsIn returns the names of the internal snapshots in a qcow2 image
// (none for another format), read from the file without a lock.
// canTagInternal checks that disk d's active image can take an internal
// snapshot tagged name: a qcow2 image that does not hold that tag already,
// whoever took it (qemu-img included), as the image itself says.
func canTagInternal(vm *VM, d Disk, name string) error {
	if f := formatOf(d.Active); f != "qcow2" {
		return fmt.Errorf("VM %s disk %s: %s is %s: internal snapshots need qcow2", vm.Name, d.Target, d.Active, f)
	}
	tags, err := tagsIn(d.Active)
	if err != nil {
		return fmt.Errorf("VM %s disk %s: %w", vm.Name, d.Target, err)
	}
	if slices.Contains(tags, name) {
		return fmt.Errorf("VM %s disk %s: %s already holds an internal snapshot %s", vm.Name, d.Target, d.Active, name)
	}
	return nil
}

func tagsIn(file string) ([]string, error) {
	snaps, err := imagesnap.List(file, "")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out, nil
}

// internalSnapshot runs StepInternalSnapshot in the running VM: one
// transaction, so every disk's tag is from the same instant. Tags an
// interrupted run left on some images only (an offline run the VM was
// started after) are not of one instant with the others: they are
// deleted and every tag taken again, in one transaction.
func (l *Live) internalSnapshot(ctx context.Context, s Step) error {
	var tagged []string
	for _, f := range s.Files {
		if imageHasTag(f, s.Tag) {
			tagged = append(tagged, f)
		}
	}
	if len(tagged) == len(s.Files) {
		return nil
	}
	disks, err := l.runningChains(ctx)
	if err != nil {
		return err
	}
	var actions []qmp.TransactionAction
	for i, t := range s.Targets {
		d := findDisk(disks, t)
		if d == nil || len(d.Chain) == 0 {
			return fmt.Errorf("the running VM has no disk %s", t)
		}
		if !same(qmp.PlainFilename(d.Chain[0].Filename), s.Files[i]) {
			return fmt.Errorf("the running VM's disk %s writes to %s, not %s", t, qmp.PlainFilename(d.Chain[0].Filename), s.Files[i])
		}
		if slices.Contains(tagged, s.Files[i]) {
			if _, err := l.Conn.BlockdevSnapshotDeleteInternalSync(ctx, qmp.BlockdevSnapshotDeleteInternal{Device: d.Name(), Name: s.Tag}); err != nil {
				return fmt.Errorf("deleting the partial tag %s of %s: %w", s.Tag, s.Files[i], err)
			}
		}
		actions = append(actions, qmp.TransactionAction{Type: "blockdev-snapshot-internal-sync",
			Data: qmp.BlockdevSnapshotInternal{Device: d.Name(), Name: s.Tag}})
	}
	return l.Conn.Transaction(ctx, actions, nil)
}

// internalSnapshotOffline runs StepInternalSnapshot on images no process
// has open, skipping the ones that hold the tag already.
func (o *Offline) internalSnapshotOffline(s Step) error {
	for _, f := range s.Files {
		tags, err := tagsIn(f)
		if err != nil {
			return err
		}
		if slices.Contains(tags, s.Tag) {
			continue
		}
		if err := imagesnap.Create(o.ctx(), f, s.Tag, imagesnap.Options{StorageDaemon: o.StorageDaemon}); err != nil {
			return err
		}
	}
	return nil
}

// internalApply runs StepInternalApply natively; an image already at the
// tag's state is left untouched (a rerun).
func internalApply(s Step) error {
	for _, f := range s.Files {
		at, err := unchangedTags(f)
		if err != nil {
			return err
		}
		if slices.Contains(at, s.Tag) {
			continue
		}
		if _, err := imagesnap.Apply(f, s.Tag); err != nil {
			return err
		}
	}
	return nil
}

// unchangedTags names the internal snapshots of a qcow2 image whose disk
// state its current state still is (qcow2.File.UnchangedSnapshots).
func unchangedTags(file string) ([]string, error) {
	f, err := qcow2.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	snaps, err := f.UnchangedSnapshots()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out, nil
}

// currentKept reports whether a disk's current state (its active image)
// is kept by a snapshot: the image allocates nothing of its own (it reads
// as the external snapshot below it), or its state still is one of its
// internal snapshots'. keeps says which internal snapshots count (a tag
// only keeps a state while its image is kept).
func currentKept(active string, keeps func(tag string) bool) (bool, error) {
	changed, err := holdsChanges(active)
	if err != nil || !changed {
		return !changed, err
	}
	if formatOf(active) != "qcow2" {
		return false, nil
	}
	tags, err := unchangedTags(active)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(tags, keeps), nil
}

// checkCurrentKept refuses a revert that would discard a disk state no
// snapshot keeps, unless force.
func checkCurrentKept(vm *VM, force bool, keeps func(file, tag string) bool) error {
	if force {
		return nil
	}
	for _, d := range vm.Disks {
		kept, err := currentKept(d.Active, func(tag string) bool { return keeps(d.Active, tag) })
		if err != nil {
			return fmt.Errorf("VM %s disk %s: %w", vm.Name, d.Target, err)
		}
		if !kept {
			return fmt.Errorf("VM %s disk %s: the current state (%s) holds changes no snapshot keeps; take a snapshot first, or revert with --force to discard them",
				vm.Name, d.Target, d.Active)
		}
	}
	return nil
}

// revertInternalDisks reverts to disk-only internal snapshot s: the VM
// must be stopped (a guest whose disks change under it corrupts them) and
// s's images must still be the active images; each is reverted to the tag
// offline (imagesnap.Apply), journaled.
func (m *Manager) revertInternalDisks(l *Locked, s *Snapshot, o RevertOptions) (*Plan, error) {
	vm := l.VM
	if err := Verify(vm); err != nil {
		return nil, err
	}
	if m.Answers(vm) {
		return nil, fmt.Errorf("VM %s is running (its QMP socket %s answers): stop it before reverting its disks", vm.Name, vm.QMP)
	}
	step := Step{Kind: StepInternalApply, Tag: s.Name, Why: "the disks go back to internal snapshot " + s.Name}
	for _, d := range vm.Disks {
		if !same(s.File(d.Target), d.Active) {
			return nil, fmt.Errorf("VM %s disk %s: internal snapshot %s lives in %s, which is no longer the active image (%s): it can be reverted only while its images are active", vm.Name, d.Target, s.Name, s.File(d.Target), d.Active)
		}
		step.Targets = append(step.Targets, d.Target)
		step.Files = append(step.Files, d.Active)
	}
	if err := checkCurrentKept(vm, o.Force, func(string, string) bool { return true }); err != nil {
		return nil, err
	}
	final := clone(vm)
	final.Current = s.Name
	// The images' data changes under their bitmaps, which do not see it.
	final.LastRevert = &Revert{Snapshot: s.Name, Time: m.now()}
	p := &Plan{VM: vm.Name, Op: "revert", Snapshot: s.Name, Steps: []Step{step}, Final: final, Before: map[string]string{}, After: map[string]string{},
		Changed: slices.Clone(step.Files)}
	j := &Journal{Op: "revert", Snapshot: s.Name, Started: m.now(), Steps: p.Steps, Final: final}
	return p, l.run(j, &Offline{Ctx: m.ctx(), StorageDaemon: m.StorageDaemon}, m.BeforeStep)
}

// internalKind names an internal snapshot's kind in messages.
func internalKind(s *Snapshot) string {
	if s.Memory != nil {
		return "internal checkpoint"
	}
	return "internal snapshot"
}

// mergeLoses refuses a merge that takes file, which holds internal
// snapshots, out of every chain (how says by which merge): the snapshots
// in it would be lost or no longer reachable.
func mergeLoses(vm *VM, target, snap, how, file string) error {
	tags, err := tagsIn(file)
	if err != nil || len(tags) == 0 {
		return err
	}
	return fmt.Errorf("VM %s disk %s: cannot delete snapshot %s by %s: %s holds internal snapshots (%s), which the %s would take out of every chain; delete them first",
		vm.Name, target, snap, how, file, strings.Join(tags, ", "), how)
}

// pullChangesTags refuses a pull into dep, which holds internal snapshots,
// of its backing file fs that allocates data: the snapshots read what
// they do not allocate through dep's backing file, which the pull
// replaces by fs's (the pull copies into dep's current state only).
func pullChangesTags(vm *VM, target, snap, dep, fs string) error {
	tags, err := tagsIn(dep)
	if err != nil || len(tags) == 0 {
		return err
	}
	if changed, err := holdsChanges(fs); err != nil || !changed {
		return err
	}
	return fmt.Errorf("VM %s disk %s: cannot delete snapshot %s by pull: %s holds internal snapshots (%s), which read through its backing file %s, and the pull would change what they read; delete them first",
		vm.Name, target, snap, dep, strings.Join(tags, ", "), fs)
}
