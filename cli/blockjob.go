package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/qchain/qchain/qmp"
	"github.com/urfave/cli/v2"
)

func blockjobCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockjob",
		Usage:     "show, steer or finish the block job of a disk, also one a killed qchain left behind",
		ArgsUsage: "DISK",
		Description: "With no action (or --info) it shows the disk's jobs. --wait drives the job to its end\n" +
			"(finalizing a finished stream or commit) or until it is ready; --pivot also completes a\n" +
			"ready mirror or active commit; --abort cancels it and waits until it is gone.",
		Flags: []cli.Flag{
			qmpFlag(), outputFlag(),
			&cli.BoolFlag{Name: "info", Usage: "show the job (the default)"},
			&cli.BoolFlag{Name: "abort", Usage: "cancel the job (a ready copy or active commit does not pivot)"},
			&cli.BoolFlag{Name: "pivot", Usage: "wait until ready, then switch the disk to the job's target"},
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
	for _, a := range []string{"abort", "pivot", "pause", "resume"} {
		if c.Bool(a) {
			actions = append(actions, "--"+a)
		}
	}
	if len(actions) > 1 {
		return fmt.Errorf("blockjob: %s exclude each other", strings.Join(actions, " and "))
	}
	action := ""
	if len(actions) == 1 {
		action = actions[0]
	}
	setBandwidth := c.IsSet("bandwidth")
	speed, err := bandwidthOf(c)
	if err != nil {
		return err
	}
	if c.Bool("info") && (action != "" || setBandwidth || w.wait) {
		return fmt.Errorf("blockjob: --info only shows; drop it to act on the job")
	}

	ctx, stop := signalContext(c.Context)
	defer stop()
	conn, err := dialQMP(ctx, socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	t := &blockTarget{conn: conn, socket: socket, notes: c.App.ErrWriter}
	disks, err := t.disks(ctx)
	if err != nil {
		return err
	}
	d, err := t.disk(disks, name)
	if err != nil {
		return err
	}
	label := d.Name()
	byDisk, err := allJobs(ctx, conn, disks)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	jobs := byDisk[d.Name()]

	if action == "" && !setBandwidth && !w.wait {
		return printJobs(c, label, jobs, asJSON)
	}
	if len(jobs) == 0 {
		return fmt.Errorf("%s: no block job to act on in %s", label, t.where())
	}
	if len(jobs) > 1 {
		var ids []string
		for _, j := range jobs {
			ids = append(ids, j.ID)
		}
		return fmt.Errorf("%s: several block jobs (%s): qchain acts on one at a time", label, strings.Join(ids, ", "))
	}
	j := jobs[0]
	what := fmt.Sprintf("%s job %s", j.Type, j.ID)

	if setBandwidth {
		if err := conn.BlockJobSetSpeed(ctx, j.ID, speed); err != nil {
			return fmt.Errorf("%s: setting the bandwidth of %s: %w", label, what, qmpDesc(err))
		}
	}
	switch action {
	case "--pause":
		if err := conn.JobPause(ctx, j.ID); err != nil {
			return fmt.Errorf("%s: pausing %s: %w", label, what, qmpDesc(err))
		}
	case "--resume":
		if err := conn.JobResume(ctx, j.ID); err != nil {
			return fmt.Errorf("%s: resuming %s: %w", label, what, qmpDesc(err))
		}
	}
	if action != "--abort" && action != "--pivot" && !w.wait {
		again, err := allJobs(ctx, conn, disks)
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		return printJobs(c, label, again[d.Name()], asJSON)
	}

	job, err := qmp.AttachJob(ctx, conn, j.ID)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", label, what, err)
	}
	onReady := qmp.ReadyReturn
	switch action {
	case "--pivot":
		onReady = qmp.ReadyPivot
	case "--abort":
		job.Abort()
	}
	res, err := waitJob(ctx, c, t, job, label, what, onReady, w)
	if action == "--abort" {
		if errors.Is(err, qmp.ErrJobAborted) {
			fmt.Fprintf(c.App.Writer, "%s: %s aborted\n", label, what)
			return nil
		}
		if err == nil {
			fmt.Fprintf(c.App.Writer, "%s: %s had already finished, too late to abort: its change is in place\n", label, what)
			return printChain(c, t, label, d)
		}
		return err
	}
	if err != nil {
		return err
	}
	if res.Status == qmp.JobReady {
		fmt.Fprintln(c.App.Writer, readyMessage(label, j.ID, readyHint(t, d)))
		return nil
	}
	fmt.Fprintf(c.App.Writer, "%s: %s complete\n", label, what)
	return printChain(c, t, label, d)
}

// printChain shows the disk's chain after a job.
func printChain(c *cli.Context, t *blockTarget, label string, d qmp.Disk) error {
	chain, _, err := chainAfter(c.Context, t, d, "")
	if err != nil {
		return fmt.Errorf("%s: reading the chain again: %w", label, err)
	}
	fmt.Fprintf(c.App.Writer, "%s: %s\n", label, chainLine(chain))
	return nil
}

func printJobs(c *cli.Context, label string, jobs []jobReport, asJSON bool) error {
	if asJSON {
		if jobs == nil {
			jobs = []jobReport{}
		}
		return writeJSON(c.App.Writer, jobs)
	}
	if len(jobs) == 0 {
		fmt.Fprintf(c.App.Writer, "%s: no block job\n", label)
		return nil
	}
	for _, j := range jobs {
		fmt.Fprintf(c.App.Writer, "%s: job %s\n", label, describeJob(j))
	}
	return nil
}

// qmpDesc keeps QEMU's own description of a refused command.
func qmpDesc(err error) error {
	var qe *qmp.Error
	if errors.As(err, &qe) {
		return errors.New(qe.Desc)
	}
	return err
}
