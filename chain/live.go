package chain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/qchain/qchain/qmp"
)

// Live runs steps that touch a running VM's disks through its QMP monitor.
// A Live serves one operation, and is not safe for concurrent use.
type Live struct {
	Conn *qmp.Conn
	// Progress, when set, receives each job's progress.
	Progress func(s Step, current, total int64)

	// disks are the running disks as last read, while cached.
	disks  []qmp.Disk
	cached bool
	// tops are the running backends with their top layers only
	// (qmp.DiskTops), while topsCached.
	tops       []qmp.Disk
	topsCached bool
	// streaming: mapped-ram is known off (streamCaps ran on Conn).
	streaming bool
	// carried holds, by disk target, the bitmaps snapshot moved to new
	// overlays.
	carried map[string][]string
}

// DialVM connects to a VM's QMP socket; an error means it is not running
// (or the socket is not a QMP monitor).
func DialVM(ctx context.Context, vm *VM) (*qmp.Conn, error) {
	if vm.QMP == "" {
		return nil, fmt.Errorf("VM %s has no QMP socket", vm.Name)
	}
	if _, err := os.Stat(vm.QMP); err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return qmp.Dial(dctx, vm.QMP, qmp.Options{})
}

// runningChains returns, per disk of the running VM, its layers top first.
// It reads them from QEMU once, and again only after Live itself changed
// QEMU's graph (changed): each read is four QMP round trips, and an
// operation looks up its files a dozen times, which on a loaded host
// added seconds to every operation and to the time a quiesced guest stays
// frozen. Nothing else changes the graph of a VM qchain works on: the
// operation holds the VM's lock, and verify compared QEMU's disks with the
// metadata when it started.
func (l *Live) runningChains(ctx context.Context) ([]qmp.Disk, error) {
	if l.cached {
		return l.disks, nil
	}
	disks, err := qmp.DiskChains(ctx, l.Conn)
	if err != nil {
		return nil, err
	}
	l.disks, l.cached = disks, true
	return disks, nil
}

// changed forgets the running disks read so far, after Live sent QEMU a
// command that changes its graph (whether it succeeded or not).
func (l *Live) changed() {
	l.disks, l.cached = nil, false
	l.tops, l.topsCached = nil, false
}

// runningTops returns the running backends with their top layers only,
// from one query (qmp.DiskTops), or the full chains when those are read
// already or a filter sits on a top. What is true of a top in one is true
// in the other.
func (l *Live) runningTops(ctx context.Context) ([]qmp.Disk, error) {
	if l.cached {
		return l.disks, nil
	}
	if l.topsCached {
		return l.tops, nil
	}
	tops, ok, err := qmp.DiskTops(ctx, l.Conn)
	if err != nil {
		return nil, err
	}
	if !ok {
		return l.runningChains(ctx)
	}
	l.tops, l.topsCached = tops, true
	return tops, nil
}

// topFor finds the running guest disk whose top layer is file, from the
// tops alone; nil when file is no such top.
func (l *Live) topFor(ctx context.Context, file string) (*qmp.Disk, error) {
	tops, err := l.runningTops(ctx)
	if err != nil {
		return nil, err
	}
	for i := range tops {
		if attached(&tops[i]) && len(tops[i].Chain) > 0 && same(qmp.PlainFilename(tops[i].Chain[0].Filename), file) {
			return &tops[i], nil
		}
	}
	return nil, nil
}

// diskFor finds the running disk whose chain holds file, and the index of
// the layer.
func (l *Live) diskFor(ctx context.Context, file string) (*qmp.Disk, int, error) {
	disks, err := l.runningChains(ctx)
	if err != nil {
		return nil, 0, err
	}
	st, err := os.Stat(file)
	if err != nil {
		return nil, 0, err
	}
	// Guest disks first: after a pivot, a -blockdev node the user made
	// stays a root of its own with the old chain, holding the same files.
	for _, guest := range []bool{true, false} {
		for i := range disks {
			if attached(&disks[i]) != guest {
				continue
			}
			for j, layer := range disks[i].Chain {
				if lst, err := os.Stat(qmp.PlainFilename(layer.Filename)); err == nil && os.SameFile(st, lst) {
					return &disks[i], j, nil
				}
			}
		}
	}
	return nil, -1, nil
}

// attached reports whether a running disk is a guest's disk (a backend or
// a device), not a node left over as a root of its own.
func attached(d *qmp.Disk) bool { return d.Device != "" || d.QDev != "" }

