package chain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qchain/qchain/qmp"
)

// CreateSnapshot takes snapshot name of every disk of the VM: a new overlay
// on each active image, made active atomically (one QMP transaction when
// the VM runs, optionally with the guest's file systems frozen through its
// agent).
func (m *Manager) CreateSnapshot(vmName, name, description string, quiesce bool) (*Snapshot, error) {
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
	final := clone(vm)
	snap := &Snapshot{Name: name, Parent: vm.Current, Created: m.now(), Description: description}
	j := &Journal{Op: "create", Snapshot: name, Started: m.now(), Live: ex.Live != nil}
	var live Step
	live.Kind = StepLiveSnapshot
	for i, d := range vm.Disks {
		ov := overlayName(filepath.Dir(d.Active), vm.Name, d.Target, name)
		j.Steps = append(j.Steps, Step{Kind: StepCreateOverlay, Target: d.Target, File: ov, Backing: relName(ov, d.Active), BackingFmt: formatOf(d.Active),
			Why: "new active image of " + d.Target + "; " + filepath.Base(d.Active) + " becomes read-only and holds the snapshot"})
		snap.Disks = append(snap.Disks, SnapshotDisk{Target: d.Target, File: d.Active})
		final.Disks[i].Active = ov
		final.Owned = append(final.Owned, ov)
		live.Targets = append(live.Targets, d.Target)
		live.Files = append(live.Files, ov)
	}
	if ex.Live != nil {
		j.Steps = append(j.Steps, live)
	} else {
		for i, d := range vm.Disks {
			carries, err := imageCarries(d.Active)
			if err != nil {
				return nil, fmt.Errorf("VM %s disk %s: %w", vm.Name, d.Target, err)
			}
			if carries {
				j.Steps = append(j.Steps, Step{Kind: StepCarryBitmaps, Target: d.Target, File: final.Disks[i].Active, Base: d.Active,
					Why: "the dirty bitmaps recording into " + filepath.Base(d.Active) + " go on recording in the new active image"})
			}
		}
	}
	final.Snapshots = append(final.Snapshots, snap)
	final.Current = name
	j.Final = final
	run := func() error {
		err := l.run(j, ex, m.BeforeStep)
		if err != nil && ex.Live != nil {
			// QEMU's transaction is all or nothing: when it failed, no
			// disk switched, so the new overlays are removed and the
			// operation is undone rather than left to recover.
			if rerr := m.rollbackCreate(l, j, ex.Live); rerr == nil {
				// Nothing is left to recover: no recovery hint.
				var se *StepError
				if errors.As(err, &se) {
					return fmt.Errorf("VM %s: snapshot %s not taken (the new overlays were removed): step %d (%s): %w", vm.Name, name, se.Index+1, se.Step, se.Cause())
				}
				return fmt.Errorf("VM %s: snapshot %s not taken (the new overlays were removed): %w", vm.Name, name, err)
			}
		}
		return err
	}
	if quiesce {
		if err := m.frozen(vm, run); err != nil {
			return nil, err
		}
	} else if err := run(); err != nil {
		return nil, err
	}
	return snap, nil
}

// checkQuiesce refuses --quiesce for a VM that is not running (ex has no
// live executor) or has no guest agent socket.
func checkQuiesce(vm *VM, ex *Offline) error {
	if ex.Live == nil {
		return fmt.Errorf("VM %s: --quiesce needs a running VM (its QMP socket does not answer)", vm.Name)
	}
	if vm.QGA == "" {
		return fmt.Errorf("VM %s: --quiesce needs the guest agent socket (vm define --qga)", vm.Name)
	}
	return nil
}

// frozen runs run with the guest's file systems frozen through its agent
// (thawed afterwards, also when run fails).
func (m *Manager) frozen(vm *VM, run func() error) error {
	actx, cancel := context.WithTimeout(m.ctx(), m.agentTimeout())
	ga, err := qmp.DialGuestAgent(actx, vm.QGA)
	cancel()
	if err != nil && errors.Is(err, context.DeadlineExceeded) && m.ctx().Err() == nil {
		return fmt.Errorf("VM %s: the guest agent on %s did not answer within %v (is qemu-ga running in the guest?); no snapshot taken", vm.Name, vm.QGA, m.agentTimeout())
	}
	if err != nil {
		return fmt.Errorf("VM %s: guest agent: %w", vm.Name, err)
	}
	defer ga.Close()
	return qmp.WithFrozenFilesystems(m.ctx(), ga, func(context.Context) error { return run() })
}

// rollbackCreate undoes a live create whose transaction did not switch any
// disk: it removes the overlays the journal created and drops the journal.
// It refuses (returns an error) when any disk already runs on a new overlay.
// It runs also when the create was cancelled (Ctx), with a context of its
// own.
func (m *Manager) rollbackCreate(l *Locked, j *Journal, live *Live) error {
	for _, s := range j.Steps {
		if s.Kind == StepLiveSnapshot && s.Done {
			return fmt.Errorf("the switch happened")
		}
	}
	ctx, cancel := cleanupContext(m.ctx())
	defer cancel()
	for _, s := range j.Steps {
		if s.Kind != StepCreateOverlay {
			continue
		}
		if d, _, err := live.diskFor(ctx, s.File); err != nil || d != nil {
			return fmt.Errorf("%s is in use", s.File)
		}
	}
	return removeOverlaysAndJournal(l, j)
}

// removeOverlaysAndJournal ends a rollback: the overlays the journal's
// steps created are removed (a missing one is fine), then the journal.
func removeOverlaysAndJournal(l *Locked, j *Journal) error {
	for _, s := range j.Steps {
		if s.Kind == StepCreateOverlay {
			if err := os.Remove(s.File); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return l.dropJournal()
}

// openCreate is the start every create shares (disk-only, checkpoint,
// internal, internal checkpoint): it checks that the name is valid, locks
// the VM, checks that the name is free and that the files are what the
// metadata says, and opens the executor (live when the VM's qemu
// answers). release unlocks and closes.
func (m *Manager) openCreate(vmName, name string, also ...func(*Live) error) (l *Locked, ex *Offline, release func(), err error) {
	if err := validName("snapshot", name); err != nil {
		return nil, nil, nil, err
	}
	if l, err = m.Store.Lock(vmName, false); err != nil {
		return nil, nil, nil, err
	}
	vm := l.VM
	if vm.Snapshot(name) != nil {
		err = fmt.Errorf("VM %s already has a snapshot %s", vm.Name, name)
	} else {
		err = Verify(vm)
	}
	var done func()
	if err == nil {
		ex, done, err = m.liveExecutor(vm, also...)
	}
	if err != nil {
		l.Unlock()
		return nil, nil, nil, err
	}
	return l, ex, func() { done(); l.Unlock() }, nil
}
