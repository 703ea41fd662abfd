package imagesnap

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// DefaultStartTimeout bounds the start of the storage daemon when
// Options.StartTimeout is zero.
const DefaultStartTimeout = 30 * time.Second

// daemonNode is the node name of the image in the daemon.
const daemonNode = "qchain-image"

// Options configure Create and Delete. The zero value runs
// qemu-storage-daemon from PATH with DefaultStartTimeout.
type Options struct {
	// StorageDaemon is the qemu-storage-daemon program; empty means
	// qmp.StorageDaemonBinary looked up in PATH.
	StorageDaemon string
	// StartTimeout bounds the daemon's start; zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration
}

// Sentinels for refused names, found with errors.Is behind an *Error.
var (
	// ErrNameInUse reports a new snapshot's name that another snapshot of
	// the image has already (qemu-img would take a second one; QEMU's QMP
	// refuses it, and so does qchain: -a and -d could not tell them apart).
	ErrNameInUse = errors.New("imagesnap: snapshot name in use")
	// ErrBadName reports a new snapshot's name that is empty, longer than
	// qcow2.MaxSnapshotNameBytes, or holds a NUL byte.
	ErrBadName = errors.New("imagesnap: bad snapshot name")
)

// Error is a failed or refused snapshot operation.
type Error struct {
	Op       string // "create", "apply" or "delete"
	Image    string // the image as the caller named it
	Snapshot string // the snapshot as the caller named it
	Reason   string // why, in qemu-img's words where it has them
	Err      error  // the cause, for errors.Is and errors.As
}

// Error returns one line: the image, what could not be done, and why.
func (e *Error) Error() string {
	return fmt.Sprintf("%s: could not %s snapshot '%s': %s", e.Image, e.Op, e.Snapshot, e.Reason)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// fail wraps err into an *Error, worded for its cause.
func fail(op, image, snap string, err error) error {
	var ie *Error
	if errors.As(err, &ie) {
		return err
	}
	reason := err.Error()
	var qe *qmp.Error
	switch {
	case errors.Is(err, qcow2.ErrSnapshotNotFound):
		reason = "snapshot not found"
	case errors.Is(err, qcow2.ErrInUse):
		reason = "the image is in use by another process (it holds QEMU's image lock); stop that process first"
	case errors.Is(err, qcow2.ErrNotQcow2):
		reason = "not a qcow2 image (raw images have no internal snapshots)"
	case errors.Is(err, ErrEncrypted):
		reason = strings.TrimPrefix(reason, ErrEncrypted.Error()+": ")
	case errors.Is(err, qmp.ErrNoBinary):
		reason = "this needs qemu-storage-daemon (Debian's qemu-system-common): " + err.Error()
	case errors.As(err, &qe):
		reason = qe.Desc
	default:
		reason = strings.TrimPrefix(reason, image+": ")
	}
	return &Error{Op: op, Image: image, Snapshot: snap, Reason: reason, Err: err}
}

// List returns the internal snapshots of the named image as qemu-img
// lists them, in table order. format is "qcow2", "raw" or "" to probe; a
// raw image has no snapshots, and List returns none for it, as qemu-img
// lists none. List only reads, and takes no lock.
func List(name, format string) ([]qcow2.SnapshotInfo, error) {
	l, _, err := qcow2.OpenLayer(name, format, qcow2.ChainOptions{})
	if err != nil {
		return nil, err
	}
	defer l.Close()
	f, ok := l.(*qcow2.File)
	if !ok {
		return []qcow2.SnapshotInfo{}, nil
	}
	return f.SnapshotInfos()
}

// CheckName reports why name cannot name a new snapshot, if it cannot.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: the name is empty", ErrBadName)
	case len(name) > qcow2.MaxSnapshotNameBytes:
		return fmt.Errorf("%w: the name is %d bytes long, more than QEMU's %d", ErrBadName, len(name), qcow2.MaxSnapshotNameBytes)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: the name holds a NUL byte", ErrBadName)
	}
	return nil
}

// ErrEncrypted reports an encrypted image to Create or Delete: the storage
// daemon would need its key to open it, and qchain takes none.
var ErrEncrypted = errors.New("imagesnap: encrypted image")

// snapshotsForDaemon reads the table of an image the storage daemon is
// about to open, refusing what it could not open.
func snapshotsForDaemon(name string) ([]qcow2.Snapshot, error) {
	f, err := qcow2.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Header.CryptMethod != qcow2.CryptNone {
		return nil, fmt.Errorf("%w: the image is encrypted, and the storage daemon would need its key, which qchain does not take (qemu-img snapshot --object secret,... can; -a needs no key)", ErrEncrypted)
	}
	return f.Snapshots()
}

