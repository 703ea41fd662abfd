package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
	"github.com/urfave/cli/v2"
)

func blockpullCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockpull",
		Usage:     "copy data from backing files into the active layer and drop them from the chain (block-stream)",
		ArgsUsage: "DISK",
		Description: "DISK is a disk of the QEMU at --qmp (device or qdev id, or node name), or without --qmp\n" +
			"an image path: the job then runs offline on a private qemu-storage-daemon.\n" +
			"--base FILE keeps FILE and what is below it; without it the whole chain is pulled.",
		Flags: append(jobFlags(),
			&cli.StringFlag{Name: "base", Usage: "pull only the layers above `FILE`, which becomes the new backing file"}),
		Action: func(c *cli.Context) error { return runJobCommand(c, 1, "one DISK", planPull) },
	}
}

func blockcommitCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockcommit",
		Usage:     "merge layers of a disk's chain down into a backing file (block-commit)",
		ArgsUsage: "DISK",
		Description: "Commits --top (default: the active layer, which needs --active) into --base (default:\n" +
			"the bottom of the chain; --shallow: the top's own backing file). An active commit ends\n" +
			"with --pivot (the disk switches to the base) or --keep-overlay (it keeps the top);\n" +
			"with neither, --wait returns once the job is ready. --delete removes the committed\n" +
			"files after success.",
		Flags: append(jobFlags(),
			&cli.StringFlag{Name: "top", Usage: "commit from `FILE` (default: the active layer)"},
			&cli.StringFlag{Name: "base", Usage: "commit into `FILE` (default: the bottom of the chain)"},
			&cli.BoolFlag{Name: "active", Usage: "allow committing the active layer"},
			&cli.BoolFlag{Name: "pivot", Usage: "active commit: switch the disk to the base when in sync (implies --wait)"},
			&cli.BoolFlag{Name: "keep-overlay", Usage: "active commit: end in sync but keep the disk on the top (implies --wait)"},
			&cli.BoolFlag{Name: "shallow", Usage: "commit into the top's immediate backing file"},
			&cli.BoolFlag{Name: "delete", Usage: "delete the committed files after success (implies --wait)"},
		),
		Action: func(c *cli.Context) error { return runJobCommand(c, 1, "one DISK", planCommit) },
	}
}

func blockcopyCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockcopy",
		Usage:     "copy a disk to a new image and keep it in sync (drive-mirror)",
		ArgsUsage: "DISK DEST",
		Description: "DEST is created with the format of the active layer unless --reuse-external.\n" +
			"--shallow copies only the active layer (DEST gets the same backing file).\n" +
			"When in sync, --pivot switches the disk to DEST and --finish leaves DEST a consistent\n" +
			"copy; with neither, --wait returns once the job is ready.",
		Flags: append(jobFlags(),
			&cli.BoolFlag{Name: "shallow", Usage: "copy only the active layer; DEST keeps the backing chain"},
			&cli.BoolFlag{Name: "reuse-external", Usage: "DEST exists already (with the right size and backing file): write into it"},
			&cli.BoolFlag{Name: "pivot", Usage: "switch the disk to DEST when in sync (implies --wait)"},
			&cli.BoolFlag{Name: "finish", Usage: "end when in sync, leaving DEST a consistent copy (implies --wait)"},
		),
		Action: func(c *cli.Context) error { return runJobCommand(c, 2, "DISK DEST", planCopy) },
	}
}

// jobPlan is what a job command does: the job, and what it does after the
// job succeeded (print the new chain, delete files).
type jobPlan struct {
	req jobRequest
	// newTop is the file that is the disk's active layer after success
	// (offline, where QEMU's graph says nothing).
	newTop string
	// remove are the files --delete removes after success.
	remove []string
	done   string // "Block pull complete"
	// created is a file the plan made (a shallow copy's DEST), removed
	// again if the job does not start.
	created string
}

type planFunc func(c *cli.Context, t *blockTarget, d qmp.Disk, args []string) (*jobPlan, error)

