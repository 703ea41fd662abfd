package cli

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/urfave/cli/v2"
)

// The block job commands are virsh-like: blockpull, blockcommit and
// blockcopy start a job on a disk of a running QEMU (--qmp) or, when DISK
// is an image path, on a private qemu-storage-daemon (offline); blockjob
// follows, steers or finishes a job, also one a killed qchain left behind;
// disks lists disks, chains and jobs. The files are block*.go and disks.go;
// the work is package chain/blockjob's, these only parse flags and print.

// Exit codes of the block job commands beyond 0 (done) and 1 (failed).
const exitInterrupted = 130 // the job was aborted on SIGINT or SIGTERM

// maxBandwidthMiB keeps --bandwidth in MiB/s representable in bytes/s.
const maxBandwidthMiB = math.MaxInt64 >> 20

// blockCommands are the virsh-like block job commands (disks, blockpull,
// blockcommit, blockcopy, blockjob).
func blockCommands() []*cli.Command {
	return []*cli.Command{
		disksCommand(),
		blockpullCommand(),
		blockcommitCommand(),
		blockcopyCommand(),
		blockjobCommand(),
	}
}

func qmpFlag() cli.Flag {
	return &cli.StringFlag{Name: "qmp", Usage: "QMP monitor `SOCKET` of the running QEMU; without it DISK is an image path and the job runs offline"}
}

// jobFlags are the flags every job-starting command takes.
func jobFlags() []cli.Flag {
	return []cli.Flag{
		qmpFlag(),
		&cli.StringFlag{Name: "storage-daemon", Usage: "qemu-storage-daemon `BINARY` for offline jobs", Value: blockjob.DefaultStorageDaemon},
		&cli.BoolFlag{Name: "wait", Usage: "wait for the job to end (offline jobs always wait)"},
		&cli.BoolFlag{Name: "verbose", Usage: "show a progress bar on stderr while waiting"},
		&cli.Int64Flag{Name: "bandwidth", Usage: "limit the job to `N` MiB/s (0: unlimited)"},
		&cli.StringFlag{Name: "timeout", Usage: "abort the job if it has not ended after `DURATION` (seconds, or 1m30s); implies --wait"},
	}
}

// bandwidthOf returns --bandwidth in bytes per second.
func bandwidthOf(c *cli.Context) (int64, error) {
	n := c.Int64("bandwidth")
	if n < 0 || n > maxBandwidthMiB {
		return 0, fmt.Errorf("--bandwidth %d: must be between 0 and %d MiB/s", n, int64(maxBandwidthMiB))
	}
	return n << 20, nil
}

// timeoutOf returns --timeout; a bare number is seconds, as virsh's.
func timeoutOf(c *cli.Context) (time.Duration, error) {
	s := c.String("timeout")
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--timeout %q: want seconds or a duration such as 1m30s", s)
	}
	return d, nil
}

// jobWait holds the waiting flags shared by the job commands and
// blockjob.
type jobWait struct {
	wait    bool
	verbose bool
	timeout time.Duration
}

func jobWaitOf(c *cli.Context) (jobWait, error) {
	to, err := timeoutOf(c)
	if err != nil {
		return jobWait{}, err
	}
	return jobWait{wait: c.Bool("wait") || to > 0, verbose: c.Bool("verbose"), timeout: to}, nil
}

// options turns the flags into blockjob's: the timeout, and with
// --verbose a progress bar on stderr.
func (w jobWait) options(c *cli.Context) blockjob.WaitOptions {
	o := blockjob.WaitOptions{Timeout: w.timeout}
	if w.verbose {
		o.NewProgress = func(what string) blockjob.Progress { return newProgressBar(c.App.ErrWriter, what) }
	}
	return o
}

// diskArgs returns the positional arguments: DISK, and DEST for blockcopy.
func diskArgs(c *cli.Context, want int, usage string) ([]string, error) {
	if c.NArg() != want {
		return nil, fmt.Errorf("%s: expected %s, got %d arguments (flags go before the disk)", c.Command.Name, usage, c.NArg())
	}
	return c.Args().Slice(), nil
}

// signalContext returns a context cancelled by SIGINT or SIGTERM, so that
// a waiting command can abort its job cleanly instead of dying.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// openTarget connects to --qmp, or starts a storage daemon on the image
// named by disk when there is no --qmp; notes go to stderr.
func openTarget(ctx context.Context, c *cli.Context, disk string) (*blockjob.Target, error) {
	return blockjob.Open(ctx, blockjob.TargetOptions{
		QMP:           c.String("qmp"),
		Image:         disk,
		StorageDaemon: c.String("storage-daemon"),
		Notes:         c.App.ErrWriter,
	})
}

// jobExit gives a job that was aborted on SIGINT or SIGTERM its exit
// code.
func jobExit(err error) error {
	if errors.Is(err, blockjob.ErrInterrupted) {
		return exitCode(exitInterrupted, err)
	}
	return err
}

// readyMessage is what a job left ready says.
func readyMessage(label, id, hint string) string {
	return fmt.Sprintf("%s: job %s is ready (in sync); %s", label, id, hint)
}

// planFunc turns a job command's flags and arguments into its plan.
type planFunc func(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error)

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

// forceExportPivotFlag is blockcommit's and blockcopy's --force.
func forceExportPivotFlag() cli.Flag {
	return &cli.BoolFlag{Name: "force", Usage: "pivot even though a block export (NBD, ...) can write to the disk: QEMU may lose writes its clients make during the pivot"}
}