// run handles the steps that concern files open in the running VM.
// handled is false for steps that do not (they run offline).
func (l *Live) run(ctx context.Context, s Step) (handled bool, err error) {
	switch s.Kind {
	case StepLiveSnapshot:
		return true, l.snapshot(ctx, s)
	case StepCarryBitmaps:
		// A running VM's overlays took the bitmaps over in the switch's
		// transaction. An offline create recovered while the VM runs
		// leaves them where they are: their user sees them missing on
		// the active image and does not trust them.
		if d, _, err := l.diskFor(ctx, s.File); err == nil && d != nil {
			return true, nil
		}
	case StepSaveMemory:
		return true, l.saveMemory(ctx, s)
	case StepResume:
		return true, l.resume(ctx)
	case StepInternalSave:
		return true, l.internalSave(ctx, s)
	case StepInternalSnapshot:
		return true, l.internalSnapshot(ctx, s)
	case StepInternalApply:
		return true, fmt.Errorf("the VM is running: reverting its disks under a live guest corrupts them; stop it first")
	case StepInternalDelete:
		for _, f := range s.Files {
			if d, _, err := l.diskFor(ctx, f); err != nil || d == nil {
				return false, nil // not open in the VM: offline
			}
		}
		return true, l.internalDelete(ctx, s)
	case StepPull:
		d, idx, err := l.diskFor(ctx, s.File)
		if err != nil || d == nil {
			return false, nil
		}
		js := qmp.BlockStream{JobID: qmp.JobID("pull", d.Name()), Device: d.Chain[idx].NodeName}
		if s.Base != "" {
			_, bidx, err := l.diskFor(ctx, s.Base)
			if err != nil {
				return true, err
			}
			if bidx < 0 {
				return true, fmt.Errorf("%s is not in the running chain of %s", s.Base, d.Name())
			}
			js.BaseNode = d.Chain[bidx].NodeName
			js.BackingFile = s.Backing
		}
		if err := l.keepBitmaps(ctx, d, idx+1, s.Base); err != nil {
			return true, err
		}
		defer l.changed()
		return true, l.wait(ctx, s, js)
	case StepCommit:
		d, idx, err := l.diskFor(ctx, s.Top)
		if err != nil || d == nil {
			return false, nil
		}
		if idx+1 >= len(d.Chain) {
			return true, fmt.Errorf("%s has no backing file in the running VM", s.Top)
		}
		jc := qmp.BlockCommit{JobID: qmp.JobID("commit", d.Name()), Device: d.Chain[0].NodeName, BaseNode: d.Chain[idx+1].NodeName}
		defer l.changed()
		if idx == 0 {
			// An active commit: nothing is left to decide after
			// job-complete, so QEMU finalizes (see qmp.BlockCommit).
			jc.AutoFinalize = qmp.Bool(true)
			return true, l.activeCommit(ctx, s, jc, d.Chain[0].NodeName, d.Chain[1].NodeName)
		}
		jc.TopNode = d.Chain[idx].NodeName
		// Name the base in the header of the image above as qchain
		// names backing files (else qemu writes a json: name).
		jc.BackingFile = relName(qmp.PlainFilename(d.Chain[idx-1].Filename), s.Base)
		if err := l.keepBitmaps(ctx, d, idx, s.Base); err != nil {
			return true, err
		}
		return true, l.wait(ctx, s, jc)
	case StepRebase:
		// A file the running VM has open is rewritten by qemu itself (the
		// job above it recorded the new backing name); the step is done.
		d, _, err := l.diskFor(ctx, s.File)
		if err == nil && d != nil {
			return true, nil
		}
	case StepRemove:
		for {
			d, _, err := l.diskFor(ctx, s.File)
			if err != nil || d == nil {
				break
			}
			if attached(d) || !strings.HasPrefix(d.NodeName, "qchain-") {
				return true, fmt.Errorf("refusing to remove %s: the running VM still uses it", s.File)
			}
			// An overlay node qchain added, left as a root once a commit
			// or pull took it out of the disk's chain: delete the node.
			err = l.Conn.BlockdevDel(ctx, d.NodeName)
			l.changed()
			if err != nil {
				return true, fmt.Errorf("removing %s: deleting its node %s: %w", s.File, d.NodeName, err)
			}
		}
	}
	return false, nil
}