// Create takes an internal snapshot called snapName of the named qcow2
// image, through blockdev-snapshot-internal-sync on a private
// qemu-storage-daemon. The name must be valid (CheckName) and new. QEMU
// records the snapshot with the daemon's virtual clock (the host's clock)
// as its VM clock and no instruction count, where qemu-img records zeros.
func Create(ctx context.Context, name, snapName string, opts Options) error {
	const op = "create"
	if err := CheckName(snapName); err != nil {
		return &Error{Op: op, Image: name, Snapshot: snapName, Reason: strings.TrimPrefix(err.Error(), ErrBadName.Error()+": "), Err: err}
	}
	snaps, err := snapshotsForDaemon(name)
	if err != nil {
		return fail(op, name, snapName, err)
	}
	for _, s := range snaps {
		if s.Name == snapName {
			return &Error{Op: op, Image: name, Snapshot: snapName,
				Reason: fmt.Sprintf("a snapshot with this name exists already (ID %s)", s.ID), Err: ErrNameInUse}
		}
	}
	err = withDaemon(ctx, name, opts, func(c *qmp.Conn) error {
		return c.BlockdevSnapshotInternalSync(ctx, qmp.BlockdevSnapshotInternal{Device: daemonNode, Name: snapName})
	})
	if err != nil {
		return fail(op, name, snapName, err)
	}
	return nil
}

// Delete deletes the first internal snapshot called snapName of the named
// qcow2 image, through blockdev-snapshot-delete-internal-sync on a private
// qemu-storage-daemon, and returns it as it was listed. Like qemu-img
// snapshot -d (QEMU's bdrv_snapshot_find), it looks at names only, not
// IDs.
func Delete(ctx context.Context, name, snapName string, opts Options) (*qcow2.SnapshotInfo, error) {
	const op = "delete"
	snaps, err := snapshotsForDaemon(name)
	if err != nil {
		return nil, fail(op, name, snapName, err)
	}
	i := slices.IndexFunc(snaps, func(s qcow2.Snapshot) bool { return s.Name == snapName })
	if i < 0 {
		return nil, fail(op, name, snapName, qcow2.ErrSnapshotNotFound)
	}
	// QEMU matches the listed (cut) ID and name; both together name
	// exactly this snapshot even where names repeat.
	info := snaps[i].Info()
	err = withDaemon(ctx, name, opts, func(c *qmp.Conn) error {
		_, err := c.BlockdevSnapshotDeleteInternalSync(ctx, qmp.BlockdevSnapshotDeleteInternal{Device: daemonNode, ID: info.ID, Name: info.Name})
		return err
	})
	if err != nil {
		return nil, fail(op, name, snapName, err)
	}
	return &info, nil
}

// Apply reverts the named qcow2 image to its internal snapshot key (an ID
// or, failing that, a name), natively: see qcow2.ApplySnapshot for what
// it refuses and why an interruption leaves a consistent image.
func Apply(name, key string) (*qcow2.ApplyResult, error) {
	res, err := qcow2.ApplySnapshot(name, key, qcow2.ApplyOptions{})
	if err != nil {
		return nil, fail("apply", name, key, err)
	}
	return res, nil
}

// withDaemon refuses an image in use, then runs fn on a private storage
// daemon that has the image (alone, without its backing files) as node
// daemonNode, and quits the daemon, which flushes and closes the image.
func withDaemon(ctx context.Context, name string, opts Options, fn func(*qmp.Conn) error) error {
	if err := qcow2.CheckNotInUse(name); err != nil {
		return err
	}
	abs, err := filepath.Abs(name)
	if err != nil {
		return err
	}
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = DefaultStartTimeout
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d, err := qmp.StartStorageDaemon(sctx, qmp.StorageDaemonOptions{
		Binary: opts.StorageDaemon,
		Blockdevs: []any{map[string]any{
			"driver": "qcow2", "node-name": daemonNode, "backing": nil,
			"file": map[string]any{"driver": "file", "filename": abs},
		}},
		// A killed qchain must not leave the image locked. QEMU's
		// snapshot code is not crash-safe (a daemon killed in the middle
		// of a create or delete leaves leaked clusters, or COPIED flags
		// on shared clusters that qemu-img check counts as errors), so
		// the daemon is sent SIGTERM: it finishes the command it runs,
		// then quits cleanly.
		DieWithParent: true,
		DeathSignal:   syscall.SIGTERM,
	})
	if err != nil {
		// Another process opened the image since the lock check.
		if msg := err.Error(); strings.Contains(msg, "Failed to get") && strings.Contains(msg, "lock") {
			return fmt.Errorf("%w: %v", qcow2.ErrInUse, err)
		}
		return err
	}
	runErr := fn(d.Conn)
	closeErr := d.Close(context.Background())
	if runErr != nil {
		return runErr
	}
	if closeErr != nil {
		return fmt.Errorf("the storage daemon did not quit cleanly: %w", closeErr)
	}
	return nil
}
