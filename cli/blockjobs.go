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

	"github.com/qchain/qchain/qmp"
	"github.com/urfave/cli/v2"
)

// The block job commands are virsh-like: blockpull, blockcommit and
// blockcopy start a job on a disk of a running QEMU (--qmp) or, when DISK
// is an image path, on a private qemu-storage-daemon (offline); blockjob
// follows, steers or finishes a job, also one a killed qchain left behind;
// disks lists disks, chains and jobs. The files are block*.go.

// Exit codes of the block job commands beyond 0 (done) and 1 (failed).
const exitInterrupted = 130 // the job was aborted on SIGINT or SIGTERM

// Limits of the block job commands.
const (
	// dialTimeout bounds connecting to a QMP socket and the handshake: a
	// socket that is not a QMP monitor may never send a greeting.
	dialTimeout = 10 * time.Second
	// daemonStartTimeout bounds starting the offline qemu-storage-daemon.
	daemonStartTimeout = 30 * time.Second
	// maxBandwidthMiB keeps --bandwidth in MiB/s representable in bytes/s.
	maxBandwidthMiB = math.MaxInt64 >> 20
)

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
		&cli.StringFlag{Name: "storage-daemon", Usage: "qemu-storage-daemon `BINARY` for offline jobs", Value: qmp.StorageDaemonBinary},
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

// dialQMP connects to a QEMU monitor and turns the usual mistakes (no such
// socket, nobody listening, not a QMP socket) into one clear line.
func dialQMP(ctx context.Context, socket string) (*qmp.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, err := qmp.Dial(dctx, socket, qmp.Options{})
	if err == nil {
		return conn, nil
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("--qmp %s: no such socket", socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("--qmp %s: connection refused (is QEMU running, and is this its QMP socket?)", socket)
	case errors.Is(err, syscall.EACCES):
		return nil, fmt.Errorf("--qmp %s: permission denied", socket)
	case errors.Is(err, qmp.ErrProtocol):
		return nil, fmt.Errorf("--qmp %s: not a QMP monitor socket: %w", socket, err)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("--qmp %s: interrupted: %w", socket, ctx.Err())
	case dctx.Err() != nil:
		return nil, fmt.Errorf("--qmp %s: no QMP greeting within %v (not a QMP monitor socket, or QEMU is hung)", socket, dialTimeout)
	}
	return nil, fmt.Errorf("--qmp %s: %w", socket, err)
}
