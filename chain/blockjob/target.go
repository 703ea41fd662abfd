package blockjob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qmp"
)

// Disk is a disk of a target with its chain, as Disks returns it (qmp's
// type; its JSON is what qchain disks --output=json prints).
type Disk = qmp.Disk

// DefaultStorageDaemon is the program an offline target starts when
// TargetOptions.StorageDaemon is empty.
const DefaultStorageDaemon = qmp.StorageDaemonBinary

// Limits of opening a target.
const (
	// dialTimeout bounds connecting to a QMP socket and the handshake: a
	// socket that is not a QMP monitor may never send a greeting.
	dialTimeout = 10 * time.Second
	// daemonStartTimeout bounds starting the offline qemu-storage-daemon.
	daemonStartTimeout = 30 * time.Second
)

// TargetOptions say where Open finds the disk. The zero value is not
// usable: set QMP, or Image.
type TargetOptions struct {
	// QMP is the QMP monitor socket of a running QEMU. When it is set the
	// target is live and Image is ignored.
	QMP string
	// Image is the path of the top image of a chain that no process has
	// open. Without QMP, Open starts a private qemu-storage-daemon on it
	// and the target is offline.
	Image string
	// StorageDaemon is the qemu-storage-daemon program for offline jobs: a
	// path, or a name looked up in PATH. Empty means
	// qmp.StorageDaemonBinary.
	StorageDaemon string
	// Notes, if set, receives one-line notes about what qchain did on its
	// own, such as dismissing a finished job that a killed qchain left
	// behind. Nil discards them.
	Notes io.Writer
	// DieWithParent kills the offline storage daemon when the process
	// that started it dies, for callers with nothing to attach to again
	// (the bitmap actions: a daemon left running would hold the image).
	// False keeps the block-job commands' daemon running, so that a
	// killed qchain's job is found and finished by the next one.
	DieWithParent bool
	// DeathSignal is the signal DieWithParent sends (see
	// qmp.StorageDaemonOptions); zero means SIGKILL.
	DeathSignal syscall.Signal
}

// Target is where block jobs run: the QMP monitor of a running QEMU
// (live), or a private qemu-storage-daemon that holds one image's chain as
// explicit -blockdev nodes l0 (top), l1, ... (offline). A Target is not
// safe for concurrent use; Close releases it.
type Target struct {
	conn   *qmp.Conn
	socket string             // live: the QMP socket
	daemon *qmp.StorageDaemon // offline only
	image  string             // offline: the absolute path of the top image
	notes  io.Writer
	closed bool
}

// Open connects to opts.QMP, or without it starts a qemu-storage-daemon
// on opts.Image. The usual mistakes (no such socket, nobody listening, not
// a QMP socket, no such image, the image in use, no daemon binary) come
// back as one line that says what to do.
func Open(ctx context.Context, opts TargetOptions) (*Target, error) {
	notes := opts.Notes
	if notes == nil {
		notes = io.Discard
	}
	if opts.QMP != "" {
		conn, err := dial(ctx, opts.QMP)
		if err != nil {
			return nil, err
		}
		return &Target{conn: conn, socket: opts.QMP, notes: notes}, nil
	}
	binary := opts.StorageDaemon
	if binary == "" {
		binary = qmp.StorageDaemonBinary
	}
	t, err := startOffline(ctx, opts.Image, binary, opts.DieWithParent, opts.DeathSignal)
	if err != nil {
		return nil, err
	}
	t.notes = notes
	return t, nil
}

// Close disconnects, or quits the storage daemon (a job still running in
// it is cancelled by its exit; the daemon's files are flushed and closed
// once Close returns). Closing a closed Target does nothing: Run closes an
// offline target itself once its job has completed.
func (t *Target) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	if t.daemon != nil {
		return t.daemon.Close(context.Background())
	}
	return t.conn.Close()
}

// Offline reports whether the target is a private qemu-storage-daemon
// rather than a running QEMU.
func (t *Target) Offline() bool { return t.daemon != nil }

// String names the target in messages: "QEMU at SOCKET", or
// "qemu-storage-daemon on IMAGE".
func (t *Target) String() string {
	if t.Offline() {
		return "qemu-storage-daemon on " + t.image
	}
	return "QEMU at " + t.socket
}

// Label names disk d in messages: its name live, the image offline (where
// the node name l0 would mean nothing to the user).
func (t *Target) Label(d qmp.Disk) string {
	if t.Offline() {
		return t.image
	}
	return d.Name()
}

// ReadyHint tells how to finish a job on d that was left ready (in sync),
// in qchain's command line terms.
func (t *Target) ReadyHint(d qmp.Disk) string {
	return fmt.Sprintf("finish it with qchain blockjob --qmp %s --pivot %s (or --abort)", t.socket, d.Name())
}

// dial connects to a QEMU monitor and turns the usual mistakes (no such
// socket, nobody listening, not a QMP socket) into one clear line.
func dial(ctx context.Context, socket string) (*qmp.Conn, error) {
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

// startOffline opens image's chain in a private qemu-storage-daemon.
func startOffline(ctx context.Context, image, binary string, dieWithParent bool, deathSignal syscall.Signal) (*Target, error) {
	abs, err := filepath.Abs(image)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(abs); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such image (give --qmp SOCKET for a disk of a running VM)", image)
		}
		return nil, err
	}
	devs, err := chain.DaemonBlockdevs(abs, 0)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, daemonStartTimeout)
	defer cancel()
	d, err := qmp.StartStorageDaemon(sctx, qmp.StorageDaemonOptions{Binary: binary, Blockdevs: devs, DieWithParent: dieWithParent, DeathSignal: deathSignal})
	if err != nil {
		if errors.Is(err, qmp.ErrNoBinary) {
			return nil, fmt.Errorf("%s: offline jobs need qemu-storage-daemon, and %q was not found (install Debian's qemu-system-common, give --storage-daemon BINARY, or --qmp SOCKET for a running VM)", image, binary)
		}
		if strings.Contains(err.Error(), "lock") {
			return nil, fmt.Errorf("%s: in use by another process (a running VM? give its --qmp SOCKET): %w", image, err)
		}
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	return &Target{conn: d.Conn, daemon: d, image: abs}, nil
}
