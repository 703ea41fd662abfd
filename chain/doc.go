// Package chain is qchain's snapshot manager: a VM is a named set of disks
// (target -> active image), and each VM has a tree of external snapshots.
// It plans and executes create, revert, delete-with-merge and rotate,
// offline (native overlay creation and header rewrites; data moves as block
// jobs on a private qemu-storage-daemon) or live (the same jobs on the
// VM's running qemu, through QMP).
//
// It owns the state directory: per VM a JSON file written atomically (temp
// file, fsync, rename, fsync of the folder) under a per-VM lock, and a
// journal written before any multi-step operation, so that an interrupted
// operation is finished by Recover and noticed by every later one.
//
// Which file holds which point in time: taking snapshot S of a disk makes
// the disk's active image S's file (it becomes read-only: a new overlay on
// top of it takes the guest's writes). A child snapshot's file is an
// overlay of its parent's file. Deleting S merges S's file with the files
// above it: either commit (the one overlay above is copied into S's file,
// which then holds that overlay's point in time) or pull (S's data is copied
// into every overlay above, which then no longer need S's file). The
// metadata follows every such move.
//
// # Safety
//
// Plans are pure functions of the metadata and of the chains the files (or
// qemu) show; any mismatch between the two is an error, never a guess. No
// step writes into a file that anything outside the operation depends on:
// a file used by another branch or another VM of the state directory, and
// every image below the VM's own chain (a shared gold image), is only ever
// read. The VM's own images, its original disk images included, may
// receive a commit when nothing else uses them; qchain deletes only the
// files it created. A live delete is refused before it starts while a
// block export can write to a disk it commits or pulls on (QEMU loses
// writes an export's new clients make while a job changes the chain; see
// qmp.ExportError), unless DeleteOptions.ForceExports.
package chain
