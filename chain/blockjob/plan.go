package blockjob

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// Plan is one job that Run starts on one disk, and what follows its
// success. PlanPull, PlanCommit and PlanCopy make it; its exported fields
// are what a caller reports.
type Plan struct {
	// Disk is the disk and its chain as observed when planning.
	Disk qmp.Disk
	// Label names the disk in messages (Target.Label).
	Label string
	// What says what the job does, for messages and a progress display:
	// "commit of snap1.qcow2 into base.qcow2".
	What string
	// JobID is the job's id, qmp.JobID of the operation and the disk, so
	// that a job left behind by a killed process is found again.
	JobID string
	// OnReady is what Run does once a copy or an active commit is ready:
	// pivot, finish without a pivot, or return with the job left ready.
	OnReady qmp.ReadyAction
	// NewTop is the file that is the disk's active layer after success
	// (offline, where no QEMU graph says so, Run reads the chain from it).
	NewTop string
	// Remove are the committed files Run deletes after success
	// (CommitOptions.Delete).
	Remove []string
	// Done is the sentence that reports success: "Block pull complete".
	Done string

	starter qmp.JobStarter
	disks   []qmp.Disk // all disks when planning, for the idle check
	// created is a file the plan made (a copy's DEST), removed again if
	// the job does not start.
	created string
	// target is the node a copy mirrors into when the plan adds it
	// itself (blockdev-add before blockdev-mirror): nil when QEMU opens
	// DEST (drive-mirror).
	target map[string]any
	// wait is set when the options ask for something only a waiting Run
	// can do: a pivot, a finish, deleting files.
	wait bool
}

// PullOptions configure PlanPull. The zero value pulls the whole chain.
type PullOptions struct {
	// Base is a layer of the chain (a path or a node name) that stays,
	// with everything below it, and becomes the active layer's backing
	// file. Empty pulls every backing layer into the active layer.
	Base string
}

// CommitOptions configure PlanCommit. The zero value commits nothing
// usable: committing the active layer needs Active.
type CommitOptions struct {
	// Top is the highest layer committed (a path or a node name). Empty
	// means the active layer, which needs Active.
	Top string
	// Base is the layer committed into. Empty means the bottom of the
	// chain, or with Shallow the top's own backing file.
	Base string
	// Active allows committing the active layer; the job then ends with
	// Pivot, KeepOverlay, or neither (left ready). Offline it always
	// pivots: nothing uses the image.
	Active bool
	// Pivot switches the disk to the base once the active commit is in
	// sync. It implies waiting.
	Pivot bool
	// KeepOverlay ends an active commit in sync with the disk kept on the
	// top. It implies waiting.
	KeepOverlay bool
	// Shallow commits into the top's immediate backing file.
	Shallow bool
	// Delete removes the committed files after success, refusing any that
	// a disk's chain still uses. It implies waiting.
	Delete bool
	// ForceExports pivots although a block export can (or may) write to
	// the disk. By default such a live pivot is refused before anything
	// starts: QEMU loses writes an export's new clients make during the
	// switch (qmp.ExportError).
	ForceExports bool
}

// CopyOptions configure PlanCopy. The zero value makes a new full copy
// in the active layer's format and, live, leaves the job ready.
type CopyOptions struct {
	// Shallow copies only the active layer; DEST gets the same backing
	// file.
	Shallow bool
	// ReuseExternal writes into DEST, which exists already with the right
	// size and backing file. Without it an existing DEST is refused.
	ReuseExternal bool
	// Pivot switches the disk to DEST once in sync. It implies waiting.
	Pivot bool
	// Finish ends the job once in sync, leaving DEST a consistent copy
	// and the disk where it was. It implies waiting; offline it is what
	// every copy does.
	Finish bool
	// ForceExports pivots although a block export can (or may) write to
	// the disk. By default such a live pivot is refused before anything
	// starts: QEMU loses writes an export's new clients make during the
	// switch (qmp.ExportError).
	ForceExports bool
}

