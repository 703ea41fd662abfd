package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Extent is a run of guest bytes of one layer that share a cluster type
// and, for types with a host offset, map to contiguous host bytes.
type Extent struct {
	Start      uint64 // guest offset
	Length     uint64
	Type       ClusterType
	HostOffset uint64  // host offset of Start, when Type.HasHostOffset()
	Entry      L2Entry // the L2 entry, for Compressed extents (one cluster each)
}

// End returns the guest offset just past the extent.
func (e Extent) End() uint64 { return e.Start + e.Length }

// Extent returns the run of guest bytes that starts at off in this layer
// alone, at most max bytes long and never past the virtual size. A run of
// compressed data covers one cluster at most. Extent does not look at the
// backing file: unallocated runs are reported as Unallocated.
func (f *File) Extent(off, max uint64) (Extent, error) {
	return f.extent(off, max, nil)
}

// TableCursor holds one L2 table privately for a sequential reader (a
// Walker), so walking an image in order reads each table once, without
// the shared cache's lock, map and buffer churn. The zero value is ready.
type TableCursor struct {
	off   uint64
	buf   []byte
	valid bool
}

// table returns the L2 table at off through the cursor, or through the
// shared cache when tc is nil.
func (f *File) table(off uint64, tc *TableCursor) ([]byte, error) {
	if tc == nil {
		return f.l2Table(off)
	}
	if tc.valid && tc.off == off {
		return tc.buf, nil
	}
	cs := f.ClusterSize()
	if off%cs != 0 {
		return nil, withFile(f.Name, formatErr(int64(off), "L2 table offset %#x is not cluster aligned", off))
	}
	if off > uint64(f.size) || cs > uint64(f.size)-off {
		return nil, withFile(f.Name, formatErr(int64(off), "L2 table at %#x is past the end of the file", off))
	}
	if uint64(len(tc.buf)) != cs {
		tc.buf = make([]byte, cs)
	}
	tc.valid = false
	if _, err := f.r.ReadAt(tc.buf, int64(off)); err != nil {
		return nil, withFile(f.Name, fmt.Errorf("reading L2 table at %#x: %w", off, err))
	}
	tc.off, tc.valid = off, true
	return tc.buf, nil
}

func (f *File) extent(off, max uint64, tc *TableCursor) (Extent, error) {
	vsize := f.VirtualSize()
	if off >= vsize || max == 0 {
		return Extent{}, fmt.Errorf("extent at %#x is outside the virtual size %#x", off, vsize)
	}
	if err := f.readErr; err != nil {
		return Extent{}, withFile(f.Name, err)
	}
	l1, err := f.L1()
	if err != nil {
		return Extent{}, err
	}
	end := vsize
	if max < end-off {
		end = off + max
	}
	cb := uint64(f.Header.ClusterBits)
	cs := uint64(1) << cb
	scSize := cs
	if f.Geo.ExtendedL2 {
		scSize = cs / subclustersPerCl
	}
	l2n := f.l2Entries()
	tableSpan := l2n * cs

	ext := Extent{Start: off}
	pos := off
	first := true
	for pos < end {
		ci := pos >> cb
		l1i := ci / l2n
		var l2off uint64
		if l1i < uint64(len(l1)) {
			l2off = l1[l1i] & L1EntryOffsetMask
		}
		if l2off == 0 {
			// The whole L2 range is unallocated.
			if !first && ext.Type != Unallocated {
				break
			}
			ext.Type, first = Unallocated, false
			pos = min((l1i+1)*tableSpan, end)
			continue
		}
		table, err := f.table(l2off, tc)
		if err != nil {
			return Extent{}, err
		}
		i := ci % l2n
		for ; i < l2n && pos < end; i++ {
			e := f.entryAt(table, i)
			inCl := pos & (cs - 1)
			sc := uint(inCl / scSize)
			t := f.Geo.SubclusterType(e, sc)
			if t == Invalid {
				return Extent{}, withFile(f.Name, formatErr(int64(l2off+i*f.Header.l2EntrySize()), "L2 entry %#x has a corrupt subcluster bitmap %#x", e.Desc, e.Bitmap))
			}
			// How far this type runs inside the cluster.
			clEnd := pos - inCl + cs
			runEnd := clEnd
			if f.Geo.ExtendedL2 && t != Compressed {
				for s := sc + 1; s < subclustersPerCl; s++ {
					if f.Geo.SubclusterType(e, s) != t {
						runEnd = pos - inCl + uint64(s)*scSize
						break
					}
				}
			}
			var host uint64
			if t.HasHostOffset() {
				hc := e.HostOffset()
				if hc&(cs-1) != 0 {
					return Extent{}, withFile(f.Name, formatErr(int64(l2off+i*f.Header.l2EntrySize()), "cluster offset %#x is not cluster aligned", hc))
				}
				host = hc + inCl
				if f.Geo.DataFile && host != pos {
					return Extent{}, withFile(f.Name, formatErr(int64(l2off+i*f.Header.l2EntrySize()), "external data file host offset %#x does not match guest offset %#x", host, pos))
				}
			}
			if first {
				ext.Type, ext.HostOffset, ext.Entry = t, host, e
				first = false
			} else if t != ext.Type || ext.Type == Compressed || (t.HasHostOffset() && host != ext.HostOffset+(pos-off)) {
				ext.Length = pos - off
				return ext, nil
			}
			pos = min(runEnd, end)
			if runEnd < clEnd {
				// The type changes inside this cluster.
				break
			}
			if !f.Geo.ExtendedL2 && pos < end {
				// Fast path for the common runs of a standard table:
				// zero entries extend an unallocated run, descriptors one
				// cluster apart with the same flags extend a data run.
				next := i + 1
				switch ext.Type {
				case Unallocated:
					next = zeroEntries(table, next, l2n)
				case Normal:
					for next < l2n && binary.BigEndian.Uint64(table[next*8:]) == e.Desc+(next-i)*cs && e.Desc&FlagCompressed == 0 {
						next++
					}
				}
				pos = min(pos+(next-i-1)*cs, end)
				i = next - 1
			}
		}
		if ext.Type == Compressed {
			break
		}
		if pos < end && pos&(cs-1) != 0 {
			// Stopped inside a cluster: the next subcluster has another type.
			ext.Length = pos - off
			return ext, nil
		}
	}
	ext.Length = pos - off
	return ext, nil
}

// zeroEntries returns the index of the first non-zero 8-byte entry of a
// standard L2 table at or after i (n when there is none), four at a time.
func zeroEntries(t []byte, i, n uint64) uint64 {
	for i+4 <= n {
		b := t[i*8 : i*8+32]
		if binary.LittleEndian.Uint64(b)|binary.LittleEndian.Uint64(b[8:])|binary.LittleEndian.Uint64(b[16:])|binary.LittleEndian.Uint64(b[24:]) != 0 {
			break
		}
		i += 4
	}
	for i < n && binary.LittleEndian.Uint64(t[i*8:]) == 0 {
		i++
	}
	return i
}