// runJobCommand is blockpull, blockcommit and blockcopy: open the target,
// find the disk, plan, start, and unless told not to, wait and report.
func runJobCommand(c *cli.Context, nargs int, usage string, plan planFunc) error {
	args, err := diskArgs(c, nargs, usage)
	if err != nil {
		return err
	}
	w, err := jobWaitOf(c)
	if err != nil {
		return err
	}
	speed, err := bandwidthOf(c)
	if err != nil {
		return err
	}
	for _, f := range []string{"pivot", "keep-overlay", "finish", "delete"} {
		if c.IsSet(f) && c.Bool(f) {
			w.wait = true
		}
	}
	ctx, stop := signalContext(c.Context)
	defer stop()

	t, err := openBlockTarget(ctx, c, args[0])
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			_ = t.close()
		}
	}()
	if t.offline() {
		w.wait = true // the private daemon ends with this process
	}
	disks, err := t.disks(ctx)
	if err != nil {
		return err
	}
	d, err := t.disk(disks, args[0])
	if err != nil {
		return err
	}
	p, err := plan(c, t, d, args)
	if err != nil {
		return err
	}
	setSpeed(p.req.starter, speed)
	job, err := startJob(ctx, c, t, disks, d, &p.req)
	if err != nil {
		if p.created != "" {
			_ = os.Remove(p.created)
		}
		return err
	}
	if !w.wait {
		// The job keeps running in QEMU; a stream or commit then waits in
		// "pending" (auto-finalize is off), a copy or active commit in
		// "ready", until blockjob --wait, --pivot or --abort decides.
		fmt.Fprintf(c.App.Writer, "Started the %s on %s (job %s); see it with qchain blockjob --qmp %s %s, finish it with --wait, --pivot or --abort\n",
			p.req.what, p.req.label, job.ID(), t.socket, d.Name())
		return nil
	}
	res, err := waitJob(ctx, c, t, job, p.req.label, p.req.what, p.req.onReady, w)
	if err != nil {
		return err
	}
	if res.Status == qmp.JobReady {
		fmt.Fprintln(c.App.Writer, readyMessage(p.req.label, job.ID(), p.req.readyHint))
		return nil
	}
	if t.offline() {
		// Quit the daemon first: the files are closed and flushed once
		// it has exited, and only then is the result on disk.
		closed = true
		if err := t.close(); err != nil {
			return fmt.Errorf("%s: the %s finished but qemu-storage-daemon did not quit cleanly: %w", p.req.label, p.req.what, err)
		}
	}
	chain, inUse, err := chainAfter(ctx, t, d, p.newTop)
	if err != nil {
		return fmt.Errorf("%s: the %s finished, but reading the chain again failed: %w", p.req.label, p.req.what, err)
	}
	if t.offline() {
		fmt.Fprintf(c.App.Writer, "%s; the chain is now %s\n", p.done, chainLine(chain))
	} else {
		fmt.Fprintf(c.App.Writer, "%s; %s: %s\n", p.done, p.req.label, chainLine(chain))
		if p.req.onReady == qmp.ReadyPivot && len(chain) > 0 && !sameFile(chain[0].Filename, p.newTop) {
			// QEMU 7.2 replaces a node in its parents only: a -blockdev
			// root that no device uses has none, so nothing switches.
			fmt.Fprintf(c.App.ErrWriter, "qchain: note: %s: QEMU kept %s as the disk's active layer (a node no device uses is not replaced by a pivot); the data is complete in %s\n",
				p.req.label, chain[0].Filename, p.newTop)
		}
	}
	if len(p.remove) > 0 {
		return removeFiles(c, p.req.label, p.remove, inUse)
	}
	return nil
}

func setSpeed(s qmp.JobStarter, speed int64) {
	switch a := s.(type) {
	case *qmp.BlockStream:
		a.Speed = speed
	case *qmp.BlockCommit:
		a.Speed = speed
	case *qmp.DriveMirror:
		a.Speed = speed
	}
}

