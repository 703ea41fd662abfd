package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// CreateOptions configure Create. The zero value makes an incremental
// point when it can, at full speed, with the storage daemon from PATH.
type CreateOptions struct {
	// Full makes a full point even when an incremental one could be made.
	Full bool
	// Speed limits each disk's copy, in bytes per second; 0 is no limit.
	Speed int64
	// StorageDaemon is the qemu-storage-daemon program for offline
	// backups; empty means the one in PATH.
	StorageDaemon string
	// Progress, when set, receives each disk's job progress.
	Progress func(target string, current, total int64)
	// Notes, when set, receives one-line notes: leftovers removed, why a
	// point is full.
	Notes io.Writer
	// Now returns the time recorded in the point (tests fix it).
	Now func() time.Time
	// BeforeStep is a test hook: when set, it is called with the step's
	// name before each step that leaves a trace outside the process (a
	// file, a node, a job, a bitmap, the index). When it returns an
	// error, Create stops there as if its process had died: nothing is
	// cleaned up, a storage daemon it started is killed (as Pdeathsig
	// kills it when qchain dies) and a live qemu keeps what it holds;
	// Create returns that error. Tests crash a run at every step this
	// way and check what the next run makes of it.
	BeforeStep func(step string) error
}

func (o *CreateOptions) note(format string, args ...any) {
	if o.Notes != nil {
		fmt.Fprintf(o.Notes, format+"\n", args...)
	}
}

