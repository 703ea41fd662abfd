// Package blockjob runs virsh-like block jobs on one disk: pull
// (block-stream), commit (block-commit) and copy (drive-mirror; a live
// shallow copy blockdev-mirror into a node qchain adds on the disk's own
// backing node, deleted again once nothing uses it), and
// follows, steers or finishes a job already running, also one that a
// killed process left behind.
//
// A Target is where the jobs run: the QMP monitor of a running QEMU
// (live), or a private qemu-storage-daemon that qchain starts on one
// image's chain and stops again (offline). PlanPull, PlanCommit and
// PlanCopy resolve a disk by the names a user gives it and turn the
// options into a Plan, refusing what cannot work before anything starts;
// Run starts the plan's job, waits for it with a progress callback, a
// timeout and a clean abort when its context is cancelled, and reports the
// chain afterwards. DiskJobs and Control are the verbs on a job that runs
// already: abort, pivot, pause, resume, a new bandwidth limit, or waiting.
// Disks and Jobs list what a target holds.
//
// Errors are one line naming the disk and the job, written for the qchain
// command line (they name its flags where a flag is the remedy). A job
// that ends other than as asked returns an *EndError; errors.Is(err,
// ErrInterrupted) tells a cancelled wait apart.
//
// A live pivot (an active commit's, a copy's, Control's Pivot of either)
// is refused before anything is sent while a block export on a node of
// the disk can write to it, or may (qmp.CheckExports): QEMU loses writes
// an export's new clients make while a job switches the disk. The error
// wraps qmp.ErrWritableExport and names the exports; ForceExports in the
// options pivots anyway.
//
// Jobs follow qmp's rules: auto-dismiss off, deterministic ids
// (qmp.JobID), query-jobs the truth. A disk that runs a job refuses a
// second one; a concluded job of qchain's that holds the id a new job needs
// is dismissed first, with a note.
//
// # Security
//
// The image chains read here (to start an offline daemon on exactly the
// files qchain resolved, and to report a chain after an offline job) are
// opened read-only through qcow2, which checks every length and count it
// reads. The QMP peer is trusted with the disks it serves. Files are
// created only as a copy's destination (refusing an existing file unless
// asked to reuse it) and removed only as a commit's committed layers after
// success, never while any disk's chain still uses them.
package blockjob