// PlanPull plans a block-stream on the disk called disk (see DiskJobs for
// the names it accepts): the data of the backing layers above opts.Base
// is copied into the active layer, which then no longer needs them.
func (t *Target) PlanPull(ctx context.Context, disk string, opts PullOptions) (*Plan, error) {
	disks, d, err := t.disk(ctx, disk)
	if err != nil {
		return nil, err
	}
	label := t.Label(d)
	if len(d.Chain) < 2 {
		return nil, fmt.Errorf("%s: nothing to pull: %s has no backing file", label, d.Chain[0].Filename)
	}
	js := &qmp.BlockStream{JobID: qmp.JobID("pull", d.Name()), Device: d.Name()}
	what := "pull of the whole chain into " + shortName(d.Chain[0].Filename)
	if base := opts.Base; base != "" {
		i, err := layerIndex(label, d, "--base", base)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			return nil, fmt.Errorf("%s: --base %s is the active layer: nothing is above it to pull into", label, base)
		}
		js.BaseNode = d.Chain[i].NodeName
		js.BackingFile = backingName(d.Chain[i])
		what = fmt.Sprintf("pull into %s down to %s", shortName(d.Chain[0].Filename), shortName(d.Chain[i].Filename))
	}
	return &Plan{
		Disk:    d,
		Label:   label,
		What:    what,
		JobID:   js.JobID,
		NewTop:  d.Chain[0].Filename,
		Done:    "Block pull complete",
		starter: js,
		disks:   disks,
	}, nil
}

// PlanCommit plans a block-commit on the disk called disk: the layers
// from opts.Top down to the one above opts.Base are merged into the base,
// and drop out of the chain.
func (t *Target) PlanCommit(ctx context.Context, disk string, opts CommitOptions) (*Plan, error) {
	disks, d, err := t.disk(ctx, disk)
	if err != nil {
		return nil, err
	}
	label := t.Label(d)
	if len(d.Chain) < 2 {
		return nil, fmt.Errorf("%s: nothing to commit: %s has no backing file", label, d.Chain[0].Filename)
	}
	top, base := 0, len(d.Chain)-1
	if f := opts.Top; f != "" {
		if top, err = layerIndex(label, d, "--top", f); err != nil {
			return nil, err
		}
	}
	switch {
	case opts.Shallow && opts.Base != "":
		return nil, fmt.Errorf("%s: --shallow and --base exclude each other", label)
	case opts.Shallow:
		base = top + 1
	case opts.Base != "":
		if base, err = layerIndex(label, d, "--base", opts.Base); err != nil {
			return nil, err
		}
	}
	if base >= len(d.Chain) {
		return nil, fmt.Errorf("%s: --top %s is the base of the chain: nothing below it to commit into", label, d.Chain[top].Filename)
	}
	if base <= top {
		return nil, fmt.Errorf("%s: --base %s is not below --top %s in the chain (%s)", label, d.Chain[base].Filename, d.Chain[top].Filename, ChainLine(d.Chain))
	}
	active := top == 0
	pivot, keep := opts.Pivot, opts.KeepOverlay
	switch {
	case active && !opts.Active:
		return nil, fmt.Errorf("%s: the top %s is the active layer: add --active (with --pivot or --keep-overlay)", label, d.Chain[0].Filename)
	case !active && (pivot || keep):
		return nil, fmt.Errorf("%s: --pivot and --keep-overlay apply only to an active commit, and --top %s is not the active layer", label, d.Chain[top].Filename)
	case pivot && keep:
		return nil, fmt.Errorf("%s: --pivot and --keep-overlay exclude each other", label)
	case keep && opts.Delete:
		return nil, fmt.Errorf("%s: --delete with --keep-overlay: every layer stays in use, nothing could be deleted", label)
	}

	jc := &qmp.BlockCommit{JobID: qmp.JobID("commit", d.Name()), Device: d.Name(),
		BaseNode: d.Chain[base].NodeName}
	if active {
		// Once the job is ready, job-complete or block-job-cancel is all
		// that is left to decide: QEMU finalizes at once, which keeps the
		// drained, not yet switched window as short as QEMU can.
		jc.AutoFinalize = qmp.Bool(true)
	} else {
		jc.TopNode = d.Chain[top].NodeName
		jc.BackingFile = backingName(d.Chain[base])
	}
	what := fmt.Sprintf("commit of %s into %s", shortName(d.Chain[top].Filename), shortName(d.Chain[base].Filename))
	if base-top > 1 {
		what = fmt.Sprintf("commit of %s..%s into %s", shortName(d.Chain[top].Filename),
			shortName(d.Chain[base-1].Filename), shortName(d.Chain[base].Filename))
	}
	p := &Plan{
		Disk:    d,
		Label:   label,
		What:    what,
		JobID:   jc.JobID,
		NewTop:  d.Chain[0].Filename,
		Done:    "Block commit complete",
		starter: jc,
		disks:   disks,
		wait:    pivot || keep || opts.Delete,
	}
	if active {
		switch {
		case keep:
			p.OnReady = qmp.ReadyFinish
		case pivot || t.Offline():
			// Offline nothing uses the image: the pivot only ends the job
			// with the data committed, which is what is asked for.
			p.OnReady = qmp.ReadyPivot
			p.NewTop = d.Chain[base].Filename
			if err := t.checkExports(ctx, label, "pivot the "+what, d, opts.ForceExports); err != nil {
				return nil, err
			}
		default:
			p.OnReady = qmp.ReadyReturn
		}
	}
	if opts.Delete {
		for i := top; i < base; i++ {
			p.Remove = append(p.Remove, d.Chain[i].Filename)
		}
	}
	return p, nil
}