// checkExports refuses the commits and pulls among steps that would run
// on a disk of the running VM (deleting snapshot name of vm) while a block
// export on one of its nodes can write to it, or may (qmp.CheckExports):
// QEMU 7.2 and 10.0 lose writes that an export's new clients make while a
// job changes the disk's chain (qmp.ExportError says how). Steps on files
// the VM does not have open run offline and are not concerned.
func (l *Live) checkExports(ctx context.Context, vm *VM, name string, steps []Step) error {
	checked := make(map[string]bool)
	for _, s := range steps {
		file := s.File
		switch s.Kind {
		case StepCommit:
			file = s.Top
		case StepPull:
		default:
			continue
		}
		d, _, err := l.diskFor(ctx, file)
		if err != nil {
			return fmt.Errorf("VM %s disk %s: %w", vm.Name, s.Target, err)
		}
		if d == nil || checked[d.Name()] {
			continue
		}
		checked[d.Name()] = true
		err = qmp.CheckExports(ctx, l.Conn, *d)
		var ee *qmp.ExportError
		switch {
		case errors.As(err, &ee):
			return fmt.Errorf("VM %s disk %s: refusing to delete snapshot %s while the VM runs: %w, and QEMU loses writes that an export's clients make while a job changes the disk's chain; remove the export (QMP block-export-del) or add --force-export",
				vm.Name, s.Target, name, err)
		case err != nil:
			return fmt.Errorf("VM %s disk %s: reading the block exports: %w", vm.Name, s.Target, err)
		}
	}
	return nil
}

func (l *Live) wait(ctx context.Context, s Step, js qmp.JobStarter) error {
	job, err := qmp.StartJob(ctx, l.Conn, js)
	if err != nil {
		return err
	}
	opts := qmp.WaitOptions{OnReady: qmp.ReadyPivot}
	if l.Progress != nil {
		opts.Progress = func(cur, total int64) { l.Progress(s, cur, total) }
	}
	_, err = job.Wait(ctx, opts)
	return err
}

// activeCommit runs an active commit of node top into node base. When
// the job is ready (the data is in base, writable under the job, and
// every guest write goes on being copied there until the switch), top's
// bitmaps are merged into base's, added there where missing, and enabled
// where top's record, before job-complete makes base the active image.
func (l *Live) activeCommit(ctx context.Context, s Step, jc qmp.BlockCommit, top, base string) error {
	job, err := qmp.StartJob(ctx, l.Conn, jc)
	if err != nil {
		return err
	}
	opts := qmp.WaitOptions{OnReady: qmp.ReadyReturn}
	if l.Progress != nil {
		opts.Progress = func(cur, total int64) { l.Progress(s, cur, total) }
	}
	if _, err := job.Wait(ctx, opts); err != nil {
		return err
	}
	if err := mergeBitmaps(ctx, l.Conn, []string{top}, base, true, true); err != nil {
		// No switch: top stays active with its bitmaps.
		job.Wait(ctx, qmp.WaitOptions{OnReady: qmp.ReadyCancel})
		return err
	}
	opts.OnReady = qmp.ReadyPivot
	_, err = job.Wait(ctx, opts)
	return err
}

// keepBitmaps merges, before a pull or a commit that is not an active
// commit runs on running disk d, the persistent bitmaps of the layers it
// removes (from index from down to, not including, file base; "" for
// all) into the same-named bitmaps of the active image: the layer that
// survives is a read-only backing node, and the active image is the one
// writable layer of the chain. The union of a name over the chain so
// still holds every write it recorded (and more: the active image's
// bitmap now marks writes older than the snapshot). Names the active
// image lacks are not kept: their union was broken already.
func (l *Live) keepBitmaps(ctx context.Context, d *qmp.Disk, from int, base string) error {
	var removed []string
	for _, layer := range d.Chain[from:] {
		if base != "" && same(qmp.PlainFilename(layer.Filename), base) {
			break
		}
		removed = append(removed, layer.NodeName)
	}
	return mergeBitmaps(ctx, l.Conn, removed, d.Chain[0].NodeName, false, false)
}