// chainAfter reads the disk's chain after a job and every file a chain
// still uses: live from QEMU, offline from the files (newTop's chain).
func chainAfter(ctx context.Context, t *blockTarget, d qmp.Disk, newTop string) ([]qmp.ChainLayer, []string, error) {
	if t.offline() {
		ch, err := qcow2.OpenChain(newTop, qcow2.ChainOptions{})
		if err != nil {
			return nil, nil, err
		}
		defer ch.Close()
		var layers []qmp.ChainLayer
		var files []string
		for i, l := range ch.Layers {
			abs, _ := filepath.Abs(l.Filename())
			layers = append(layers, qmp.ChainLayer{NodeName: fmt.Sprintf("l%d", i), Filename: abs, Format: l.Format()})
			files = append(files, abs)
		}
		return layers, files, nil
	}
	disks, err := t.disks(ctx)
	if err != nil {
		return nil, nil, err
	}
	var files []string
	var chain []qmp.ChainLayer
	for _, x := range disks {
		for _, l := range x.Chain {
			files = append(files, l.Filename)
		}
	}
	if nd := matchDisk(disks, d.Name()); nd != nil {
		chain = nd.Chain
	} else if nd := matchDisk(disks, newTop); nd != nil {
		chain = nd.Chain
	}
	return chain, files, nil
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

func planPull(c *cli.Context, t *blockTarget, d qmp.Disk, _ []string) (*jobPlan, error) {
	label := t.diskLabel(d)
	if len(d.Chain) < 2 {
		return nil, fmt.Errorf("%s: nothing to pull: %s has no backing file", label, d.Chain[0].Filename)
	}
	js := &qmp.BlockStream{JobID: qmp.JobID("pull", d.Name()), Device: d.Name()}
	what := "pull of the whole chain into " + shortName(d.Chain[0].Filename)
	if base := c.String("base"); base != "" {
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
	return &jobPlan{
		req:    jobRequest{label: label, what: what, starter: js, id: js.JobID},
		newTop: d.Chain[0].Filename,
		done:   "Block pull complete",
	}, nil
}

func planCommit(c *cli.Context, t *blockTarget, d qmp.Disk, _ []string) (*jobPlan, error) {
	label := t.diskLabel(d)
	if len(d.Chain) < 2 {
		return nil, fmt.Errorf("%s: nothing to commit: %s has no backing file", label, d.Chain[0].Filename)
	}
	top, base := 0, len(d.Chain)-1
	var err error
	if f := c.String("top"); f != "" {
		if top, err = layerIndex(label, d, "--top", f); err != nil {
			return nil, err
		}
	}
	switch {
	case c.Bool("shallow") && c.String("base") != "":
		return nil, fmt.Errorf("%s: --shallow and --base exclude each other", label)
	case c.Bool("shallow"):
		base = top + 1
	case c.String("base") != "":
		if base, err = layerIndex(label, d, "--base", c.String("base")); err != nil {
			return nil, err
		}
	}
	if base >= len(d.Chain) {
		return nil, fmt.Errorf("%s: --top %s is the base of the chain: nothing below it to commit into", label, d.Chain[top].Filename)
	}
	if base <= top {
		return nil, fmt.Errorf("%s: --base %s is not below --top %s in the chain (%s)", label, d.Chain[base].Filename, d.Chain[top].Filename, chainLine(d.Chain))
	}
	active := top == 0
	pivot, keep := c.Bool("pivot"), c.Bool("keep-overlay")
	switch {
	case active && !c.Bool("active"):
		return nil, fmt.Errorf("%s: the top %s is the active layer: add --active (with --pivot or --keep-overlay)", label, d.Chain[0].Filename)
	case !active && (pivot || keep):
		return nil, fmt.Errorf("%s: --pivot and --keep-overlay apply only to an active commit, and --top %s is not the active layer", label, d.Chain[top].Filename)
	case pivot && keep:
		return nil, fmt.Errorf("%s: --pivot and --keep-overlay exclude each other", label)
	case keep && c.Bool("delete"):
		return nil, fmt.Errorf("%s: --delete with --keep-overlay: every layer stays in use, nothing could be deleted", label)
	}

	jc := &qmp.BlockCommit{JobID: qmp.JobID("commit", d.Name()), Device: d.Name(),
		BaseNode: d.Chain[base].NodeName}
	if !active {
		jc.TopNode = d.Chain[top].NodeName
		jc.BackingFile = backingName(d.Chain[base])
	}
	what := fmt.Sprintf("commit of %s into %s", shortName(d.Chain[top].Filename), shortName(d.Chain[base].Filename))
	if base-top > 1 {
		what = fmt.Sprintf("commit of %s..%s into %s", shortName(d.Chain[top].Filename),
			shortName(d.Chain[base-1].Filename), shortName(d.Chain[base].Filename))
	}
	p := &jobPlan{
		req:    jobRequest{label: label, what: what, starter: jc, id: jc.JobID},
		newTop: d.Chain[0].Filename,
		done:   "Block commit complete",
	}
	if active {
		p.req.readyHint = readyHint(t, d)
		switch {
		case keep:
			p.req.onReady = qmp.ReadyFinish
		case pivot || t.offline():
			// Offline nothing uses the image: the pivot only ends the job
			// with the data committed, which is what is asked for.
			p.req.onReady = qmp.ReadyPivot
			p.newTop = d.Chain[base].Filename
		default:
			p.req.onReady = qmp.ReadyReturn
		}
	}
	if c.Bool("delete") {
		for i := top; i < base; i++ {
			p.remove = append(p.remove, d.Chain[i].Filename)
		}
	}
	return p, nil
}

func planCopy(c *cli.Context, t *blockTarget, d qmp.Disk, args []string) (*jobPlan, error) {
	label := t.diskLabel(d)
	dest, err := filepath.Abs(args[1])
	if err != nil {
		return nil, err
	}
	for _, l := range d.Chain {
		if sameFile(dest, l.Filename) {
			return nil, fmt.Errorf("%s: DEST %s is in the chain of %s", label, args[1], label)
		}
	}
	pivot, finish := c.Bool("pivot"), c.Bool("finish")
	if pivot && finish {
		return nil, fmt.Errorf("%s: --pivot and --finish exclude each other", label)
	}
	jm := &qmp.DriveMirror{JobID: qmp.JobID("copy", d.Name()), Device: d.Name(), Target: dest, Sync: qmp.SyncFull}
	if c.Bool("shallow") {
		jm.Sync = qmp.SyncTop
	}
	created := "" // DEST made here, removed if the job does not start
	_, statErr := os.Stat(dest)
	if c.Bool("reuse-external") {
		if statErr != nil {
			return nil, fmt.Errorf("%s: --reuse-external: DEST %s: %w", label, args[1], statErr)
		}
		f, err := os.Open(dest)
		if err != nil {
			return nil, fmt.Errorf("%s: DEST: %w", label, err)
		}
		jm.Format = qcow2.ProbeFormat(f)
		f.Close()
		jm.Mode = qmp.ModeExisting
	} else {
		if statErr == nil {
			return nil, fmt.Errorf("%s: DEST %s exists: refusing to overwrite it (use --reuse-external to copy into it)", label, args[1])
		}
		if !errors.Is(statErr, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: DEST: %w", label, statErr)
		}
		jm.Format = d.Chain[0].Format
		jm.Mode = qmp.ModeAbsolutePaths
		if jm.Sync == qmp.SyncTop && len(d.Chain) > 1 && jm.Format == "qcow2" {
			// QEMU would record the backing node's filename, a broken
			// "json:{...}" for nodes opened with explicit backing
			// references (-blockdev, offline): create DEST as QEMU would,
			// on the backing file's plain name, and let QEMU reuse it.
			if err := createShallowTarget(dest, d); err != nil {
				return nil, fmt.Errorf("%s: creating DEST %s: %w", label, args[1], err)
			}
			jm.Mode = qmp.ModeExisting
			created = dest
		}
	}
	p := &jobPlan{
		req:     jobRequest{label: label, what: "copy to " + dest, starter: jm, id: jm.JobID, readyHint: readyHint(t, d)},
		newTop:  d.Chain[0].Filename,
		done:    "Block copy complete",
		created: created,
	}
	switch {
	case pivot && !t.offline():
		p.req.onReady = qmp.ReadyPivot
		p.newTop = dest
		p.done = "Block copy complete, pivoted to " + dest
	case finish || t.offline():
		// Offline the copy is all there is to it: end without a pivot.
		p.req.onReady = qmp.ReadyFinish
		p.done = "Block copy complete, " + dest + " is a consistent copy"
	default:
		p.req.onReady = qmp.ReadyReturn
	}
	return p, nil
}

// createShallowTarget creates dest as drive-mirror would for sync=top:
// qcow2, the size of d's active layer, backed by its backing file.
func createShallowTarget(dest string, d qmp.Disk) error {
	top, _, err := qcow2.OpenLayer(d.Chain[0].Filename, d.Chain[0].Format, qcow2.ChainOptions{})
	if err != nil {
		return err
	}
	size := top.Size()
	top.Close()
	b := d.Chain[1]
	if strings.HasPrefix(b.Filename, "json:") {
		return fmt.Errorf("the backing node %s has no plain file name (%s)", b.NodeName, b.Filename)
	}
	return qcow2.Create(dest, qcow2.CreateOptions{Size: size, BackingFile: b.Filename, BackingFormat: b.Format})
}

// readyHint tells how to finish a job left ready.
func readyHint(t *blockTarget, d qmp.Disk) string {
	return fmt.Sprintf("finish it with qchain blockjob --qmp %s --pivot %s (or --abort)", t.socket, d.Name())
}
