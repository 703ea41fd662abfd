package cli

import (
	"fmt"
	"strings"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/urfave/cli/v2"
)

func blockjobCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockjob",
		Usage:     "show, steer or finish the block job of a disk, also one a killed qchain left behind",
		ArgsUsage: "DISK",
		Description: "With no action (or --info) it shows the disk's jobs. --wait drives the job to its end\n" +
			"(finalizing a finished stream or commit) or until it is ready; --pivot also completes a\n" +
			"ready mirror or active commit (refused while a block export can write to the disk,\n" +
			"unless --force); --abort cancels it and waits until it is gone.",
		Flags: []cli.Flag{
			qmpFlag(), outputFlag(),
			&cli.BoolFlag{Name: "info", Usage: "show the job (the default)"},
			&cli.BoolFlag{Name: "abort", Usage: "cancel the job (a ready copy or active commit does not pivot)"},
			&cli.BoolFlag{Name: "pivot", Usage: "wait until ready, then switch the disk to the job's target"},
			&cli.BoolFlag{Name: "force", Usage: "with --pivot: pivot even though a block export (NBD, ...) can write to the disk: QEMU may lose writes its clients make during the pivot"},
			&cli.BoolFlag{Name: "pause", Usage: "pause the job"},
			&cli.BoolFlag{Name: "resume", Usage: "resume a paused job"},
			&cli.Int64Flag{Name: "bandwidth", Usage: "set the job's limit to `N` MiB/s (0: unlimited)"},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the job to end, or to be ready"},
			&cli.BoolFlag{Name: "verbose", Usage: "show a progress bar on stderr while waiting"},
			&cli.StringFlag{Name: "timeout", Usage: "abort the job if it has not ended after `DURATION`; implies --wait"},
		},
		Action: runBlockjob,
	}
}

// blockjobActions are blockjob's mutually exclusive action flags.
var blockjobActions = []struct {
	flag   string
	action blockjob.Action
}{
	{"abort", blockjob.Abort},
	{"pivot", blockjob.Pivot},
	{"pause", blockjob.Pause},
	{"resume", blockjob.Resume},
}

func runBlockjob(c *cli.Context) error {
	args, err := diskArgs(c, 1, "one DISK")
	if err != nil {
		return err
	}
	name := args[0]
	socket := c.String("qmp")
	if socket == "" {
		return fmt.Errorf("blockjob: --qmp SOCKET is required (offline jobs end with the command that started them)")
	}
	asJSON, err := outputJSON(c)
	if err != nil {
		return err
	}
	w, err := jobWaitOf(c)
	if err != nil {
		return err
	}
	var actions []string
	action := blockjob.NoAction
	for _, a := range blockjobActions {
		if c.Bool(a.flag) {
			actions = append(actions, "--"+a.flag)
			action = a.action
		}
	}
	if len(actions) > 1 {
		return fmt.Errorf("blockjob: %s exclude each other", strings.Join(actions, " and "))
	}
	setBandwidth := c.IsSet("bandwidth")
	speed, err := bandwidthOf(c)
	if err != nil {
		return err
	}
	if c.Bool("force") && action != blockjob.Pivot {
		return fmt.Errorf("blockjob: --force applies only to --pivot")
	}
	if c.Bool("info") && (action != blockjob.NoAction || setBandwidth || w.wait) {
		return fmt.Errorf("blockjob: --info only shows; drop it to act on the job")
	}

	ctx, stop := signalContext(c.Context)
	defer stop()
	t, err := blockjob.Open(ctx, blockjob.TargetOptions{QMP: socket, Notes: c.App.ErrWriter})
	if err != nil {
		return err
	}
	defer t.Close()
	dj, err := t.DiskJobs(ctx, name)
	if err != nil {
		return err
	}
	label := dj.Label
	if action == blockjob.NoAction && !setBandwidth && !w.wait {
		return printJobs(c, label, dj.Jobs, asJSON)
	}
	opts := blockjob.ControlOptions{Action: action, Wait: w.wait, WaitOptions: w.options(c), ForceExports: c.Bool("force")}
	if setBandwidth {
		opts.Bandwidth = &speed
	}
	res, err := t.Control(ctx, dj, opts)
	if err != nil {
		return jobExit(err)
	}
	switch {
	case res.Outcome == blockjob.Adjusted:
		return printJobs(c, label, res.Jobs, asJSON)
	case res.Outcome == blockjob.Aborted:
		fmt.Fprintf(c.App.Writer, "%s: %s aborted\n", label, res.What)
		return nil
	case res.Outcome == blockjob.Ready:
		fmt.Fprintln(c.App.Writer, readyMessage(label, res.JobID, t.ReadyHint(dj.Disk)))
		return nil
	case action == blockjob.Abort:
		fmt.Fprintf(c.App.Writer, "%s: %s had already finished, too late to abort: its change is in place\n", label, res.What)
	default:
		fmt.Fprintf(c.App.Writer, "%s: %s complete\n", label, res.What)
	}
	return printChain(c, t, label, dj)
}

// printChain shows the disk's chain after a job.
func printChain(c *cli.Context, t *blockjob.Target, label string, dj *blockjob.DiskJobs) error {
	chain, err := t.Chain(c.Context, dj.Disk)
	if err != nil {
		return fmt.Errorf("%s: reading the chain again: %w", label, err)
	}
	fmt.Fprintf(c.App.Writer, "%s: %s\n", label, blockjob.ChainLine(chain))
	return nil
}

func printJobs(c *cli.Context, label string, jobs []blockjob.JobStatus, asJSON bool) error {
	if asJSON {
		if jobs == nil {
			jobs = []blockjob.JobStatus{}
		}
		return writeJSON(c.App.Writer, jobs)
	}
	if len(jobs) == 0 {
		fmt.Fprintf(c.App.Writer, "%s: no block job\n", label)
		return nil
	}
	for _, j := range jobs {
		fmt.Fprintf(c.App.Writer, "%s: job %s\n", label, j)
	}
	return nil
}