// Create backs up every disk of the VM named vmName (of the snapshot
// manager's store) to dir as one new point in time, and returns it. dir is
// made when missing; a folder that is not empty must be a backup folder
// of the same VM. The VM's lock is held throughout, so no snapshot
// operation changes its disks meanwhile.
func Create(ctx context.Context, store *chain.Store, vmName, dir string, opts CreateOptions) (*Point, error) {
	locked, err := store.Lock(vmName, false)
	if err != nil {
		return nil, err
	}
	defer locked.Unlock()
	vm := locked.VM
	if len(vm.Disks) > MaxDisks {
		return nil, fmt.Errorf("VM %s has %d disks, more than %d", vm.Name, len(vm.Disks), MaxDisks)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	x, err := ReadIndex(dir)
	switch {
	case errors.Is(err, ErrNoIndex):
		if err := checkFresh(dir); err != nil {
			return nil, err
		}
		id, err := newID()
		if err != nil {
			return nil, err
		}
		x = &Index{Version: IndexVersion, VM: vm.Name, ID: id}
	case err != nil:
		return nil, err
	case x.VM != vm.Name:
		return nil, fmt.Errorf("%s holds backups of VM %s, not of VM %s: use another folder", dir, x.VM, vm.Name)
	case x.Merging != 0:
		return nil, fmt.Errorf("%s: a merge into point %d was interrupted: run `qchain backup merge` on it again first", dir, x.Merging)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	removed, err := removeLeftovers(dir, x)
	if err != nil {
		return nil, fmt.Errorf("%s: removing what an interrupted backup left: %w", dir, err)
	}
	if len(removed) > 0 {
		opts.note("%s: an interrupted run left %s: removed", dir, strings.Join(removed, ", "))
	}

	s, err := openSession(ctx, vm, opts.StorageDaemon, BitmapPrefix(x.ID))
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			s.close()
		}
	}()
	// step calls the test hook; an error is a crash (no cleanup).
	step := func(name string) error {
		if opts.BeforeStep == nil {
			return nil
		}
		err := opts.BeforeStep(name)
		if err != nil {
			closed = true
			s.crash()
		}
		return err
	}
	if s.live {
		// A qchain killed during a backup left its jobs running in
		// qemu (holding the previous point's bitmap busy) and its
		// target nodes: they go first.
		var cleared []string
		for _, d := range vm.Disks {
			cleared = append(cleared, s.clearLeftovers(ctx, qmp.JobID("backup", d.Target), qmp.NodeName("backup", d.Target))...)
		}
		if len(cleared) > 0 {
			opts.note("VM %s: an interrupted run left %s in its qemu: removed", vm.Name, strings.Join(cleared, ", "))
		}
	}
	bitmaps, err := s.bitmaps(ctx)
	if err != nil {
		return nil, fmt.Errorf("VM %s: reading the dirty bitmaps: %w", vm.Name, err)
	}
	last := x.Last()
	var number int64 = 1
	if last != nil {
		number = last.Point + 1
	}
	p := &Point{Point: number, Kind: Incremental, Live: s.live, Revert: revertMark(vm.LastRevert)}
	if opts.Now != nil {
		p.Time = opts.Now()
	} else {
		p.Time = time.Now().UTC().Truncate(time.Second)
	}
	reason, sources := fullReason(dir, x, vm, bitmaps, opts.Full)
	if reason != "" {
		p.Kind, p.Reason = Full, reason
		opts.note("point %d is full: %s", number, reason)
	}
	newBitmap := BitmapName(x.ID, number)
	union := unionBitmapName(newBitmap)

	// Targets: a new image per disk under a temporary name.
	type diskRun struct {
		target, node, tmp, file string
		size                    uint64
		job                     *qmp.Job
		copied                  int64
	}
	var runs []*diskRun
	var added []string
	cleanup := func() {
		bg := context.Background()
		// A cancelled job stays in qemu, holding its target node,
		// until it concludes and is dismissed.
		for _, r := range runs {
			if r.job != nil {
				s.clearLeftovers(bg, r.job.ID(), r.node)
			}
		}
		for _, n := range added {
			_ = s.conn.BlockdevDel(bg, n)
		}
		for _, r := range runs {
			_ = s.conn.BitmapRemove(bg, qmp.BlockDirtyBitmap{Node: s.disks[r.target].Node, Name: newBitmap})
			if len(sources[r.target]) > 1 {
				_ = s.conn.BitmapRemove(bg, qmp.BlockDirtyBitmap{Node: s.disks[r.target].Node, Name: union})
			}
			os.Remove(r.tmp)
		}
	}
	fail := func(err error) (*Point, error) {
		cleanup()
		return nil, noSpace(err, dir)
	}
	// exited is the error of a live qemu that went away during the
	// backup. The bitmaps it held in memory are lost or left
	// inconsistent in the images: the next point is full where it must
	// be, and says why.
	exited := func(target string, err error) error {
		return fmt.Errorf("VM %s disk %s: its qemu exited (or closed the monitor) during the backup: %w; nothing of this point was kept", vm.Name, target, err)
	}
	for _, d := range vm.Disks {
		size, err := virtualSize(d.Active)
		if err != nil {
			return fail(fmt.Errorf("VM %s disk %s: %w", vm.Name, d.Target, err))
		}
		file := FileName(d.Target, number)
		r := &diskRun{target: d.Target, node: qmp.NodeName("backup", d.Target), tmp: tempName(dir, file), file: file, size: size}
		runs = append(runs, r)
		co := qcow2.CreateOptions{Size: size}
		if p.Kind == Incremental {
			co.BackingFile, co.BackingFormat = FileName(d.Target, last.Point), "qcow2"
		}
		if err := step("make " + filepath.Base(r.tmp)); err != nil {
			return nil, err
		}
		if err := qcow2.Create(r.tmp, co); err != nil {
			return fail(err)
		}
		abs, err := filepath.Abs(r.tmp)
		if err != nil {
			return fail(err)
		}
		// No flush while the job runs: QEMU would fdatasync the new
		// file at every L2 table it allocates (about 480 times for an
		// incremental of a 64 GiB disk). Closing the node writes its
		// metadata out, and the file is synced below before it is
		// renamed into place, so a crash leaves only the temporary name.
		noFlush := map[string]any{"no-flush": true}
		if err := step("add node " + r.node); err != nil {
			return nil, err
		}
		if err := s.conn.BlockdevAdd(ctx, map[string]any{
			"driver": "qcow2", "node-name": r.node, "cache": noFlush,
			"file": map[string]any{"driver": "file", "filename": abs, "cache": noFlush},
		}); err != nil {
			return fail(fmt.Errorf("adding %s: %w", r.tmp, err))
		}
		added = append(added, r.node)
		// A bitmap of this point's name is left by an interrupted run
		// (the index never listed the point): it is not what it says.
		var top []qmp.DirtyBitmapInfo
		if l := bitmaps[d.Target]; len(l) > 0 {
			top = l[0].Bitmaps
		}
		for _, b := range top {
			if b.Name == newBitmap || b.Name == union {
				if err := step("remove stale bitmap " + b.Name + " of " + d.Target); err != nil {
					return nil, err
				}
				if err := s.conn.BitmapRemove(ctx, qmp.BlockDirtyBitmap{Node: s.disks[d.Target].Node, Name: b.Name}); err != nil {
					return fail(fmt.Errorf("VM %s disk %s: removing the stale bitmap %s: %w", vm.Name, d.Target, b.Name, err))
				}
				opts.note("VM %s disk %s: an interrupted run left the bitmap %s: removed", vm.Name, d.Target, b.Name)
			}
		}
		// Writes since the last point are in the previous point's
		// bitmaps of several layers (snapshots since): their union is
		// gathered, in the transaction below, into a bitmap of the
		// active node that the job copies from.
		if p.Kind == Incremental && len(sources[d.Target]) > 1 {
			var gran uint64
			for _, b := range top {
				if b.Name == BitmapName(x.ID, last.Point) {
					gran = b.Granularity
				}
			}
			if err := step("add bitmap " + union + " to " + d.Target); err != nil {
				return nil, err
			}
			if err := s.conn.BitmapAdd(ctx, qmp.BlockDirtyBitmapAdd{Node: s.disks[d.Target].Node, Name: union, Granularity: gran, Disabled: qmp.Bool(true)}); err != nil {
				return fail(fmt.Errorf("VM %s disk %s: adding bitmap %s: %w", vm.Name, d.Target, union, err))
			}
		}
	}

	// One transaction: every copy starts, and every disk's new bitmap
	// begins to record, at the same instant.
	var actions []qmp.TransactionAction
	for _, r := range runs {
		sd := s.disks[r.target]
		actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapAdd, Data: qmp.BlockDirtyBitmapAdd{Node: sd.Node, Name: newBitmap, Persistent: qmp.Bool(true)}})
		b := qmp.BlockdevBackup{JobID: qmp.JobID("backup", r.target), Device: sd.Device, Target: r.node, Sync: qmp.SyncFull, Speed: opts.Speed}
		if p.Kind == Incremental {
			b.Sync, b.Bitmap, b.BitmapMode = qmp.SyncBitmap, BitmapName(x.ID, last.Point), qmp.BitmapModeNever
			if src := sources[r.target]; len(src) > 1 {
				actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapMerge, Data: qmp.BlockDirtyBitmapMerge{Node: sd.Node, Target: union, Bitmaps: src}})
				b.Bitmap = union
			}
		}
		actions = append(actions, b.Action())
	}
	if err := step("transaction: bitmap " + newBitmap + " and jobs"); err != nil {
		return nil, err
	}
	if err := s.conn.Transaction(ctx, actions, nil); err != nil {
		return fail(fmt.Errorf("VM %s: starting the backup: %w", vm.Name, err))
	}
	for _, r := range runs {
		if r.job, err = qmp.AttachJob(ctx, s.conn, qmp.JobID("backup", r.target)); err != nil {
			// A qemu killed once the jobs started: as below.
			if s.live && errors.Is(err, qmp.ErrClosed) {
				return fail(exited(r.target, err))
			}
			return fail(err)
		}
	}
	for _, r := range runs {
		wo := qmp.WaitOptions{}
		if opts.Progress != nil {
			target := r.target
			wo.Progress = func(cur, total int64) { opts.Progress(target, cur, total) }
		}
		if err := step("wait for job " + r.job.ID()); err != nil {
			return nil, err
		}
		res, err := r.job.Wait(ctx, wo)
		r.job = nil
		if err != nil {
			if s.live && errors.Is(err, qmp.ErrClosed) {
				return fail(exited(r.target, err))
			}
			return fail(fmt.Errorf("VM %s disk %s: backup: %w", vm.Name, r.target, err))
		}
		r.copied = res.TotalProgress
		if len(sources[r.target]) > 1 {
			if err := step("remove bitmap " + union + " of " + r.target); err != nil {
				return nil, err
			}
			if err := s.conn.BitmapRemove(ctx, qmp.BlockDirtyBitmap{Node: s.disks[r.target].Node, Name: union}); err != nil {
				opts.note("VM %s disk %s: removing the bitmap %s: %v", vm.Name, r.target, union, err)
			}
		}
	}
	for _, r := range runs {
		if err := step("close node " + r.node); err != nil {
			return nil, err
		}
		if err := s.conn.BlockdevDel(ctx, r.node); err != nil {
			return fail(fmt.Errorf("closing %s: %w", r.tmp, err))
		}
		added = added[1:]
	}

	// The files: summed while they are synced (the sum reads what the
	// page cache holds, the sync writes it out), renamed; then the index.
	if err := step("sync files"); err != nil {
		return nil, err
	}
	sums := make([]string, len(runs))
	sumErrs := make([]error, len(runs))
	var summing sync.WaitGroup
	for i, r := range runs {
		summing.Go(func() { sums[i], sumErrs[i] = fileSHA256(ctx, r.tmp) })
	}
	var syncErr error
	for _, r := range runs {
		if syncErr = syncFile(r.tmp); syncErr != nil {
			break
		}
	}
	summing.Wait()
	if err := errors.Join(append([]error{syncErr}, sumErrs...)...); err != nil {
		return fail(err)
	}
	for _, r := range runs {
		if err := step("rename " + r.file); err != nil {
			return nil, err
		}
		if err := os.Rename(r.tmp, filepath.Join(dir, r.file)); err != nil {
			return fail(err)
		}
	}
	if err := syncDir(dir); err != nil {
		return fail(err)
	}
	for i, r := range runs {
		st, err := os.Stat(filepath.Join(dir, r.file))
		if err != nil {
			return fail(err)
		}
		p.Disks = append(p.Disks, PointDisk{Target: r.target, File: r.file, Size: r.size, Bytes: st.Size(), Copied: r.copied, SHA256: sums[i]})
	}
	x.Points = append(x.Points, *p)
	if err := step("write index"); err != nil {
		return nil, err
	}
	if err := writeIndex(dir, x); err != nil {
		// The renamed files are leftovers the next run removes; the new
		// bitmaps are removed now.
		for _, r := range runs {
			os.Remove(filepath.Join(dir, r.file))
		}
		return fail(err)
	}

	// The point is stored: the bitmaps of earlier points go, from the
	// active images and from the layers below that the session opened
	// for writing (offline). A running VM's layers below are read-only
	// nodes: theirs (disabled, under names no later point asks for) stay
	// until an offline run, and the run says so.
	kept := 0
	for _, r := range runs {
		sd := s.disks[r.target]
		for i, l := range bitmaps[r.target] {
			old := 0
			for _, b := range l.Bitmaps {
				if !strings.HasPrefix(b.Name, BitmapPrefix(x.ID)) || b.Name == newBitmap {
					continue
				}
				old++
				if i > sd.Writable {
					continue
				}
				if err := step("remove old bitmap " + b.Name + " of " + filepath.Base(l.File)); err != nil {
					return nil, err
				}
				if err := s.conn.BitmapRemove(ctx, qmp.BlockDirtyBitmap{Node: l.Node, Name: b.Name}); err != nil {
					opts.note("VM %s disk %s: removing the old bitmap %s of %s: %v", vm.Name, r.target, b.Name, filepath.Base(l.File), err)
				}
			}
			if old > 0 && i > sd.Writable {
				kept++
			}
		}
	}
	if kept > 0 {
		what := fmt.Sprintf("%d layers below the active images keep", kept)
		if kept == 1 {
			what = "1 layer below the active images keeps"
		}
		why := "read-only in the running qemu"
		if !s.live {
			why = "another process has it open, or it is not writable"
		}
		opts.note("VM %s: %s disabled bitmaps of earlier points (%s): the next offline backup that can write them removes them", vm.Name, what, why)
	}
	if err := step("close session"); err != nil {
		return nil, err
	}
	closed = true
	if err := s.close(); err != nil && !s.live {
		opts.note("VM %s: the storage daemon did not quit cleanly (%v): the next backup may have to be full", vm.Name, err)
	}
	return p, nil
}