// snapshot adds the prepared overlays and makes them active in one
// transaction; if they already are (a step run again), it does nothing.
func (l *Live) snapshot(ctx context.Context, s Step) error {
	if err := ctx.Err(); err != nil {
		return err // cancelled: change nothing more
	}
	disks, err := l.runningChains(ctx)
	if err != nil {
		return err
	}
	defer l.changed()
	// The bitmaps recording into the old active images go on recording
	// in the new ones from the instant of the switch (see bitmaps.go).
	bitmaps, err := l.Conn.NodeBitmaps(ctx)
	if err != nil {
		return fmt.Errorf("reading the dirty bitmaps: %w", err)
	}
	var actions, bitmapActions []qmp.TransactionAction
	var added []string
	switched := map[string]string{} // target -> its old active node
	undo := func() {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		for _, n := range added {
			l.Conn.BlockdevDel(cctx, n)
		}
	}
	for i, target := range s.Targets {
		file := s.Files[i]
		d := findDisk(disks, target)
		if d == nil {
			undo()
			return fmt.Errorf("the running VM has no disk %s", target)
		}
		if same(qmp.PlainFilename(d.Chain[0].Filename), file) {
			continue
		}
		node := qmp.NodeName("snap", target+"-"+file)
		err := l.Conn.BlockdevAdd(ctx, map[string]any{
			"driver": "qcow2", "node-name": node, "backing": nil,
			"file": map[string]any{"driver": "file", "filename": file},
		})
		switch {
		case err != nil && strings.Contains(err.Error(), "Duplicate"):
			// Added by an interrupted run of this step: use it.
		case err != nil:
			var qe *qmp.Error
			if !errors.As(err, &qe) {
				// No answer (cancelled, or QEMU went away): the node
				// may have been added all the same.
				added = append(added, node)
			}
			undo()
			return fmt.Errorf("adding overlay %s: %w", file, err)
		default:
			added = append(added, node)
		}
		actions = append(actions, qmp.TransactionAction{Type: "blockdev-snapshot", Data: map[string]any{"node": d.Chain[0].NodeName, "overlay": node}})
		switched[target] = d.Chain[0].NodeName
		bitmapActions = append(bitmapActions, carryActions(d.Chain[0].NodeName, bitmaps[d.Chain[0].NodeName], node, bitmaps[node])...)
	}
	if len(actions) == 0 {
		return nil
	}
	if err := l.Conn.Transaction(ctx, append(bitmapActions, actions...), nil); err != nil {
		undo()
		return err
	}
	for target, node := range switched {
		l.carried = noteCarried(l.carried, target, carried(bitmaps[node]))
	}
	return nil
}

// findDisk finds a VM disk's target among qemu's disks: a -drive id, a
// device's id or QOM path (what a -blockdev VM's disk is known by: its
// top node changes with every snapshot), or a node name.
func findDisk(disks []qmp.Disk, target string) *qmp.Disk {
	for i := range disks {
		d := &disks[i]
		if d.Name() == target || d.Device == target || d.QDev == target || d.NodeName == target ||
			(d.QDev != "" && qmp.QDevID(d.QDev) == target) {
			return d
		}
	}
	return nil
}

func same(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// verify compares the running VM with the metadata: each disk of the VM
// must be a disk of qemu whose active image is the one the metadata names.
func (l *Live) verify(ctx context.Context, vm *VM) error {
	// The backends' tops tell it in one query; a disk they do not show
	// (a -blockdev tree no backend uses) needs the full chains.
	disks, err := l.runningTops(ctx)
	if err == nil && slices.ContainsFunc(vm.Disks, func(d Disk) bool { return findDisk(disks, d.Target) == nil }) {
		disks, err = l.runningChains(ctx)
	}
	if err != nil {
		return fmt.Errorf("VM %s: reading the running disks: %w", vm.Name, err)
	}
	for _, d := range vm.Disks {
		rd := findDisk(disks, d.Target)
		if rd == nil || len(rd.Chain) == 0 {
			return fmt.Errorf("VM %s: the running qemu has no disk %s", vm.Name, d.Target)
		}
		if top := qmp.PlainFilename(rd.Chain[0].Filename); !same(top, d.Active) {
			return fmt.Errorf("VM %s disk %s: the running qemu writes to %s, but the metadata says %s: the disks changed behind qchain's back", vm.Name, d.Target, top, d.Active)
		}
	}
	return nil
}

// RunningDisk finds the running disk of a VM disk's target among qemu's
// disks (qmp.DiskChains) as the live executor does: by -drive id, device
// id or QOM path, or node name. It returns nil when there is none.
func RunningDisk(disks []qmp.Disk, target string) *qmp.Disk { return findDisk(disks, target) }

// SameFile reports whether a and b name the same existing file.
func SameFile(a, b string) bool { return same(a, b) }
