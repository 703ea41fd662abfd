// Package backup keeps backup folders of the snapshot manager's VMs: one
// folder (DIR) holds points in time of every disk of one VM, the first a
// full copy and the next ones incrementals, each a qcow2 overlay of the
// previous point, so that any point opens directly in QEMU.
//
// Layout of DIR: per disk target T and point number N a file T.N.qcow2
// whose backing file is T.M.qcow2 (M the previous point, recorded as that
// relative name) or none for a full point, and backup.json, the Index: the
// VM's name, DIR's id, the disks and the points, each with its time, its
// kind and per disk the file's size, the bytes the job copied and the
// file's sha256. Files are complete or absent: they are written under
// temporary names, synced and renamed, and backup.json is replaced
// atomically after them; whatever an interrupted run left is removed by
// the next one, which says so.
//
// Incrementals come from persistent dirty bitmaps on each disk's active
// image, one per DIR: BitmapName(id, N) records the writes since point N
// began. A backup starts, in one QMP transaction, the copy of every disk
// (blockdev-backup: full, or incremental with the previous point's bitmap
// and bitmap-mode never) and adds the bitmap of the new point, so no write
// falls between two points; the previous bitmap is removed once the new
// point is stored. The transaction runs in the VM's qemu when its monitor
// answers (live), otherwise in a private qemu-storage-daemon (offline).
// Snapshot operations keep the bitmaps meaningful (package chain): a
// snapshot moves each recording bitmap to the new active image and
// disables it below, a delete merges the removed layers' bitmaps into a
// layer that stays. So the writes since point N are in the union of
// BitmapName(id, N) over the active image and the layers below it that
// hold it, contiguously (bitmapUnion); an incremental merges them, in the
// transaction that starts its job, into a temporary disabled bitmap of
// the active node (unionBitmapName) that blockdev-backup copies from, and
// removes it after. Once a point is stored, the previous points' bitmaps
// are removed: from the active images, and offline also from the layers
// below, which the storage daemon then opens for writing (unless another
// process holds one: a base image other VMs share). A running VM's layers
// below are read-only nodes; their disabled bitmaps of older points,
// never asked for again, stay until an offline run, and each live run
// says how many layers keep some.
//
// A point is full, and Create says why, after a revert since the previous
// point that did not keep that point's bitmap (chain.VM.LastRevert: what
// the disks lost is in no bitmap; a revert to a snapshot taken after the
// point keeps it, and the union then holds every difference), when
// a disk's active image lacks the expected bitmap (an interrupted snapshot
// operation, qemu killed before it stored the bitmap, an interrupted run)
// or has it disabled, inconsistent or busy, when a layer between the
// active image and one that holds it lacks it, or when the disks changed.
// An incremental is never made from bitmaps that may miss a write.
//
// A point that cannot be made (the folder's file system is full, the VM's
// qemu died during the copy) leaves nothing: its files are removed, its
// new bitmap too where the monitor still answers, and the previous
// point's bitmap, which an incremental copy reads without changing
// (bitmap-mode never), still records every write since that point.
//
// Restore writes a standalone image per disk (a full backup job into a
// new qcow2 on a storage daemon, or natively a sparse raw file), checking
// the chain's checksums while it copies and renaming the images into
// place only when every one is complete and checked; Merge folds the
// oldest points into the oldest point kept (block-stream on a storage
// daemon); Verify checks every file with qchain's check, the chains and
// the checksums.
//
// # Security
//
// DIR's content is untrusted input: backup.json is read with a size limit
// and checked (names, counts, point numbers, checksums) before use, file
// names are derived from checked targets and numbers rather than taken
// from the index, and every chain in DIR is opened confined to DIR
// (qcow2.ChainOptions.Root), so a backing name cannot reach outside it.
// Images are checked with qchain's reader before a storage daemon opens
// them.
package backup
