package chain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/qchain/qchain/qmp"
)

// memoryFdName is the name under which qchain passes a memory state
// file's descriptor to QEMU (getfd), for a "fd:" migration URI.
const memoryFdName = "qchain-memory"

// streamMagic starts every QEMU migration stream ("QEVM"), mapped-ram
// ones included.
var streamMagic = []byte("QEVM")

// errMemoryLost reports a save whose disks switched to their new overlays
// but whose memory state was not saved: the checkpoint can only be kept
// as a disk-only snapshot.
var errMemoryLost = errors.New("the disks switched to their new overlays but the memory state was not saved")

// CheckpointOptions configure CreateCheckpoint.
type CheckpointOptions struct {
	Description string
	// Live copies the RAM while the guest runs; only the last part of the
	// save stops it. Otherwise the vCPUs stop for the whole save.
	Live bool
}

// memoryName derives a checkpoint's memory state file beside dir's
// images, never an existing file.
func memoryName(dir, vm, snap string) string {
	base := filepath.Join(dir, fmt.Sprintf("%s.%s", vm, snap))
	p := base + ".mem"
	for i := 2; ; i++ {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			return p
		}
		p = fmt.Sprintf("%s-%d.mem", base, i)
	}
}

// CreateCheckpoint takes checkpoint name of the running VM: its RAM and
// device state in a file beside the first disk's image, and every disk,
// all from one instant (see StepSaveMemory). The guest runs on afterwards
// as it did before (a VM paused before stays paused).
func (m *Manager) CreateCheckpoint(vmName, name string, o CheckpointOptions) (*Snapshot, error) {
	l, ex, release, err := m.openCreate(vmName, name)
	if err != nil {
		return nil, err
	}
	defer release()
	vm := l.VM
	if ex.Live == nil {
		return nil, fmt.Errorf("VM %s is not running: a checkpoint with memory needs a running VM (qchain vm start %s)", vm.Name, vm.Name)
	}
	ctx := m.ctx()
	conn := ex.Live.Conn
	status, err := conn.QueryStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", vm.Name, err)
	}
	if status.Status != "running" && status.Status != "paused" {
		return nil, fmt.Errorf("VM %s is %s: a checkpoint needs a VM that runs or is paused", vm.Name, status.Status)
	}
	if mi, err := conn.QueryMigrate(ctx); err != nil {
		return nil, fmt.Errorf("VM %s: %w", vm.Name, err)
	} else if migrating(mi.Status) {
		return nil, fmt.Errorf("VM %s: a migration is in progress (%s)", vm.Name, mi.Status)
	}
	format := MemoryStream
	if ok, err := conn.HasMigrateCapability(ctx, qmp.CapMappedRAM); err != nil {
		return nil, fmt.Errorf("VM %s: %w", vm.Name, err)
	} else if ok {
		format = MemoryMappedRAM
	}
	memFile := memoryName(filepath.Dir(vm.Disks[0].Active), vm.Name, name)
	if format == MemoryMappedRAM && strings.Contains(memFile, ",") {
		return nil, fmt.Errorf("VM %s: the memory state file %s has a comma in its path, which a file: migration URI cannot carry", vm.Name, memFile)
	}

	final := clone(vm)
	snap := &Snapshot{Name: name, Parent: vm.Current, Created: m.now(), Description: o.Description,
		Memory: &MemoryState{File: memFile, Format: format, Running: status.Running}}
	j := &Journal{Op: "checkpoint", Snapshot: name, Started: m.now(), Live: true}
	save := Step{Kind: StepSaveMemory, File: memFile, Format: format, Live: o.Live,
		Why: "the RAM and device state of checkpoint " + name}
	if vm.NVRAM != "" {
		save.NVRAM = vm.NVRAM
		save.NVRAMCopy = strings.TrimSuffix(memFile, ".mem") + ".nvram"
		snap.Memory.NVRAM = save.NVRAMCopy
	}
	for i, d := range vm.Disks {
		ov := overlayName(filepath.Dir(d.Active), vm.Name, d.Target, name)
		j.Steps = append(j.Steps, Step{Kind: StepCreateOverlay, Target: d.Target, File: ov, Backing: relName(ov, d.Active), BackingFmt: formatOf(d.Active),
			Why: "new active image of " + d.Target + "; " + filepath.Base(d.Active) + " becomes read-only and holds the checkpoint's disk"})
		snap.Disks = append(snap.Disks, SnapshotDisk{Target: d.Target, File: d.Active})
		final.Disks[i].Active = ov
		final.Owned = append(final.Owned, ov)
		save.Targets = append(save.Targets, d.Target)
		save.Files = append(save.Files, ov)
	}
	j.Steps = append(j.Steps, save)
	if status.Running {
		j.Steps = append(j.Steps, Step{Kind: StepResume, Why: "the guest ran before the checkpoint"})
	}
	final.Snapshots = append(final.Snapshots, snap)
	final.Current = name
	j.Final = final

	err = l.run(j, ex, m.BeforeStep)
	var se *StepError
	switch {
	case err == nil:
	case errors.As(err, &se) && errors.Is(err, errMemoryLost):
		// The disks switched at the instant the memory was to be saved:
		// what they hold is a disk-only snapshot of that instant.
		j.Final.Snapshot(name).Memory = nil
		j.Steps[se.Index].Done = true
		os.Remove(memFile)
		if rerr := l.run(j, ex, m.BeforeStep); rerr != nil {
			return nil, rerr
		}
		return nil, fmt.Errorf("VM %s: checkpoint %s: %v; %s was kept as a disk-only snapshot", vm.Name, name, se.Err, name)
	case errors.As(err, &se):
		if rerr := m.rollbackCheckpoint(l, j, ex.Live, status.Running); rerr == nil {
			return nil, fmt.Errorf("VM %s: checkpoint %s not taken (nothing changed): step %d (%s): %w", vm.Name, name, se.Index+1, se.Step, se.Cause())
		}
		return nil, err
	default:
		return nil, err
	}
	if err := recordMemorySize(l, name); err != nil {
		return nil, err
	}
	return l.VM.Snapshot(name), nil
}

