// Package qmp talks to QEMU: the QMP transport, typed block and job
// commands, the job runner, disk chains of a live VM, the guest agent, and
// a private qemu-storage-daemon for offline jobs.
//
// It owns:
//
//   - Conn, a QMP connection that implements go-qemu's qmp.Monitor (so
//     github.com/digitalocean/go-qemu/qmp/raw runs over it) and fixes what
//     go-qemu's SocketMonitor gets wrong: every command carries an id and
//     replies are routed by it, lines of up to 64 MiB (at least 16 MiB) are
//     read, every call takes a context, events are buffered per subscriber
//     and never hold up replies, QMP errors are typed (*Error, with the
//     error class), and a closed socket fails every waiting call at once
//     (ErrClosed, wrapping the cause).
//   - Typed requests for the commands go-qemu's QEMU 2.11 schema lacks or
//     gets wrong (job-*, block-commit/stream with node names and
//     auto-finalize/auto-dismiss, mirrors, snapshots, transaction, the
//     query-jobs/query-block/query-named-block-nodes replies).
//   - The job runner (StartJob, AttachJob, Job.Wait): jobs run with
//     auto-dismiss off; JOB_STATUS_CHANGE events are only a hint to poll,
//     query-jobs is the truth; pending jobs are finalized, ready jobs
//     pivoted or cancelled once, concluded jobs read and dismissed. A job
//     left behind by a killed process is attached to by its deterministic
//     id (JobID) and driven to the end the same way.
//   - DiskChains: every disk of a running QEMU with its chain of node
//     names, filenames and formats, for -drive and -blockdev alike.
//   - DiskExports: the block exports (NBD, FUSE, ...) attached to a node
//     of a disk, and whether each can write, read from the block graph's
//     permissions (QEMU reports no export's writability directly).
//   - GuestAgent and WithFrozenFilesystems: qemu-ga's freeze and thaw, with
//     a thaw on every path out.
//   - StartStorageDaemon: a private qemu-storage-daemon for jobs on images
//     no VM has open.
//   - Migration (migrate.go): capabilities, migrate and migrate-incoming to
//     a file: URI or a descriptor passed over the socket (GetFd,
//     ExecuteWithFile: SCM_RIGHTS), migrate-continue after
//     pause-before-switchover, WaitMigration polling query-migrate; stop,
//     cont, query-status and system_powerdown; the snapshot-save, -load
//     and -delete jobs of internal checkpoints.
//
// Conn, GuestAgent and Job (for Abort) are safe for concurrent use.
//
// # Security
//
// A QMP or guest-agent peer is trusted with the disks it serves but its
// output is still bounded: lines are limited (Options.MaxLineSize), each
// event subscriber's buffer is bounded, and chains walked from QEMU's
// graph have a depth limit and loop detection. The guest agent runs
// inside the guest and must be treated as untrusted: its replies are only
// decoded into small typed values, and WithFrozenFilesystems bounds the
// thaw with its own timeout so a hostile or hung agent cannot hold the
// caller. The QMP socket gives full control of the VM; create it in a
// folder only its owner can enter (StartStorageDaemon uses a fresh 0700
// temporary folder).
package qmp
