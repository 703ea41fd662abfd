package qcow2

import "errors"

// Lengths of QEMU's QEMUSnapshotInfo strings (include/block/snapshot.h:
// id_str[128], name[256], NUL included). QEMU keeps longer names in the
// table but lists them cut to these lengths; it cuts a new snapshot's name
// to MaxSnapshotNameBytes when it takes one.
const (
	MaxSnapshotIDBytes   = 127
	MaxSnapshotNameBytes = 255
)

// ErrSnapshotNotFound reports that no internal snapshot has the ID or the
// name asked for.
var ErrSnapshotNotFound = errors.New("qcow2: snapshot not found")

// FindSnapshot returns the index in snaps of the snapshot key stands for,
// looked up as qemu-img snapshot -a looks it up (QEMU's
// find_snapshot_by_id_or_name): the first whose ID is key, else the first
// whose name is key; -1 when there is none.
func FindSnapshot(snaps []Snapshot, key string) int {
	for i := range snaps {
		if snaps[i].ID == key {
			return i
		}
	}
	for i := range snaps {
		if snaps[i].Name == key {
			return i
		}
	}
	return -1
}

// Info returns the snapshot as qemu-img lists it, in `info --output=json`'s
// "snapshots" entries and in `snapshot -l`'s table: ID and name cut to
// QEMU's lengths, the VM clock split into seconds and nanoseconds, no
// instruction count when none is recorded.
func (s *Snapshot) Info() SnapshotInfo {
	si := SnapshotInfo{
		VMStateSize: s.VMStateSize,
		DateSec:     s.DateSec,
		DateNsec:    s.DateNsec,
		VMClockSec:  s.VMClockNsec / 1e9,
		VMClockNsec: s.VMClockNsec % 1e9,
		ID:          cutString(s.ID, MaxSnapshotIDBytes),
		Name:        cutString(s.Name, MaxSnapshotNameBytes),
	}
	if s.HasIcount() {
		si.Icount = ptr(s.Icount)
	}
	return si
}

// SnapshotInfos returns the image's internal snapshots as qemu-img lists
// them (see Snapshot.Info), in table order; an empty, non-nil slice when
// there are none.
func (f *File) SnapshotInfos() ([]SnapshotInfo, error) {
	snaps, err := f.Snapshots()
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, 0, len(snaps))
	for i := range snaps {
		out = append(out, snaps[i].Info())
	}
	return out, nil
}

// cutString cuts s to at most n bytes, as QEMU's pstrcpy does (which may
// split a UTF-8 sequence; so does this).
func cutString(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