// PlanCopy plans a drive-mirror of the disk called disk to the file dest:
// created with the active layer's format unless opts.ReuseExternal, and
// kept in sync until the job ends as opts say. A qcow2 or raw DEST is
// created here (a shallow one on the backing file's plain name) and QEMU
// reuses it; Run removes it again if the job does not start. A live
// shallow copy into a DEST made here is a blockdev-mirror into a node Run
// adds on DEST with the disk's own backing node as its backing.
func (t *Target) PlanCopy(ctx context.Context, disk, dest string, opts CopyOptions) (*Plan, error) {
	disks, d, err := t.disk(ctx, disk)
	if err != nil {
		return nil, err
	}
	label := t.Label(d)
	absDest, err := filepath.Abs(dest)
	if err != nil {
		return nil, err
	}
	for _, l := range d.Chain {
		if sameFile(absDest, l.Filename) {
			return nil, fmt.Errorf("%s: DEST %s is in the chain of %s", label, dest, label)
		}
	}
	pivot, finish := opts.Pivot, opts.Finish
	if pivot && finish {
		return nil, fmt.Errorf("%s: --pivot and --finish exclude each other", label)
	}
	if pivot {
		if err := t.checkExports(ctx, label, "pivot a copy to "+absDest, d, opts.ForceExports); err != nil {
			return nil, err
		}
	}
	jm := &qmp.DriveMirror{JobID: qmp.JobID("copy", d.Name()), Device: d.Name(), Target: absDest, Sync: qmp.SyncFull}
	if opts.Shallow {
		jm.Sync = qmp.SyncTop
	}
	created := "" // DEST made here, removed if the job does not start
	_, statErr := os.Stat(absDest)
	if opts.ReuseExternal {
		if statErr != nil {
			return nil, fmt.Errorf("%s: --reuse-external: DEST %s: %w", label, dest, statErr)
		}
		f, err := os.Open(absDest)
		if err != nil {
			return nil, fmt.Errorf("%s: DEST: %w", label, err)
		}
		jm.Format = qcow2.ProbeFormat(f)
		f.Close()
		jm.Mode = qmp.ModeExisting
	} else {
		if statErr == nil {
			return nil, fmt.Errorf("%s: DEST %s exists: refusing to overwrite it (use --reuse-external to copy into it)", label, dest)
		}
		if !errors.Is(statErr, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: DEST: %w", label, statErr)
		}
		jm.Format = d.Chain[0].Format
		jm.Mode = qmp.ModeAbsolutePaths
		if jm.Format == "qcow2" || jm.Format == "raw" {
			// DEST is made here as QEMU would make it, and QEMU reuses
			// it: QEMU creating it prints "Formatting '...'" on its own
			// stdout (a VM's terminal is often qchain's), and for a
			// shallow copy would record the backing node's filename, a
			// broken "json:{...}" for nodes opened with explicit backing
			// references (-blockdev, offline).
			if err := createTarget(absDest, d, jm.Sync == qmp.SyncTop); err != nil {
				return nil, fmt.Errorf("%s: creating DEST %s: %w", label, dest, err)
			}
			jm.Mode = qmp.ModeExisting
			created = absDest
		}
	}
	p := &Plan{
		Disk:    d,
		Label:   label,
		What:    "copy to " + absDest,
		JobID:   jm.JobID,
		NewTop:  d.Chain[0].Filename,
		Done:    "Block copy complete",
		starter: jm,
		disks:   disks,
		created: created,
		wait:    pivot || finish,
	}
	if created != "" && jm.Sync == qmp.SyncTop && len(d.Chain) > 1 && jm.Format == "qcow2" && !t.Offline() {
		// A shallow DEST gets the disk's own backing node, as libvirt
		// does it. drive-mirror onto an existing DEST opens DEST's
		// backing file again at the pivot, a second node of that
		// file; where the first stays open (a -blockdev node the user
		// made), QEMU's locks then refuse every later write into the
		// file (a commit into it) through either node.
		node := copyTargetName(jm.JobID)
		p.target = map[string]any{
			"driver": "qcow2", "node-name": node, "backing": d.Chain[1].NodeName,
			"file": map[string]any{"driver": "file", "filename": absDest},
		}
		p.starter = &qmp.BlockdevMirror{JobID: jm.JobID, Device: jm.Device, Target: node, Sync: jm.Sync}
	}
	switch {
	case pivot && !t.Offline():
		p.OnReady = qmp.ReadyPivot
		p.NewTop = absDest
		p.Done = "Block copy complete, pivoted to " + absDest
	case finish || t.Offline():
		// Offline the copy is all there is to it: end without a pivot.
		p.OnReady = qmp.ReadyFinish
		p.Done = "Block copy complete, " + absDest + " is a consistent copy"
	default:
		p.OnReady = qmp.ReadyReturn
	}
	return p, nil
}