// noSpace adds to an error that is the backup folder's file system being
// full what it means: nothing was kept, and the run can be repeated once
// there is room. Jobs report it as QEMU's text, not as an errno.
func noSpace(err error, dir string) error {
	if err == nil || strings.Contains(err.Error(), "make room") ||
		!errors.Is(err, syscall.ENOSPC) && !strings.Contains(strings.ToLower(err.Error()), syscall.ENOSPC.Error()) {
		return err
	}
	return fmt.Errorf("%w (the backup folder %s is full: nothing of this point was kept; make room and run the backup again)", err, dir)
}

// checkFresh accepts a folder for a first backup: empty, or holding only
// what an interrupted first backup left (removed later).
func checkFresh(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		n := e.Name()
		if n == LockName || pointFile.MatchString(n) || strings.HasPrefix(n, ".") && strings.HasSuffix(n, ".tmp") {
			continue
		}
		return fmt.Errorf("%s is not empty and has no %s: not a backup folder (%s)", dir, IndexName, n)
	}
	return nil
}

// fullReason says why the next point must be full, or "" if it can be
// incremental, and then returns per disk the bitmaps whose union the
// incremental copies (bitmapUnion): the disks must be as they were, and
// the previous point's bitmap on every disk's active image, recording and
// consistent, and on the layers below it that snapshots made since.
func fullReason(dir string, x *Index, vm *chain.VM, bitmaps map[string][]layerBitmaps, full bool) (string, map[string][]qmp.BlockDirtyBitmap) {
	last := x.Last()
	switch {
	case last == nil:
		return "first point in this folder", nil
	case full:
		return "asked for (--full)", nil
	case len(last.Disks) != len(vm.Disks):
		return fmt.Sprintf("the VM has %d disks, point %d had %d", len(vm.Disks), last.Point, len(last.Disks)), nil
	}
	want := BitmapName(x.ID, last.Point)
	r := vm.LastRevert
	reverted := r != nil && !r.Time.Before(last.Time) // folders that predate Point.Revert
	if last.Revert != "" {
		reverted = revertMark(r) != last.Revert
	}
	if reverted && r == nil {
		return fmt.Sprintf("the VM's record of its reverts changed since point %d", last.Point), nil
	}
	// The disks went back to a snapshot's state, and what they lost is
	// in no bitmap, unless the revert kept the point's bitmap: it gave
	// the new branch one that goes on from the snapshot's instant, and
	// the union below holds every difference. A revert in place before
	// it (Lossy) kept nothing.
	if reverted && !slices.Contains(r.Kept, want) {
		return fmt.Sprintf("snapshot revert to %s since point %d", r.Snapshot, last.Point), nil
	}
	if reverted && r.Lossy != nil && !r.Lossy.Before(last.Time) {
		return fmt.Sprintf("a snapshot revert since point %d kept no bitmap", last.Point), nil
	}
	sources := map[string][]qmp.BlockDirtyBitmap{}
	for _, d := range vm.Disks {
		ld := last.Disk(d.Target)
		if ld == nil {
			return fmt.Sprintf("disk %s is not in point %d", d.Target, last.Point), nil
		}
		if _, err := os.Stat(filepath.Join(dir, ld.File)); err != nil {
			return fmt.Sprintf("point %d's file %s is missing", last.Point, ld.File), nil
		}
		if size, err := virtualSize(d.Active); err != nil || size != ld.Size {
			return fmt.Sprintf("disk %s changed size since point %d", d.Target, last.Point), nil
		}
		src, reason := bitmapUnion(d.Target, bitmaps[d.Target], want, last.Point)
		if reason != "" {
			return reason, nil
		}
		sources[d.Target] = src
	}
	return "", sources
}

// revertMark identifies the VM's latest revert (or its having none) as
// Point.Revert records it.
func revertMark(r *chain.Revert) string {
	if r == nil {
		return "none"
	}
	return r.Snapshot + "@" + r.Time.UTC().Format(time.RFC3339Nano)
}

// virtualSize is the guest size of an image.
func virtualSize(name string) (uint64, error) {
	c, err := qcow2.OpenChain(name, qcow2.ChainOptions{NoBacking: true, NoDataFile: true})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.Size(), nil
}
