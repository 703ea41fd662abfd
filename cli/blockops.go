package cli

import (
	"context"
	"fmt"

	"github.com/qchain/qchain/chain/blockjob"
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
			"files after success. A pivot is refused while a block export can write to the disk\n" +
			"(QEMU loses writes of an export's new clients during the switch); --force pivots anyway.",
		Flags: append(jobFlags(),
			&cli.StringFlag{Name: "top", Usage: "commit from `FILE` (default: the active layer)"},
			&cli.StringFlag{Name: "base", Usage: "commit into `FILE` (default: the bottom of the chain)"},
			&cli.BoolFlag{Name: "active", Usage: "allow committing the active layer"},
			&cli.BoolFlag{Name: "pivot", Usage: "active commit: switch the disk to the base when in sync (implies --wait)"},
			&cli.BoolFlag{Name: "keep-overlay", Usage: "active commit: end in sync but keep the disk on the top (implies --wait)"},
			&cli.BoolFlag{Name: "shallow", Usage: "commit into the top's immediate backing file"},
			&cli.BoolFlag{Name: "delete", Usage: "delete the committed files after success (implies --wait)"},
			&cli.BoolFlag{Name: "force", Usage: "pivot even though a block export (NBD, ...) can write to the disk: QEMU may lose writes its clients make during the pivot"},
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
			"copy; with neither, --wait returns once the job is ready. --pivot is refused while a\n" +
			"block export can write to the disk (QEMU loses writes of an export's new clients during\n" +
			"the switch); --force pivots anyway.",
		Flags: append(jobFlags(),
			&cli.BoolFlag{Name: "shallow", Usage: "copy only the active layer; DEST keeps the backing chain"},
			&cli.BoolFlag{Name: "reuse-external", Usage: "DEST exists already (with the right size and backing file): write into it"},
			&cli.BoolFlag{Name: "pivot", Usage: "switch the disk to DEST when in sync (implies --wait)"},
			&cli.BoolFlag{Name: "finish", Usage: "end when in sync, leaving DEST a consistent copy (implies --wait)"},
			&cli.BoolFlag{Name: "force", Usage: "pivot even though a block export (NBD, ...) can write to the disk: QEMU may lose writes its clients make during the pivot"},
		),
		Action: func(c *cli.Context) error { return runJobCommand(c, 2, "DISK DEST", planCopy) },
	}
}

// planFunc turns a job command's flags and arguments into its plan.
type planFunc func(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error)

func planPull(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error) {
	return t.PlanPull(ctx, args[0], blockjob.PullOptions{Base: c.String("base")})
}

func planCommit(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error) {
	return t.PlanCommit(ctx, args[0], blockjob.CommitOptions{
		Top:          c.String("top"),
		Base:         c.String("base"),
		Active:       c.Bool("active"),
		Pivot:        c.Bool("pivot"),
		KeepOverlay:  c.Bool("keep-overlay"),
		Shallow:      c.Bool("shallow"),
		Delete:       c.Bool("delete"),
		ForceExports: c.Bool("force"),
	})
}

func planCopy(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error) {
	return t.PlanCopy(ctx, args[0], args[1], blockjob.CopyOptions{
		Shallow:       c.Bool("shallow"),
		ReuseExternal: c.Bool("reuse-external"),
		Pivot:         c.Bool("pivot"),
		Finish:        c.Bool("finish"),
		ForceExports:  c.Bool("force"),
	})
}

// runJobCommand is blockpull, blockcommit and blockcopy: open the target,
// plan, run, and report how far the job got.
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
	ctx, stop := signalContext(c.Context)
	defer stop()

	t, err := openTarget(ctx, c, args[0])
	if err != nil {
		return err
	}
	defer t.Close()
	p, err := plan(ctx, c, t, args)
	if err != nil {
		return err
	}
	res, err := t.Run(ctx, p, blockjob.RunOptions{Bandwidth: speed, Wait: w.wait, WaitOptions: w.options(c)})
	if res == nil {
		return jobExit(err)
	}
	switch res.Outcome {
	case blockjob.Started:
		fmt.Fprintf(c.App.Writer, "Started the %s on %s (job %s); see it with qchain blockjob --qmp %s %s, finish it with --wait, --pivot or --abort\n",
			p.What, p.Label, res.JobID, c.String("qmp"), p.Disk.Name())
		return nil
	case blockjob.Ready:
		fmt.Fprintln(c.App.Writer, readyMessage(p.Label, res.JobID, t.ReadyHint(p.Disk)))
		return nil
	}
	if t.Offline() {
		fmt.Fprintf(c.App.Writer, "%s; the chain is now %s\n", p.Done, blockjob.ChainLine(res.Chain))
	} else {
		fmt.Fprintf(c.App.Writer, "%s; %s: %s\n", p.Done, p.Label, blockjob.ChainLine(res.Chain))
		if res.KeptActive != "" {
			fmt.Fprintf(c.App.ErrWriter, "qchain: note: %s: QEMU kept %s as the disk's active layer (a node no device uses is not replaced by a pivot); the data is complete in %s\n",
				p.Label, res.KeptActive, p.NewTop)
		}
	}
	for _, f := range res.Removed {
		fmt.Fprintf(c.App.Writer, "Deleted %s\n", f)
	}
	return err
}
