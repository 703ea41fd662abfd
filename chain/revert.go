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
// it holds changes no snapshot keeps, unless force. A running VM is refused
// (a disk-only revert under a live guest corrupts it).
func (m *Manager) Revert(vmName, name string, force bool) error {
	l, err := m.Store.Lock(vmName, false)
	if err != nil {
		return err
	}
	defer l.Unlock()
	vm := l.VM
	s := vm.Snapshot(name)
	if s == nil {
		return fmt.Errorf("VM %s has no snapshot %s", vm.Name, name)
	}
	if vm.QMP != "" {
		if conn, err := DialVM(m.ctx(), vm); err == nil {
			conn.Close()
			return fmt.Errorf("VM %s is running (its QMP socket %s answers): stop it before reverting its disks", vm.Name, vm.QMP)
		}
	}
	if err := Verify(vm); err != nil {
		return err
	}
	final := clone(vm)
	j := &Journal{Op: "revert", Snapshot: name, Started: m.now()}
	for i, d := range vm.Disks {
		changed, err := holdsChanges(d.Active)
		if err != nil {
			return err
		}
		if changed && !force {
			return fmt.Errorf("VM %s disk %s: the current state (%s) holds changes no snapshot keeps; take a snapshot first, or revert with --force to discard them",
				vm.Name, d.Target, d.Active)
		}
		file := s.File(d.Target)
		ov := overlayName(filepath.Dir(file), vm.Name, d.Target, name)
		j.Steps = append(j.Steps, Step{Kind: StepCreateOverlay, Target: d.Target, File: ov, Backing: relName(ov, file), BackingFmt: formatOf(file),
			Why: "new active image of " + d.Target + " at snapshot " + name})
		final.Disks[i].Active = ov
		final.Owned = append(final.Owned, ov)
		if vm.owns(d.Active) && !slices.Contains(vm.trackedSnapshotFiles(d.Target), d.Active) {
			j.Steps = append(j.Steps, Step{Kind: StepRemove, Target: d.Target, File: d.Active, Why: "the old current state, which no snapshot keeps"})
			final.disown(d.Active)
		}
	}
	final.Current = name
	j.Final = final
	ex := &Offline{Ctx: m.ctx(), StorageDaemon: m.StorageDaemon}
	return l.run(j, ex, m.BeforeStep)
}

func (vm *VM) trackedSnapshotFiles(target string) []string {
	var out []string
	for _, s := range vm.Snapshots {
		out = append(out, s.File(target))
	}
	return out
}
