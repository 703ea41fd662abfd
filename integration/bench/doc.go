// Command bench measures qchain against qemu-img on generated images, in
// one run, and prints the ratios (`make bench`, or
// `go run ./integration/bench [-n N] [-quick] [-dir DIR] [-run REGEXP]`;
// `make bench BENCH_FLAGS='-run snapshot'` measures only the cases whose
// name matches, and makes only their images).
//
// Cases, each with the goal it is held to:
//   - --version of both tools: the start-up baseline, no goal;
//   - map --output=json of a 10-layer 64 GiB chain, 5,000 random 64 KiB
//     writes per layer: qchain at least 20x faster than qemu-img;
//   - info --backing-chain --output=json of the same chain: at least 5x;
//   - check --output=json of an 8 GiB image with 20,000 random 64 KiB
//     writes: at least 3x;
//   - peak memory (max RSS) of qchain map and check on a 1 TiB image with
//     scattered writes: under 64 MiB;
//   - block jobs (jobs.go): an active commit against a direct QMP client
//     (under 5% overhead), offline commit and pull against qemu-img
//     (reported), and snapshot create + snapshot delete with nothing
//     written between against qemu-img create -b + qemu-img commit (qchain
//     at least as fast: the merge copies nothing and starts no daemon);
//   - backups (backup.go, issue 11; -run backup): a VM of the snapshot
//     manager, offline, on a 64 GiB disk with 8 GiB of data (an overlay of
//     a cached base), a fresh state directory and backup folder in the
//     work folder next to the images. After a full point 1, 1% of the
//     disk's clusters change (10,486 random 64 KiB writes with qemu-io,
//     untimed). From that state, restored before every run (copy not
//     timed): an incremental backup create against backup create --full
//     (at least 20x faster) and against qemu-img convert -O qcow2 of the
//     disk's chain (reported); backup restore of the incremental point
//     against qemu-img convert -O qcow2 of its chain (reported); and the
//     bytes the incremental point holds (allocated, and as backup.json
//     records them) against the bytes changed, distinct clusters written
//     times 64 KiB (within 5%). Each side's untimed run is checked: the
//     point's kind, and qemu-img compare of every result with the disk.
//     -quick: a 1 GiB disk with 128 MiB of data.
//   - export (export.go; -run export): qchain export -o OUT of the
//     10-layer chain of the map cases against qemu-img convert -O raw of
//     the same chain, both into a sparse raw file next to the images that
//     does not exist before the run (removed and synced, untimed); the
//     outputs of the untimed runs are compared with qemu-img compare and
//     their allocated bytes reported (reported, no goal).
//   - checkpoints (checkpoint.go, checkpointclient.go,
//     checkpointclientmain.go; `-run checkpoint`):
//     the real test guest (fixtures/guest) with 256 MiB and 1 GiB of RAM
//     (256 MiB only with -quick) running its records workload, defined
//     with its command line and started by qchain vm start; qchain
//     snapshot create --memory and snapshot revert --force of that
//     checkpoint, then snapshot create --memory --internal and its revert, each
//     against a minimal QMP client that sends the commands qchain sends
//     (migrate-set-capabilities, stop, getfd + migrate fd:,
//     the blockdev-snapshot transaction at pre-switchover,
//     migrate-continue, cont; for the revert quit, a new overlay, qemu
//     with -S -incoming defer, getfd + migrate-incoming, cont;
//     snapshot-save and snapshot-load jobs) to a qemu the bench starts
//     with the command line qchain would give it. The client is a program
//     of its own, as for a person driving bare QEMU: each operation is a
//     process, this bench re-executed in client mode (ckClientArg first;
//     checkpointclientmain.go) from a copy of its binary, started and
//     timed through the same launcher as qchain's commands, fork to exit;
//     its revert starts the new qemu in a session of its own, as qchain
//     does, and names it in a pid file the bench stops it through. The
//     start-up floor prints the client's no-op start beside the empty Go
//     program's. make bench builds the bench static (CGO_ENABLED=0) like
//     qchain; a plain go run with cgo at hand links it dynamically, which
//     only slows the client (the floor line says which). Like qchain,
//     the client waits on QEMU's events (MIGRATION, with the events
//     capability; JOB_STATUS_CHANGE) and waits out finish-migrate before
//     cont. qchain's overhead under 5%, judged on the medians of the
//     time outside QEMU's own parts, timed
//     with QEMU's clock on both sides (qemutrace.go): the guest's qemu
//     runs through an exec stamp that notes when it is executed, and logs
//     trace events with timestamps (-msg timestamp=on, -D with %d, one
//     file per process). QEMU's parts are a snapshot job's created to
//     concluded; for an external create migrate received to the pause
//     before the switchover and migrate-continue received to completed;
//     for an external revert the old qemu's quit received
//     to its exit (a pidfd in the bench), the new one's exec to its
//     machine's reset (the end of its start-up), migrate-incoming to the
//     state loaded, and cont; they vary from run to run by more than the
//     goal, and the wall times are printed beside. The external revert is
//     also printed in parts, the tool's and QEMU's in turn. The reverts
//     are also set against a cold boot (qemu start to the console's READY
//     line), and the internal revert must take under a second.
//
// Every timing warms the page cache with one untimed run of each tool, then
// takes the median of -n runs, alternating the tools. The outputs of both
// tools are compared once parsed (and byte for byte, reported only); a
// parsed difference, or a different exit status, makes the command exit 1.
// A missed speed or memory goal is reported, not fatal. The checkpoint
// cases take one untimed run of each side (none with -quick), then -n
// timed runs each, every run on a fresh disk and state folder (on
// /dev/shm when it has room), waiting for the guest to acknowledge
// records after each operation and refusing a boot after a revert; every
// qemu they start is stopped at the end of its run, also on failure or
// interrupt.
// Peak RSS is measured through a launcher (launcher.go) so that the
// bench's own memory does not leak into the tools' figures.
//
// Images are made with qemu-img create and qemu-io (fixed seeds) and cached
// under -dir (env BENCH_DIR, default $TMPDIR/qchain-bench), one folder per
// set of parameters, so a second run reuses them. The qchain binary is
// $QCHAIN_BIN (exported by the Makefile) or bin/qchain under the module
// root.
package main