// migrating reports whether a migration status is one in progress.
func migrating(status string) bool {
	switch status {
	case qmp.MigrationSetup, qmp.MigrationActive, qmp.MigrationDevice, qmp.MigrationPreSwitchover, qmp.MigrationCancelling:
		return true
	}
	return false
}

// rollbackCheckpoint undoes a checkpoint whose save failed before any
// disk switched: the migration is cancelled, the overlays and the memory
// file removed, the guest resumed if it ran, the journal dropped.
func (m *Manager) rollbackCheckpoint(l *Locked, j *Journal, live *Live, wasRunning bool) error {
	ctx := m.ctx()
	var save Step
	for _, s := range j.Steps {
		if s.Kind == StepSaveMemory {
			save = s
		}
	}
	if mi, err := live.Conn.QueryMigrate(ctx); err == nil && migrating(mi.Status) {
		live.Conn.MigrateCancel(ctx)
		live.Conn.WaitMigration(ctx, qmp.MigrationCancelled, qmp.MigrationCompleted, qmp.MigrationFailed)
	}
	if err := m.rollbackCreate(l, j, live); err != nil {
		return err
	}
	if save.File != "" {
		os.Remove(save.File)
	}
	if save.NVRAMCopy != "" {
		os.Remove(save.NVRAMCopy)
	}
	if wasRunning {
		if st, err := live.Conn.QueryStatus(ctx); err == nil && !st.Running {
			return live.Conn.Cont(ctx)
		}
	}
	return nil
}

// switched reports whether every target already runs on its file of s.
func (l *Live) switched(ctx context.Context, s Step) (bool, error) {
	disks, err := l.runningChains(ctx)
	if err != nil {
		return false, err
	}
	for i, t := range s.Targets {
		d := findDisk(disks, t)
		if d == nil || len(d.Chain) == 0 {
			return false, fmt.Errorf("the running VM has no disk %s", t)
		}
		if !same(qmp.PlainFilename(d.Chain[0].Filename), s.Files[i]) {
			return false, nil
		}
	}
	return true, nil
}

// saveMemory runs StepSaveMemory; run again after an interruption it
// finishes the migration it finds (or starts it when there is none).
func (l *Live) saveMemory(ctx context.Context, s Step) error {
	err := l.saveMemorySteps(ctx, s)
	if qmp.IsClosed(err) {
		return fmt.Errorf("qemu exited during the save: %w", err)
	}
	return err
}

