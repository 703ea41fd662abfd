package qmp

import "context"

// BlockdevSnapshotInternal is the argument of
// blockdev-snapshot-internal-sync: take an internal snapshot called Name
// of the qcow2 image behind Device (a backend name or a node name). QEMU
// refuses an empty name and a name that another snapshot of the image
// already has, and truncates a name longer than 255 bytes.
type BlockdevSnapshotInternal struct {
	Device string `json:"device"`
	Name   string `json:"name"`
}

// BlockdevSnapshotDeleteInternal is the argument of
// blockdev-snapshot-delete-internal-sync: delete the internal snapshot
// that matches ID and Name (each optional, at least one given; with both,
// the snapshot must match both).
type BlockdevSnapshotDeleteInternal struct {
	Device string `json:"device"`
	ID     string `json:"id,omitempty"`
	Name   string `json:"name,omitempty"`
}

// SnapshotInfo is QAPI's SnapshotInfo, one internal snapshot as QEMU
// reports it. Icount is nil when the snapshot records none.
type SnapshotInfo struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	VMStateSize int64   `json:"vm-state-size"`
	DateSec     int64   `json:"date-sec"`
	DateNsec    int64   `json:"date-nsec"`
	VMClockSec  int64   `json:"vm-clock-sec"`
	VMClockNsec int64   `json:"vm-clock-nsec"`
	Icount      *uint64 `json:"icount,omitempty"`
}

// BlockdevSnapshotInternalSync runs blockdev-snapshot-internal-sync. On a
// daemon without a guest, QEMU records its own virtual clock (the host's
// clock there) as the snapshot's VM clock, and no instruction count.
func (c *Conn) BlockdevSnapshotInternalSync(ctx context.Context, a BlockdevSnapshotInternal) error {
	return c.Execute(ctx, "blockdev-snapshot-internal-sync", a, nil)
}

// BlockdevSnapshotDeleteInternalSync runs
// blockdev-snapshot-delete-internal-sync and returns the snapshot QEMU
// deleted.
func (c *Conn) BlockdevSnapshotDeleteInternalSync(ctx context.Context, a BlockdevSnapshotDeleteInternal) (*SnapshotInfo, error) {
	var out SnapshotInfo
	if err := c.Execute(ctx, "blockdev-snapshot-delete-internal-sync", a, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SnapshotSave is the argument of snapshot-save (QEMU 6.0+): a job that
// takes internal snapshot Tag of every node of Devices, with the VM's
// state saved into VMState (one of them), with the vCPUs stopped
// meanwhile, as HMP savevm.
type SnapshotSave struct {
	JobID   string   `json:"job-id"`
	Tag     string   `json:"tag"`
	VMState string   `json:"vmstate"`
	Devices []string `json:"devices"`
}

// SnapshotLoad is the argument of snapshot-load: a job that reverts every
// node of Devices to internal snapshot Tag and loads the VM's state from
// VMState, as HMP loadvm.
type SnapshotLoad SnapshotSave

// SnapshotDelete is the argument of snapshot-delete: a job that deletes
// internal snapshot Tag from every node of Devices.
type SnapshotDelete struct {
	JobID   string   `json:"job-id"`
	Tag     string   `json:"tag"`
	Devices []string `json:"devices"`
}

// QEMU creates the snapshot jobs with manual dismiss already; they have
// no auto-finalize or auto-dismiss arguments.
func (a SnapshotSave) jobStart() (string, string, any)   { return "snapshot-save", a.JobID, a }
func (a SnapshotLoad) jobStart() (string, string, any)   { return "snapshot-load", a.JobID, a }
func (a SnapshotDelete) jobStart() (string, string, any) { return "snapshot-delete", a.JobID, a }
