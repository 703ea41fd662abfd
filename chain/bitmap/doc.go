// Package bitmap manages the persistent dirty bitmaps of qcow2 images,
// the groundwork of incremental backups: qemu-img bitmap's actions (add,
// remove, clear, enable, disable, merge) on an image file or on a running
// VM's disk, and a listing with each bitmap's flags and dirty byte count.
//
// NewPlan is a pure function of a Request and the bitmaps observed: it
// runs the actions in order on a copy of their states and refuses a
// request that qemu-img would fail half-way (an action on a bitmap that
// does not exist at that point, an add of one that does, the use of an
// inconsistent one), so that a refused request changes nothing. Apply
// observes, plans and runs: offline through a private qemu-storage-daemon
// (the one chain/blockjob starts for offline jobs, here sent SIGTERM when
// its parent dies: a killed qchain leaves no daemon holding the image, and
// the daemon finishes its transaction and stores the image's bitmaps
// consistent before it quits), which stores the
// bitmaps in the file when it closes it, after which Apply reads them back
// natively and checks them; live through the QMP monitor of the QEMU that
// has the disk open, which stores them when it closes the image. Either
// way the actions run as QMP transactions (block-dirty-bitmap-*), all or
// nothing; a request is cut into several only where qemu-img's order
// cannot be one transaction (an add after a remove of the same name).
// qemu-img is never run.
//
// List reads the bitmap directory and tables natively (qcow2), without a
// lock, and counts each bitmap's set bits; live it asks QEMU.
//
// # Security
//
// Images are read through qcow2, which checks every length, count and
// offset of the bitmap directory and tables against the file size and
// QEMU's limits before it allocates or reads. An image is opened for
// writing only by QEMU, and only after it was checked that no other
// process holds it (QEMU's lock bytes). The QMP peer is trusted with the
// disks it serves.
package bitmap