func (l *Live) saveMemorySteps(ctx context.Context, s Step) error {
	c := l.Conn
	mi, err := c.QueryMigrate(ctx)
	if err != nil {
		return err
	}
	sw, err := l.switched(ctx, s)
	if err != nil {
		return err
	}
	var keep *os.File // the stream's file, synced once QEMU is done
	defer func() {
		if keep != nil {
			keep.Close()
		}
	}()
	switch {
	case mi.Status == qmp.MigrationCompleted && sw:
		return syncFile(s.File) // done before an interruption
	case mi.Status == qmp.MigrationPreSwitchover, migrating(mi.Status):
		// An interrupted run's migration: carry it on.
	case sw:
		return fmt.Errorf("%w (the migration is %s)", errMemoryLost, dashStatus(mi.Status))
	default:
		caps := []qmp.MigrationCapability{{Capability: qmp.CapPauseBeforeSwitchover, State: true}, {Capability: qmp.CapEvents, State: true}}
		if ok, err := c.HasMigrateCapability(ctx, qmp.CapMappedRAM); err != nil {
			return err
		} else if ok {
			caps = append(caps, qmp.MigrationCapability{Capability: qmp.CapMappedRAM, State: s.Format == MemoryMappedRAM})
		} else if s.Format == MemoryMappedRAM {
			return fmt.Errorf("this QEMU has no %s migration capability", qmp.CapMappedRAM)
		}
		if err := c.MigrateSetCapabilities(ctx, caps); err != nil {
			return err
		}
		if !s.Live {
			if err := c.Stop(ctx); err != nil {
				return err
			}
		}
		f, err := os.OpenFile(s.File, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		keep = f
		uri := "fd:" + memoryFdName
		if s.Format == MemoryMappedRAM {
			uri = "file:" + s.File
		} else if err := c.GetFd(ctx, memoryFdName, f); err != nil {
			return err
		}
		if err := c.Migrate(ctx, uri); err != nil {
			return err
		}
	}
	if mi, err = c.WaitMigration(ctx, qmp.MigrationPreSwitchover, qmp.MigrationCompleted); err != nil {
		return err
	}
	if mi.Status == qmp.MigrationCompleted {
		return fmt.Errorf("the migration completed without pausing before the switchover")
	}
	// The vCPUs are stopped and the disks still active: the instant.
	if err := l.snapshot(ctx, Step{Kind: StepLiveSnapshot, Targets: s.Targets, Files: s.Files}); err != nil {
		c.MigrateCancel(ctx)
		return fmt.Errorf("switching the disks: %w", err)
	}
	if s.NVRAM != "" {
		// The vCPUs, the only writers of the variable store, are stopped.
		if err := copyFile(s.NVRAM, s.NVRAMCopy); err != nil {
			c.MigrateCancel(ctx)
			return fmt.Errorf("copying the NVRAM: %w", err)
		}
	}
	if err := c.MigrateContinue(ctx, qmp.MigrationPreSwitchover); err != nil {
		return fmt.Errorf("%w: migrate-continue: %v", errMemoryLost, err)
	}
	if _, err := c.WaitMigration(ctx, qmp.MigrationCompleted); err != nil {
		return fmt.Errorf("%w: %v", errMemoryLost, err)
	}
	if keep != nil {
		return keep.Sync()
	}
	return syncFile(s.File)
}

func dashStatus(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// syncFile flushes a file QEMU wrote to stable storage.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// resume runs StepResume: cont, with no query first (on a running VM
// cont does nothing, so a rerun is safe).
func (l *Live) resume(ctx context.Context) error { return l.Conn.Cont(ctx) }

// checkMemoryFile refuses a checkpoint's memory state file that is
// missing, shorter than when it was saved, or not a migration stream.
func checkMemoryFile(vm *VM, s *Snapshot) error {
	ms := s.Memory
	f, err := os.Open(ms.File)
	if err != nil {
		return fmt.Errorf("VM %s: checkpoint %s: memory state: %w", vm.Name, s.Name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if ms.Size > 0 && fi.Size() != ms.Size {
		return fmt.Errorf("VM %s: checkpoint %s: memory state %s is %d bytes, but %d were saved: it is truncated or was changed", vm.Name, s.Name, ms.File, fi.Size(), ms.Size)
	}
	magic := make([]byte, len(streamMagic))
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, streamMagic) {
		return fmt.Errorf("VM %s: checkpoint %s: memory state %s is not a QEMU migration stream", vm.Name, s.Name, ms.File)
	}
	return nil
}

// vmExecutor runs the steps that start the VM (StepLoadMemory) with the
// disks the operation leaves, and every other step as ex does.
type vmExecutor struct {
	ex    Executor
	m     *Manager
	final *VM
	// stopped: this run made sure that no qemu of the VM runs (it holds
	// the lock), so the step that starts one need not look for one a
	// killed run started.
	stopped bool
}

// carriedBitmaps is the inner executor's (see Offline.carriedBitmaps).
func (x *vmExecutor) carriedBitmaps() map[string][]string {
	if c, ok := x.ex.(interface{ carriedBitmaps() map[string][]string }); ok {
		return c.carriedBitmaps()
	}
	return nil
}

// Run implements Executor.
func (x *vmExecutor) Run(s Step) error {
	// QEMU's QMP socket takes one client at a time: a connection the
	// executor holds is the one to use.
	var conn *qmp.Conn
	if o, ok := x.ex.(*Offline); ok && o.Live != nil {
		conn = o.Live.Conn
	}
	switch s.Kind {
	case StepLoadMemory:
		return x.m.loadMemory(x.final, s, conn, x.stopped)
	case StepInternalLoad:
		return x.m.internalLoad(x.final, s, conn)
	}
	return x.ex.Run(s)
}

// loadMemory runs StepLoadMemory for vm (its disks as the operation
// leaves them); run again it finishes a load in progress or does only
// what is left. stopped says that no qemu of the VM runs: the run
// stopped them.
func (m *Manager) loadMemory(vm *VM, s Step, conn *qmp.Conn, stopped bool) error {
	ctx := m.ctx()
	var err error
	if conn == nil && !stopped {
		if conn, err = m.dialStarted(vm); err == nil {
			defer conn.Close()
		}
	}
	fresh := conn == nil
	if fresh {
		if s.NVRAMCopy != "" {
			if err := copyFile(s.NVRAMCopy, s.NVRAM); err != nil {
				return fmt.Errorf("restoring the NVRAM: %w", err)
			}
		}
		if conn, err = m.launch(vm, LaunchOptions{Incoming: true, noneRunning: stopped}, 0); err != nil {
			return err
		}
		defer conn.Close()
	}
	fail := func(err error) error {
		conn.Quit(context.Background())
		return fmt.Errorf("loading %s: %w: %s", s.File, err, m.logTail(vm.Name))
	}
	// A qemu this run started waits for its state (-incoming defer); one
	// found running (a rerun's) may be loading it or have loaded it.
	load, wait := fresh, fresh
	if !fresh {
		st, err := conn.QueryStatus(ctx)
		if err != nil {
			return fail(err)
		}
		if st.Status == "inmigrate" {
			mi, err := conn.QueryMigrate(ctx)
			if err != nil {
				return fail(err)
			}
			load, wait = !migrating(mi.Status) && mi.Status != qmp.MigrationCompleted, true
		}
	}
	if load {
		// MIGRATION events wake WaitMigration at the end of the load.
		caps := []qmp.MigrationCapability{{Capability: qmp.CapEvents, State: true}}
		if s.Format == MemoryMappedRAM {
			if ok, err := conn.HasMigrateCapability(ctx, qmp.CapMappedRAM); err != nil {
				return fail(err)
			} else if !ok {
				return fail(fmt.Errorf("the state was saved with %s (QEMU 9.0+), which this QEMU cannot load", qmp.CapMappedRAM))
			}
			caps = append(caps, qmp.MigrationCapability{Capability: qmp.CapMappedRAM, State: true})
		}
		if err := conn.MigrateSetCapabilities(ctx, caps); err != nil {
			return fail(err)
		}
		if s.Format == MemoryMappedRAM {
			if err := conn.MigrateIncoming(ctx, "file:"+s.File); err != nil {
				return fail(err)
			}
		} else {
			f, err := os.Open(s.File)
			if err != nil {
				return fail(err)
			}
			err = conn.GetFd(ctx, memoryFdName, f)
			f.Close() // QEMU holds its own copy
			if err != nil {
				return fail(err)
			}
			if err := conn.MigrateIncoming(ctx, "fd:"+memoryFdName); err != nil {
				return fail(err)
			}
		}
	}
	if wait {
		if _, err := conn.WaitMigration(ctx, qmp.MigrationCompleted); err != nil {
			if qmp.IsClosed(err) {
				err = errors.New("qemu exited")
			}
			return fail(err)
		}
	}
	if s.Paused {
		return nil
	}
	// cont on a running VM does nothing: no query first.
	return conn.Cont(ctx)
}

// revertCheckpoint reverts to checkpoint s with memory: the running VM
// (if it runs) quits, every disk gets a new overlay on s's files (a new
// branch, as a disk-only revert), and qemu starts from the VM's command
// line on them and loads s's memory state, so the guest runs on from
// s's instant (paused with o.Paused). The refusals are a disk-only
// revert's, and a VM without a command line or a bad memory state file is
// refused before anything stops.
func (m *Manager) revertCheckpoint(l *Locked, s *Snapshot, o RevertOptions) (*Plan, error) {
	vm := l.VM
	if len(vm.Command) == 0 {
		return nil, fmt.Errorf("VM %s has no qemu command line: qchain cannot start it to load checkpoint %s's memory (define it with `qchain vm define %s --disk ... -- QEMU-BINARY ARGS...`)", vm.Name, s.Name, vm.Name)
	}
	if err := checkMemoryFile(vm, s); err != nil {
		return nil, err
	}
	if n := s.Memory.NVRAM; n != "" && vm.NVRAM != "" {
		if _, err := os.Stat(n); err != nil {
			return nil, fmt.Errorf("VM %s: checkpoint %s: NVRAM copy: %w", vm.Name, s.Name, err)
		}
	}
	p, err := m.planRevert(vm, s, o.Force)
	if err != nil {
		return nil, err
	}
	if err := p.Final.checkCommand(); err != nil {
		return nil, err
	}
	if conn, err := DialVM(m.ctx(), vm); err == nil {
		// Quit at once: the current state is being discarded anyway.
		if err := m.stopQemuOn(vm, StopOptions{Force: true}, conn); err != nil {
			return nil, err
		}
		// Planned again without qemu: the files it held are free now.
		if p, err = m.planRevert(vm, s, o.Force); err != nil {
			return nil, err
		}
		p.Notes = append(p.Notes, "the running VM was stopped (quit)")
	} else if pids := qemuPIDs(vm); len(pids) > 0 {
		// A qemu of the VM whose socket does not answer (one a killed
		// qchain started): its state is discarded as well, and the
		// checkpoint's qemu must be the VM's only one.
		if err := m.killQemus(vm, 0); err != nil {
			return nil, err
		}
		os.Remove(m.Store.pidPath(vm.Name))
		if p, err = m.planRevert(vm, s, o.Force); err != nil {
			return nil, err
		}
		p.Notes = append(p.Notes, fmt.Sprintf("a qemu of the VM that did not answer (pid %v) was killed", pids))
	}
	// The memory loads before any file is removed: a state QEMU cannot
	// load is rolled back with nothing lost.
	var steps, removes []Step
	for _, st := range p.Steps {
		if st.Kind == StepRemove {
			removes = append(removes, st)
		} else {
			steps = append(steps, st)
		}
	}
	load := Step{Kind: StepLoadMemory, File: s.Memory.File, Format: s.Memory.Format, Paused: o.Paused,
		Why: "the guest runs on from checkpoint " + s.Name}
	if s.Memory.NVRAM != "" && vm.NVRAM != "" {
		load.NVRAM, load.NVRAMCopy = vm.NVRAM, s.Memory.NVRAM
	}
	steps = append(steps, load)
	p.Steps = append(steps, removes...)
	j := &Journal{Op: "revert", Snapshot: s.Name, Started: m.now(), Steps: p.Steps, Final: p.Final}
	// No qemu of the VM runs now, and none can start while the lock is
	// held.
	ex := &vmExecutor{ex: &Offline{Ctx: m.ctx(), StorageDaemon: m.StorageDaemon}, m: m, final: p.Final, stopped: true}
	err = l.run(j, ex, m.BeforeStep)
	var se *StepError
	if errors.As(err, &se) && se.Step.Kind == StepLoadMemory {
		if rerr := m.rollbackLoad(l, j); rerr == nil {
			return nil, fmt.Errorf("VM %s: checkpoint %s: %v; nothing changed (the VM is stopped)", vm.Name, s.Name, se.Err)
		}
	}
	return p, err
}

// rollbackLoad undoes a revert whose memory state did not load: qemu (if
// it still runs) quits, the new overlays are removed, the journal dropped.
// No file was removed yet (the load comes first).
func (m *Manager) rollbackLoad(l *Locked, j *Journal) error {
	if m.Answers(j.Final) {
		if err := m.stopQemu(j.Final, StopOptions{Force: true}); err != nil {
			return err
		}
	}
	if err := m.killQemus(j.Final, 0); err != nil {
		return err
	}
	os.Remove(m.Store.pidPath(j.Final.Name))
	for _, s := range j.Steps {
		if s.Kind == StepRemove && s.Done {
			return fmt.Errorf("%s was removed", s.File)
		}
	}
	return removeOverlaysAndJournal(l, j)
}

// copyFile replaces dst with a copy of src (temp file, fsync, rename),
// keeping dst's permissions (src's for a new file).
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(dst)
	if err != nil {
		if fi, err = os.Stat(src); err != nil {
			return err
		}
	}
	if err := writeAtomic(dst, b); err != nil {
		return err
	}
	return os.Chmod(dst, fi.Mode().Perm())
}