// backingName is the name QEMU records as the new backing file of the
// layer above base: base's file, as QEMU writes it for a disk opened from
// the image headers (-drive). Given explicitly because for nodes opened
// with explicit backing references (-blockdev, the offline daemon) QEMU
// would write its "json:{...}" description instead.
func backingName(base qmp.ChainLayer) string {
	if strings.HasPrefix(base.Filename, "json:") {
		return ""
	}
	return base.Filename
}

// createTarget creates dest as drive-mirror would: in the format of d's
// active layer and of its size; for a shallow qcow2 copy (sync=top) backed
// by the active layer's backing file, under its plain name.
func createTarget(dest string, d qmp.Disk, shallow bool) error {
	top, _, err := qcow2.OpenLayer(d.Chain[0].Filename, d.Chain[0].Format, qcow2.ChainOptions{})
	if err != nil {
		return err
	}
	size := top.Size()
	top.Close()
	if d.Chain[0].Format == "raw" {
		f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		if err := f.Truncate(int64(size)); err != nil {
			f.Close()
			os.Remove(dest)
			return err
		}
		return f.Close()
	}
	opts := qcow2.CreateOptions{Size: size}
	if shallow && len(d.Chain) > 1 {
		b := d.Chain[1]
		if strings.HasPrefix(b.Filename, "json:") {
			return fmt.Errorf("the backing node %s has no plain file name (%s)", b.NodeName, b.Filename)
		}
		opts.BackingFile, opts.BackingFormat = b.Filename, b.Format
	}
	return qcow2.Create(dest, opts)
}
