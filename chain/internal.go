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

// Job ids of the internal snapshot jobs (one at a time per VM, under its
// lock, so a rerun finds the job an interrupted one left).
const (
	internalSaveJob   = "qchain-snapshot-save"
	internalLoadJob   = "qchain-snapshot-load"
	internalDeleteJob = "qchain-snapshot-delete"
)

// CreateInternalCheckpoint takes checkpoint name of the running VM inside
// its images: a qcow2 internal snapshot tagged name in every disk's
// active image, the RAM and device state in the first one (QMP
// snapshot-save, QEMU 6.0+: the vCPUs are stopped for the whole save).
// No overlay is created; the snapshot's files are the active images.
func (m *Manager) CreateInternalCheckpoint(vmName, name string, o CheckpointOptions) (*Snapshot, error) {
	if o.Live {
		return nil, fmt.Errorf("an internal checkpoint cannot be live: QEMU stops the vCPUs for the whole save")
	}
	// The run state and the capabilities the save needs are read with
	// the check of the running disks, in the same round trips.
	var st *qmp.StatusInfo
	l, ex, release, err := m.openCreate(vmName, name,
		func(live *Live) (err error) {
			if st, err = live.Conn.QueryStatus(m.ctx()); err != nil {
				return fmt.Errorf("VM %s: %w", vmName, err)
			}
			return nil
		},
		func(live *Live) error {
			if err := live.streamCaps(m.ctx()); err != nil {
				return fmt.Errorf("VM %s: %w", vmName, err)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	defer release()
	vm := l.VM
	if ex.Live == nil {
		return nil, fmt.Errorf("VM %s is not running: a checkpoint with memory needs a running VM (qchain vm start %s)", vm.Name, vm.Name)
	}
	step := Step{Kind: StepInternalSave, Tag: name, File: vm.Disks[0].Active, Why: "internal checkpoint " + name}
	final := clone(vm)
	snap := &Snapshot{Name: name, Parent: vm.Current, Created: m.now(), Description: o.Description, Internal: true,
		Memory: &MemoryState{File: vm.Disks[0].Active, Format: MemoryInternal, Running: st.Running}}
	for _, d := range vm.Disks {
		// The image's own tags, not only the metadata's: a tag qemu-img
		// took would pass internalSave's rerun check for a save done.
		if err := canTagInternal(vm, d, name); err != nil {
			return nil, err
		}
		step.Targets = append(step.Targets, d.Target)
		step.Files = append(step.Files, d.Active)
		snap.Disks = append(snap.Disks, SnapshotDisk{Target: d.Target, File: d.Active})
	}
	final.Snapshots = append(final.Snapshots, snap)
	final.Current = name
	j := &Journal{Op: "checkpoint", Snapshot: name, Started: m.now(), Live: true, Steps: []Step{step}, Final: final}
	if err := l.run(j, ex, m.BeforeStep); err != nil {
		var se *StepError
		if errors.As(err, &se) && !imageHasTag(step.Files[0], name) {
			if derr := l.dropJournal(); derr == nil {
				return nil, fmt.Errorf("VM %s: checkpoint %s not taken (nothing changed): %w", vm.Name, name, se.Cause())
			}
		}
		return nil, err
	}
	return l.VM.Snapshot(name), nil
}

// snapshotWithTag names the internal snapshot of vm kept in file under
// tag, or "".
func snapshotWithTag(vm *VM, file, tag string) string {
	for _, s := range vm.Snapshots {
		if s.Internal && s.Name == tag && slices.ContainsFunc(s.Disks, func(d SnapshotDisk) bool { return same(d.File, file) }) {
			return s.Name
		}
	}
	return ""
}

// imageHasTag reports whether image file holds internal snapshot tag, as
// the file says: QEMU writes a new snapshot table before the header that
// points to it, so the file is right also while QEMU has it open (and
// reading it costs no round trip to a running VM). A file that cannot be
// read has no tag.
func imageHasTag(file, tag string) bool {
	tags, err := tagsIn(file)
	return err == nil && slices.Contains(tags, tag)
}

// nodesOf returns the running VM's format node of each file.
func (l *Live) nodesOf(ctx context.Context, files []string) ([]string, error) {
	var out []string
	for _, f := range files {
		// A guest disk's top from the tops alone: the full search finds
		// it first too.
		if d, err := l.topFor(ctx, f); err != nil {
			return nil, err
		} else if d != nil {
			out = append(out, d.Chain[0].NodeName)
			continue
		}
		d, idx, err := l.diskFor(ctx, f)
		if err != nil {
			return nil, err
		}
		if d == nil {
			return nil, fmt.Errorf("the running VM does not have %s open", f)
		}
		out = append(out, d.Chain[idx].NodeName)
	}
	return out, nil
}

// runJob starts a job (or attaches to the one an interrupted run left
// under the same id) and waits for it.
func (l *Live) runJob(ctx context.Context, js qmp.JobStarter, id string) error {
	// Started first: QEMU refuses a job id in use ("Job ID '...' already
	// in use"), which only a rerun finds; one query fewer on every run.
	job, err := qmp.StartJob(ctx, l.Conn, js)
	if err != nil && strings.Contains(err.Error(), "already in use") {
		job, err = qmp.AttachJob(ctx, l.Conn, id)
	}
	if err != nil {
		return err
	}
	_, err = job.Wait(ctx, qmp.WaitOptions{})
	return err
}

// finishLeftover waits for and dismisses job id, which an interrupted run
// of a step left in qemu, when the rerun finds the step's work done and
// starts no job. QEMU never dismisses the snapshot jobs by itself, and
// the next operation's runJob would attach to the leftover under the
// same id and take its success for its own, doing nothing.
func (l *Live) finishLeftover(ctx context.Context, id string) error {
	job, err := qmp.AttachJob(ctx, l.Conn, id)
	if errors.Is(err, qmp.ErrJobNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = job.Wait(ctx, qmp.WaitOptions{})
	return err
}

// internalSave runs StepInternalSave; run again it does nothing when the
// tag is there already.
func (l *Live) internalSave(ctx context.Context, s Step) error {
	if imageHasTag(s.File, s.Tag) {
		return l.finishLeftover(ctx, internalSaveJob)
	}
	nodes, err := l.nodesOf(ctx, append([]string{s.File}, s.Files...))
	if err != nil {
		return err
	}
	if err := l.streamCaps(ctx); err != nil {
		return err
	}
	return l.runJob(ctx, qmp.SnapshotSave{JobID: internalSaveJob, Tag: s.Tag, VMState: nodes[0], Devices: nodes[1:]}, internalSaveJob)
}

// internalDelete runs StepInternalDelete on the running VM's images.
func (l *Live) internalDelete(ctx context.Context, s Step) error {
	var files []string
	for _, f := range s.Files {
		if imageHasTag(f, s.Tag) {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return l.finishLeftover(ctx, internalDeleteJob)
	}
	nodes, err := l.nodesOf(ctx, files)
	if err != nil {
		return err
	}
	return l.runJob(ctx, qmp.SnapshotDelete{JobID: internalDeleteJob, Tag: s.Tag, Devices: nodes}, internalDeleteJob)
}

// internalDeleteOffline runs StepInternalDelete on images no process has
// open.
func (o *Offline) internalDeleteOffline(s Step) error {
	for _, f := range s.Files {
		snaps, err := imagesnap.List(f, "qcow2")
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(snaps, func(i qcow2.SnapshotInfo) bool { return i.Name == s.Tag }) {
			continue
		}
		if _, err := imagesnap.Delete(o.ctx(), f, s.Tag, imagesnap.Options{StorageDaemon: o.StorageDaemon}); err != nil {
			return err
		}
	}
	return nil
}

// revertInternal reverts to internal checkpoint s: its images must still
// be the disks' active images (a later external snapshot made them
// read-only backing files). o.Force is required when a disk's current
// state is no snapshot's (currentKept: the image's active L1 table is no
// internal snapshot's); the RAM since s is not counted, as for an
// external checkpoint. A running VM loads s with snapshot-load; a stopped
// one is started with -loadvm.
func (m *Manager) revertInternal(l *Locked, s *Snapshot, o RevertOptions) (*Plan, error) {
	vm := l.VM
	if err := Verify(vm); err != nil {
		return nil, err
	}
	step := Step{Kind: StepInternalLoad, Tag: s.Name, File: s.Memory.File, Paused: o.Paused, Why: "the guest runs on from internal checkpoint " + s.Name}
	for _, d := range vm.Disks {
		if !same(s.File(d.Target), d.Active) {
			return nil, fmt.Errorf("VM %s disk %s: internal checkpoint %s lives in %s, which is no longer the active image (%s): it can be reverted only while its images are active", vm.Name, d.Target, s.Name, s.File(d.Target), d.Active)
		}
		step.Targets = append(step.Targets, d.Target)
		step.Files = append(step.Files, d.Active)
	}
	if err := checkCurrentKept(vm, o.Force, func(string, string) bool { return true }); err != nil {
		return nil, err
	}
	// One connection tells whether the VM runs and loads the checkpoint.
	ex, done, err := m.executor(vm)
	if err != nil {
		return nil, err
	}
	defer done()
	live := ex.Live != nil
	if !live && len(vm.Command) == 0 {
		return nil, fmt.Errorf("VM %s is not running and has no qemu command line: qchain cannot start it to load internal checkpoint %s", vm.Name, s.Name)
	}
	final := clone(vm)
	final.Current = s.Name
	final.LastRevert = &Revert{Snapshot: s.Name, Time: m.now()}
	p := &Plan{VM: vm.Name, Op: "revert", Snapshot: s.Name, Steps: []Step{step}, Final: final, Before: map[string]string{}, After: map[string]string{}}
	j := &Journal{Op: "revert", Snapshot: s.Name, Started: m.now(), Steps: p.Steps, Final: final, Live: live}
	return p, l.run(j, &vmExecutor{ex: ex, m: m, final: final}, m.BeforeStep)
}

// internalLoad runs StepInternalLoad for vm.
func (m *Manager) internalLoad(vm *VM, s Step, conn *qmp.Conn) error {
	ctx := m.ctx()
	if conn == nil {
		c, err := m.dialStarted(vm)
		if err != nil {
			c, err = m.launch(vm, LaunchOptions{LoadVM: s.Tag, Paused: s.Paused}, 0)
			if err != nil {
				return err
			}
			c.Close()
			return nil
		}
		defer c.Close()
		conn = c
	}
	live := &Live{Conn: conn}
	if s.Paused {
		if err := conn.Stop(ctx); err != nil {
			return err
		}
	}
	// The nodes and the capabilities in one round of queries.
	var nodes []string
	if err := qmp.Together(
		func() (err error) { nodes, err = live.nodesOf(ctx, append([]string{s.File}, s.Files...)); return err },
		func() error { return live.streamCaps(ctx) },
	); err != nil {
		return err
	}
	if err := live.runJob(ctx, qmp.SnapshotLoad{JobID: internalLoadJob, Tag: s.Tag, VMState: nodes[0], Devices: nodes[1:]}, internalLoadJob); err != nil {
		return err
	}
	if s.Paused {
		return nil
	}
	return live.resume(ctx)
}

// streamCaps turns mapped-ram off when it is on: snapshot-save and
// snapshot-load write and read the state as a stream inside the image,
// which mapped-ram's fixed offsets cannot be ("Error while writing VM
// state"), and the load of an external checkpoint saved with mapped-ram
// leaves it on in the qemu it started.
func streamCaps(ctx context.Context, c *qmp.Conn) error {
	if v := c.Greeting().Version.QEMU; v.Major > 0 && v.Major < 9 {
		// mapped-ram came with QEMU 9.0: nothing to ask an older one
		// (one round trip less, which waits for QEMU's main loop).
		return nil
	}
	caps, err := c.QueryMigrateCapabilities(ctx)
	if err != nil {
		return err
	}
	for _, cp := range caps {
		if cp.Capability == qmp.CapMappedRAM && cp.State {
			return c.MigrateSetCapabilities(ctx, []qmp.MigrationCapability{{Capability: qmp.CapMappedRAM, State: false}})
		}
	}
	return nil
}

// streamCaps is streamCaps on l's connection, once.
func (l *Live) streamCaps(ctx context.Context) error {
	if l.streaming {
		return nil
	}
	if err := streamCaps(ctx, l.Conn); err != nil {
		return err
	}
	l.streaming = true
	return nil
}
