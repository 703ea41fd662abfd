package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Snapshot table limits from QEMU's block/qcow2.h.
const (
	snapshotHeaderSize     = 40
	MaxSnapshotExtraData   = 1024
	MaxSnapshotsTableBytes = 1024 * MaxSnapshots
	noIcount               = ^uint64(0)
)

// Snapshot is one entry of the internal snapshot table.
type Snapshot struct {
	L1TableOffset uint64 `json:"l1_table_offset"`
	L1Size        uint32 `json:"l1_size"`
	ID            string `json:"id"`
	Name          string `json:"name"`
	DateSec       uint32 `json:"date_sec"`
	DateNsec      uint32 `json:"date_nsec"`
	VMClockNsec   uint64 `json:"vm_clock_nsec"`
	VMStateSize   uint64 `json:"vm_state_size"` // the 64-bit size from the extra data when present
	DiskSize      uint64 `json:"disk_size"`     // virtual disk size at snapshot time
	Icount        uint64 `json:"icount"`        // ^0 when not recorded
	ExtraDataSize uint32 `json:"extra_data_size"`
	Offset        int64  `json:"offset"` // file offset of the entry
}

// HasIcount reports whether the entry records an instruction count.
func (s *Snapshot) HasIcount() bool { return s.Icount != noIcount }

// Snapshots returns the internal snapshot table, reading it on first use.
func (f *File) Snapshots() ([]Snapshot, error) {
	f.snapOnce.Do(func() {
		var size uint64
		f.snaps, size, f.snapsErr = ParseSnapshotTable(io.NewSectionReader(f.r, 0, f.size), f.Header.SnapshotsOffset, f.Header.NbSnapshots, f.VirtualSize())
		f.snapsSize = size
		if f.snapsErr != nil {
			f.snapsErr = withFile(f.Name, f.snapsErr)
		}
	})
	return f.snaps, f.snapsErr
}

// ParseSnapshotTable reads n snapshot table entries at off from r, as
// QEMU's qcow2_read_snapshots does, and returns them with the table's size
// in bytes. Entries must lie inside r; diskSize is the image's virtual size,
// the default for entries that do not record theirs.
func ParseSnapshotTable(r *io.SectionReader, off uint64, n uint32, diskSize uint64) ([]Snapshot, uint64, error) {
	if n == 0 {
		return nil, 0, nil
	}
	if n > MaxSnapshots {
		return nil, 0, formatErr(60, "too many snapshots: %d", n)
	}
	fileSize := uint64(r.Size())
	be := binary.BigEndian
	read := func(pos uint64, b []byte) error {
		if pos > fileSize || uint64(len(b)) > fileSize-pos {
			return formatErr(int64(pos), "snapshot table entry is past the end of the file")
		}
		_, err := r.ReadAt(b, int64(pos))
		return err
	}
	var snaps []Snapshot
	var length uint64
	pos := off
	for i := uint32(0); i < n; i++ {
		length = (length + 7) &^ 7
		pos = off + length
		var h [snapshotHeaderSize]byte
		if err := read(pos, h[:]); err != nil {
			return nil, 0, err
		}
		s := Snapshot{
			L1TableOffset: be.Uint64(h[0:]),
			L1Size:        be.Uint32(h[8:]),
			DateSec:       be.Uint32(h[16:]),
			DateNsec:      be.Uint32(h[20:]),
			VMClockNsec:   be.Uint64(h[24:]),
			VMStateSize:   uint64(be.Uint32(h[32:])),
			ExtraDataSize: be.Uint32(h[36:]),
			DiskSize:      diskSize,
			Icount:        noIcount,
			Offset:        int64(pos),
		}
		idLen, nameLen := uint64(be.Uint16(h[12:])), uint64(be.Uint16(h[14:]))
		if s.ExtraDataSize > MaxSnapshotExtraData {
			return nil, 0, formatErr(int64(pos+36), "too much extra data in snapshot table entry %d: %d bytes", i, s.ExtraDataSize)
		}
		extra := make([]byte, s.ExtraDataSize)
		if err := read(pos+snapshotHeaderSize, extra); err != nil {
			return nil, 0, err
		}
		if len(extra) >= 8 {
			s.VMStateSize = be.Uint64(extra)
		}
		if len(extra) >= 16 {
			s.DiskSize = be.Uint64(extra[8:])
		}
		if len(extra) >= 24 {
			s.Icount = be.Uint64(extra[16:])
		}
		names := make([]byte, idLen+nameLen)
		if err := read(pos+snapshotHeaderSize+uint64(s.ExtraDataSize), names); err != nil {
			return nil, 0, err
		}
		s.ID, s.Name = cString(names[:idLen]), cString(names[idLen:])
		length += snapshotHeaderSize + uint64(s.ExtraDataSize) + idLen + nameLen
		if length > MaxSnapshotsTableBytes {
			return nil, 0, formatErr(int64(off), "snapshot table is too big")
		}
		snaps = append(snaps, s)
	}
	return snaps, length, nil
}

// SnapshotByIDOrName finds a snapshot the way qemu-img -l does: by ID
// first, then by name.
func (f *File) SnapshotByIDOrName(key string) (*Snapshot, error) {
	snaps, err := f.Snapshots()
	if err != nil {
		return nil, err
	}
	for i := range snaps {
		if snaps[i].ID == key {
			return &snaps[i], nil
		}
	}
	for i := range snaps {
		if snaps[i].Name == key {
			return &snaps[i], nil
		}
	}
	return nil, fmt.Errorf("%s: no internal snapshot %q", f.Name, key)
}
