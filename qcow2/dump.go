package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// RawHeader decodes the header fields of b without validating them, so
// forensics can show the header of an image that does not open. Only the
// magic and enough bytes for the version's fixed header are required.
func RawHeader(b []byte) (*Header, error) {
	be := binary.BigEndian
	if len(b) < 8 || be.Uint32(b) != Magic {
		return nil, fmt.Errorf("%w: no qcow2 magic", ErrNotQcow2)
	}
	if len(b) < v2HeaderLength {
		return nil, formatErr(0, "truncated qcow2 header: %d bytes", len(b))
	}
	h := &Header{
		Version:               be.Uint32(b[4:]),
		BackingFileOffset:     be.Uint64(b[8:]),
		BackingFileSize:       be.Uint32(b[16:]),
		ClusterBits:           be.Uint32(b[20:]),
		Size:                  be.Uint64(b[24:]),
		CryptMethod:           be.Uint32(b[32:]),
		L1Size:                be.Uint32(b[36:]),
		L1TableOffset:         be.Uint64(b[40:]),
		RefcountTableOffset:   be.Uint64(b[48:]),
		RefcountTableClusters: be.Uint32(b[56:]),
		NbSnapshots:           be.Uint32(b[60:]),
		SnapshotsOffset:       be.Uint64(b[64:]),
		RefcountOrder:         4,
		HeaderLength:          v2HeaderLength,
	}
	if h.Version >= 3 && len(b) >= v3HeaderLength {
		h.IncompatibleFeatures = be.Uint64(b[72:])
		h.CompatibleFeatures = be.Uint64(b[80:])
		h.AutoclearFeatures = be.Uint64(b[88:])
		h.RefcountOrder = be.Uint32(b[96:])
		h.HeaderLength = be.Uint32(b[100:])
		if h.HeaderLength > v3HeaderLength && len(b) > v3HeaderLength {
			h.CompressionType = b[104]
		}
	}
	return h, nil
}

// ReadRawHeader reads the first 4 KiB of r and decodes them with RawHeader.
func ReadRawHeader(r io.ReaderAt) (*Header, error) {
	b := make([]byte, 4096)
	n, err := r.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return RawHeader(b[:n])
}

// L1Dump is one non-zero L1 entry as stored.
type L1Dump struct {
	Index    uint64 `json:"index"`
	Entry    uint64 `json:"entry"`
	L2Offset uint64 `json:"l2_offset"`
	Copied   bool   `json:"copied"`
	Reserved uint64 `json:"reserved_bits,omitempty"`
}

// DumpL1 returns the non-zero entries of the active L1 table.
func (f *File) DumpL1() ([]L1Dump, error) {
	l1, err := f.L1()
	if err != nil {
		return nil, err
	}
	var out []L1Dump
	for i, e := range l1 {
		if e == 0 {
			continue
		}
		out = append(out, L1Dump{Index: uint64(i), Entry: e, L2Offset: e & L1EntryOffsetMask, Copied: e&FlagCopied != 0, Reserved: e & L1EntryReservedMask})
	}
	return out, nil
}

// L2Dump is one non-zero L2 entry, decoded.
type L2Dump struct {
	Index            uint64  `json:"index"`
	GuestOffset      uint64  `json:"guest_offset"`
	Entry            uint64  `json:"entry"`
	Bitmap           *uint64 `json:"subcluster_bitmap,omitempty"`
	Type             string  `json:"type"`
	HostOffset       *uint64 `json:"host_offset,omitempty"`
	Copied           bool    `json:"copied"`
	CompressedOffset *uint64 `json:"compressed_offset,omitempty"`
	CompressedSize   *uint64 `json:"compressed_size,omitempty"`
	Reserved         uint64  `json:"reserved_bits,omitempty"`
}

// DumpL2 returns the non-zero entries of the L2 table that L1 entry index
// points to, and that table's offset.
func (f *File) DumpL2(index uint64) (uint64, []L2Dump, error) {
	l1, err := f.L1()
	if err != nil {
		return 0, nil, err
	}
	if index >= uint64(len(l1)) {
		return 0, nil, fmt.Errorf("%s: L1 index %d out of range (l1_size %d)", f.Name, index, len(l1))
	}
	off := l1[index] & L1EntryOffsetMask
	if off == 0 {
		return 0, nil, nil
	}
	t, err := f.l2Table(off)
	if err != nil {
		return off, nil, err
	}
	var out []L2Dump
	n := f.l2Entries()
	for i := uint64(0); i < n; i++ {
		e := f.entryAt(t, i)
		if e.Desc == 0 && e.Bitmap == 0 {
			continue
		}
		d := L2Dump{Index: i, GuestOffset: (index*n + i) << f.Header.ClusterBits, Entry: e.Desc, Copied: e.Desc&FlagCopied != 0}
		kind := f.Geo.ClusterKind(e)
		d.Type = kind.String()
		if f.Geo.ExtendedL2 {
			d.Bitmap = ptr(e.Bitmap)
		}
		switch kind {
		case Compressed:
			o, s := f.Geo.CompressedRange(e)
			d.CompressedOffset, d.CompressedSize = &o, &s
		default:
			if h := e.HostOffset(); h != 0 || kind == Normal {
				d.HostOffset = ptr(h)
			}
			d.Reserved = e.Desc & L2EntryReservedMask
		}
		out = append(out, d)
	}
	return off, out, nil
}

// RefcountRun is a run of host clusters with the same on-disk refcount.
type RefcountRun struct {
	Offset   uint64 `json:"offset"`
	Length   uint64 `json:"length"`
	Refcount uint64 `json:"refcount"`
}

// DumpRefcounts calls fn with runs of host clusters, up to the end of the
// file, that share an on-disk refcount (runs of zero included).
func (f *File) DumpRefcounts(fn func(RefcountRun) error) error {
	cs := f.ClusterSize()
	n := divRoundUp(uint64(f.size), cs)
	var cur RefcountRun
	for i := uint64(0); i < n; i++ {
		rc, err := f.Refcount(i)
		if err != nil {
			return err
		}
		if cur.Length > 0 && rc == cur.Refcount {
			cur.Length += cs
			continue
		}
		if cur.Length > 0 {
			if err := fn(cur); err != nil {
				return err
			}
		}
		cur = RefcountRun{Offset: i * cs, Length: cs, Refcount: rc}
	}
	if cur.Length > 0 {
		return fn(cur)
	}
	return nil
}
