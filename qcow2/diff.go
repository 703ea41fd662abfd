package qcow2

import (
	"bytes"
	"os"
)

// DiffRange is a guest range whose content differs between two chains.
type DiffRange struct {
	Start  uint64 `json:"start"`
	Length uint64 `json:"length"`
}

// DiffStats says how a Diff reached its answer.
type DiffStats struct {
	// SharedBytes were proven equal from metadata alone: both sides read
	// the same host bytes of the same file, or both read as zeros.
	SharedBytes uint64 `json:"shared-bytes"`
	// ComparedBytes were read from both sides and compared.
	ComparedBytes uint64 `json:"compared-bytes"`
	// DifferentBytes is the total length of the differing ranges.
	DifferentBytes uint64 `json:"different-bytes"`
}

// diffSector is the granularity of the ranges Diff reports.
const diffSector = 512

// Diff calls fn with each guest range (merged, in order, 512-byte
// granularity) whose content differs between a and b, comparing up to the
// larger size (the shorter side reads as zeros past its end). Ranges where
// both chains read the same host cluster of the same file, or both read as
// zeros, are equal without reading any data.
func Diff(a, b *Chain, fn func(DiffRange) error) (DiffStats, error) {
	var st DiffStats
	ida, idb := layerIDs(a), layerIDs(b)
	size := max(a.Size(), b.Size())
	wa, wb := a.NewWalker(), b.NewWalker()
	bufA, bufB := make([]byte, compareChunk), make([]byte, compareChunk)
	var pending DiffRange
	emit := func(start, length uint64) error {
		st.DifferentBytes += length
		if pending.Length > 0 && pending.Start+pending.Length == start {
			pending.Length += length
			return nil
		}
		if pending.Length > 0 {
			if err := fn(pending); err != nil {
				return err
			}
		}
		pending = DiffRange{Start: start, Length: length}
		return nil
	}
	for pos := uint64(0); pos < size; {
		sa, na, err := statusOrZero(wa, a, pos, size)
		if err != nil {
			return st, err
		}
		sb, nb, err := statusOrZero(wb, b, pos, size)
		if err != nil {
			return st, err
		}
		n := min(na, nb, compareChunk)
		if sameSource(sa, sb, ida, idb) {
			st.SharedBytes += n
			pos += n
			continue
		}
		pa, pb := bufA[:n], bufB[:n]
		if err := readStatus(wa, sa, pa, pos); err != nil {
			return st, err
		}
		if err := readStatus(wb, sb, pb, pos); err != nil {
			return st, err
		}
		st.ComparedBytes += n
		for i := uint64(0); i < n; {
			j := min(i+diffSector-(pos+i)%diffSector, n)
			if !bytes.Equal(pa[i:j], pb[i:j]) {
				if err := emit(pos+i, j-i); err != nil {
					return st, err
				}
			}
			i = j
		}
		pos += n
	}
	if pending.Length > 0 {
		if err := fn(pending); err != nil {
			return st, err
		}
	}
	return st, nil
}

// statusOrZero is the status at pos, or a zero run up to size past the
// chain's end.
func statusOrZero(w *Walker, c *Chain, pos, size uint64) (*BlockStatus, uint64, error) {
	if pos >= c.Size() {
		return nil, size - pos, nil
	}
	s, err := w.Status(pos, c.Size())
	if err != nil {
		return nil, 0, err
	}
	return &s, s.Length, nil
}

// readStatus fills p with the guest bytes at pos; a nil status reads zeros.
func readStatus(w *Walker, s *BlockStatus, p []byte, pos uint64) error {
	if s == nil || s.Zero || !s.Data {
		clear(p)
		return nil
	}
	return w.Read(p, pos)
}

// sameSource reports whether two statuses certainly read the same bytes.
func sameSource(a, b *BlockStatus, ida, idb []os.FileInfo) bool {
	zero := func(s *BlockStatus) bool { return s == nil || s.Zero || !s.Data }
	if zero(a) && zero(b) {
		return true
	}
	if zero(a) || zero(b) {
		return false
	}
	fa, fb := ida[a.Depth], idb[b.Depth]
	if fa == nil || fb == nil || !os.SameFile(fa, fb) {
		return false
	}
	ea, eb := a.Extent, b.Extent
	if ea.Type != eb.Type {
		return false
	}
	switch ea.Type {
	case Normal:
		return ea.HostOffset == eb.HostOffset
	case Compressed:
		return ea.Entry.Desc == eb.Entry.Desc && ea.Start == eb.Start
	}
	return false
}

// layerIDs returns the identity of each layer's data file, for sameSource.
func layerIDs(c *Chain) []os.FileInfo {
	out := make([]os.FileInfo, len(c.Layers))
	for i, l := range c.Layers {
		var f *os.File
		switch l := l.(type) {
		case *File:
			r, _, err := l.dataReader()
			if err == nil {
				f, _ = r.(*os.File)
			}
		case *RawFile:
			f = l.f
		}
		if f != nil {
			if st, err := f.Stat(); err == nil {
				out[i] = st
			}
		}
	}
	return out
}
