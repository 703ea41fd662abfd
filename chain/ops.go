package chain

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// Manager runs snapshot operations on the VMs of a state directory.
type Manager struct {
	Store *Store
	Ctx   context.Context
	// StorageDaemon overrides the qemu-storage-daemon binary for offline
	// data moves.
	StorageDaemon string
	// Progress, when set, receives the progress of data moves.
	Progress func(s Step, current, total int64)
	// Now returns the time recorded in new snapshots (tests fix it).
	Now func() time.Time
	// BeforeStep, when set, is called before each journal step runs
	// (tests stop an operation there to check recovery at every step).
	BeforeStep func(op string, index int, s Step)
}

func (m *Manager) ctx() context.Context {
	if m.Ctx == nil {
		return context.Background()
	}
	return m.Ctx
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now().UTC().Truncate(time.Second)
}

// clone deep-copies a VM through JSON (the metadata is small).
func clone(vm *VM) *VM {
	b, _ := json.Marshal(vm)
	out := &VM{}
	json.Unmarshal(b, out)
	return out
}

// executor returns the executor for the VM: live when its QMP socket
// answers, offline otherwise.
func (m *Manager) executor(vm *VM) (*Offline, func(), error) {
	ex := &Offline{Ctx: m.ctx(), StorageDaemon: m.StorageDaemon, Progress: m.Progress}
	if vm.QMP == "" {
		return ex, func() {}, nil
	}
	conn, err := DialVM(m.ctx(), vm)
	if err != nil {
		return ex, func() {}, nil
	}
	ex.Live = &Live{Conn: conn, Progress: m.Progress}
	return ex, func() { conn.Close() }, nil
}

// liveExecutor is executor, and when the VM runs it also checks that
// qemu's disks are the ones the metadata names.
func (m *Manager) liveExecutor(vm *VM) (*Offline, func(), error) {
	ex, done, err := m.executor(vm)
	if err != nil || ex.Live == nil {
		return ex, done, err
	}
	if err := ex.Live.verify(m.ctx(), vm); err != nil {
		done()
		return nil, nil, err
	}
	return ex, done, nil
}

// overlayName derives a new overlay's path next to dir's images from the
// VM, disk and snapshot names, never an existing file.
func overlayName(dir, vm, target, snap string) string {
	base := filepath.Join(dir, fmt.Sprintf("%s.%s.%s", vm, target, snap))
	p := base + ".qcow2"
	for i := 2; ; i++ {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			return p
		}
		p = fmt.Sprintf("%s-%d.qcow2", base, i)
	}
}

// relName is how an overlay records its backing file: the base name when
// both are in one folder, else the absolute path.
func relName(overlay, backing string) string {
	if filepath.Dir(overlay) == filepath.Dir(backing) {
		return filepath.Base(backing)
	}
	return backing
}

// CreateSnapshot takes snapshot name of every disk of the VM: a new overlay
// on each active image, made active atomically (one QMP transaction when
// the VM runs, optionally with the guest's file systems frozen through its
// agent).
func (m *Manager) CreateSnapshot(vmName, name, description string, quiesce bool) (*Snapshot, error) {
	if err := validName("snapshot", name); err != nil {
		return nil, err
	}
	l, err := m.Store.Lock(vmName, false)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	vm := l.VM
	if vm.Snapshot(name) != nil {
		return nil, fmt.Errorf("VM %s already has a snapshot %s", vm.Name, name)
	}
	if err := Verify(vm); err != nil {
		return nil, err
	}
	ex, done, err := m.liveExecutor(vm)
	if err != nil {
		return nil, err
	}
	defer done()
	if quiesce && ex.Live == nil {
		return nil, fmt.Errorf("VM %s: --quiesce needs a running VM (its QMP socket does not answer)", vm.Name)
	}
	if quiesce && vm.QGA == "" {
		return nil, fmt.Errorf("VM %s: --quiesce needs the guest agent socket (vm define --qga)", vm.Name)
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
				return fmt.Errorf("VM %s: snapshot %s not taken (the new overlays were removed): %w", vm.Name, name, err)
			}
		}
		return err
	}
	if quiesce {
		ga, err := qmp.DialGuestAgent(m.ctx(), vm.QGA)
		if err != nil {
			return nil, fmt.Errorf("VM %s: guest agent: %w", vm.Name, err)
		}
		defer ga.Close()
		err = qmp.WithFrozenFilesystems(m.ctx(), ga, func(context.Context) error { return run() })
		if err != nil {
			return nil, err
		}
	} else if err := run(); err != nil {
		return nil, err
	}
	return snap, nil
}

func formatOf(file string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	return qcow2.ProbeFormat(f)
}

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

// Recover finishes an interrupted operation of the VM from its journal
// (every step can be run again), then saves the metadata it was to save.
func (m *Manager) Recover(vmName string) (*Journal, error) {
	l, err := m.Store.Lock(vmName, true)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	j, err := l.journal()
	if err != nil || j == nil {
		return nil, err
	}
	ex, done, err := m.executor(l.VM)
	if err != nil {
		return nil, err
	}
	defer done()
	if ex.Live == nil {
		// The VM stopped: making overlays active is now the metadata alone.
		for i := range j.Steps {
			if j.Steps[i].Kind == StepLiveSnapshot {
				j.Steps[i].Done = true
			}
		}
	}
	return j, l.run(j, ex, m.BeforeStep)
}

// Tree draws a chain as `base <- a <- b*` (the active image starred).
func Tree(files []string, active string) string {
	var parts []string
	for i := len(files) - 1; i >= 0; i-- {
		p := filepath.Base(files[i])
		if files[i] == active {
			p += "*"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " <- ")
}

// rollbackCreate undoes a live create whose transaction did not switch any
// disk: it removes the overlays the journal created and drops the journal.
// It refuses (returns an error) when any disk already runs on a new overlay.
func (m *Manager) rollbackCreate(l *Locked, j *Journal, live *Live) error {
	for _, s := range j.Steps {
		if s.Kind == StepLiveSnapshot && s.Done {
			return fmt.Errorf("the switch happened")
		}
	}
	for _, s := range j.Steps {
		if s.Kind != StepCreateOverlay {
			continue
		}
		if d, _, err := live.diskFor(m.ctx(), s.File); err != nil || d != nil {
			return fmt.Errorf("%s is in use", s.File)
		}
	}
	for _, s := range j.Steps {
		if s.Kind == StepCreateOverlay {
			if err := os.Remove(s.File); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return l.dropJournal()
}
