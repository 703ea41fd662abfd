// Package imagesnap manages the internal snapshots of one qcow2 image that
// no process has open, as `qemu-img snapshot` does, without a VM and
// without qemu-img:
//
//   - List reads the snapshot table natively and read-only; it works on
//     images in use (like qemu-img -U) and never writes.
//   - Create and Delete run blockdev-snapshot-internal-sync and
//     blockdev-snapshot-delete-internal-sync on a private
//     qemu-storage-daemon that opens the image alone (no backing files: the
//     snapshots live in this one file) and quits when done, so QEMU itself
//     writes the snapshot table, the L1 copies and the refcounts.
//   - Apply reverts the image to a snapshot natively with
//     qcow2.ApplySnapshot, because QEMU has no QMP command for that on a
//     daemon without a VM (loadvm and snapshot-load need one).
//
// Snapshots are named as qemu-img names them: Apply takes an ID or a name
// (the ID wins), Delete a name only; Create takes a name, which must be
// new, non-empty and at most qcow2.MaxSnapshotNameBytes long (QEMU would
// cut it).
// Every refusal is decided from the file before anything opens it for
// writing, so a refused call leaves the image's bytes and mtime as they
// were. An image another process holds (QEMU's lock bytes) is refused with
// an error wrapping qcow2.ErrInUse.
//
// Errors are *Error values: one line naming the image, the operation and
// the snapshot, worded as qemu-img words them ("could not delete snapshot
// 'x': snapshot not found"); errors.Is finds the sentinel behind them
// (qcow2.ErrSnapshotNotFound, ErrNameInUse, ErrBadName, ErrEncrypted,
// qcow2.ErrInUse, qcow2.ErrNotQcow2, qmp.ErrNoBinary). Create and Delete
// refuse encrypted images, which the daemon could not open without their
// key; Apply needs no key (it touches only unencrypted metadata).
//
// # Security
//
// The image is parsed by qcow2, which checks every length and count it
// reads from the file. Names go to QEMU as JSON strings; names with a NUL
// byte are refused, since QEMU would cut them there.
package imagesnap
