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
// receive a commit when nothing else uses them. A live delete is refused
// before it starts while a block export can write to a disk it commits or
// pulls on (QEMU loses writes an export's new clients make while a job
// changes the chain; see qmp.ExportError), unless
// DeleteOptions.ForceExports.
//
// # Files no chain needs
//
// A VM's files are the overlays qchain created for it (VM.Owned) and the
// images it was defined on (VM.Originals: vm define --disk hands them to
// the VM). Every snapshot operation that leaves one of them needed by no
// chain of the VM (delete, --children included, rotate, revert) removes it,
// or keeps it and says why in the plan (Plan.Kept, printed by the CLI,
// human and JSON): while another VM of the state directory reads it, while
// an image in its folder has it in its backing chain (qcow2.WhoUses; an
// image the same operation removes does not count), or while a process
// holds QEMU's lock of it (qcow2.InUse; the remove step itself runs under
// that lock). `delete --metadata` touches no file: it names the files it
// leaves unused and they stop being the VM's.
// Manager.UnusedFiles (vm show) lists such files with the reason they are
// still there. This changed deliberately (issue 12): qchain used to delete
// only the files it created, so a VM's original image that a pull left
// unused stayed on disk with no word about it. A VM defined before
// Originals existed has none recorded, and its original images stay.
//
// # VMs qchain starts
//
// A VM may carry its qemu command line (VM.Command), naming its disks by
// their targets as drive ids; QemuArgs adds each disk's -drive on its
// active image and the QMP monitor, and refuses the options qchain owns.
// StartVM runs qemu in a session of its own (it outlives qchain) with its
// output in qemu.log and its pid in qemu.pid in the VM's folder; StopVM
// powers it down, then quits it. A VM without a command line is attached
// to through its QMP socket as before.
//
// # Checkpoints with memory
//
// CreateCheckpoint saves a running VM's RAM and device state into a file
// beside its disks (Snapshot.Memory) with QEMU's migration, paused before
// the switchover (pause-before-switchover): at that point the vCPUs are
// stopped and the disks still active, and the transaction that puts every
// disk on a new overlay runs then, so memory and disks are from one
// instant. The steps are journaled (StepSaveMemory, StepResume); a save
// that fails before the switch is rolled back, one that loses the memory
// after it keeps a disk-only snapshot, and Recover of a VM whose qemu died
// meanwhile does the same. Reverting a checkpoint (RevertWith) is a
// disk-only revert's new branch followed by StepLoadMemory: qemu started
// from the VM's command line with -incoming defer, the state loaded, the
// guest resumed. Deleting the checkpoint removes its memory state file.
// A VM with an NVRAM (VM.NVRAM) has it copied at the checkpoint's
// instant and put back before a revert starts qemu.
//
// An internal checkpoint (CreateInternalCheckpoint) lives inside the
// active qcow2 images instead (QEMU's snapshot-save job, no overlay); the
// tree holds it like any other snapshot, and its file may be its
// descendants' own file. It is reverted (snapshot-load, or qemu started
// with -loadvm) only while its images are still active, and deleted with
// snapshot-delete or offline.
//
// A disk-only internal snapshot (CreateInternalSnapshot) is a tag in
// every active image taken at one instant (StepInternalSnapshot: one QMP
// transaction live, imagesnap offline), reverted offline with the VM
// stopped (StepInternalApply). Whether a disk changed since an internal
// snapshot is measured (qcow2.File.UnchangedSnapshots): a revert needs
// force only when a disk's state is no snapshot's. No merge takes an
// image holding internal snapshots out of every chain, nor changes the
// backing file they read through.
//
// # Dirty bitmaps
//
// Snapshot operations keep the disks' persistent dirty bitmaps (those of
// incremental backups, and any other) meaningful, as QEMU's
// docs/interop/bitmaps.rst and libvirt do (bitmaps.go): create moves each
// persistent, enabled bitmap of the old active image to the new overlay
// (same name and granularity) and disables the old one, in the switch's
// transaction live, or in StepCarryBitmaps offline; delete merges the
// bitmaps of the layers a commit or a pull removes into the layer that
// stays (live: an active commit into its base while the job is ready,
// other jobs into the active image; offline: into the surviving layer, on
// the storage daemon, also for a merge that copies nothing). The union of
// a name over the layers holding it from the active image down thus
// records every write since the bitmap was added. A snapshot records the
// bitmaps it saw move (SnapshotDisk.Bitmaps); a revert to it gives each
// new overlay recording bitmaps of those names (StepResumeBitmaps), so
// their unions hold every write of the new branch since they began, and
// records itself in VM.LastRevert with the names it kept: for any other
// bitmap the disks lost writes that it does not show, and a bitmap user
// must not trust it across the revert (Revert.LostSince). Where a step is
// interrupted,
// a bitmap is missing from the active image or left in use (inconsistent),
// never silently wrong.
//
// Merges that copy nothing (a commit of an overlay nothing was written
// into, a pull of a layer the image above reads nothing from) run natively
// offline, as a backing file rewrite at most, without a storage daemon,
// unless a layer they remove holds bitmaps to merge.
package chain
