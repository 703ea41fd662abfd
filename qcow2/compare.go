package qcow2

import (
	"bytes"
	"fmt"
)

// CompareResult says whether two chains read the same, and where they
// first differ.
type CompareResult struct {
	Identical bool
	// Offset is the first differing 512-byte sector (as qemu-img compare
	// reports it) when not Identical.
	Offset uint64
	// Reason explains a mismatch in qemu-img's words.
	Reason string
	// SizeMismatch is true when the guest sizes differ.
	SizeMismatch bool
}

// compareChunk is how many bytes Compare reads at a time from each side.
const compareChunk = 1 << 20

// Compare compares the guest content of a and b as `qemu-img compare`
// does. Ranges both sides read as zeros are equal without reading. In
// strict mode a size difference, or a range allocated on one side and not
// the other, is a mismatch even when the content is equal.
func Compare(a, b *Chain, strict bool) (*CompareResult, error) {
	sa, sb := a.Size(), b.Size()
	res := &CompareResult{SizeMismatch: sa != sb}
	if strict && sa != sb {
		res.Reason = "Strict mode: Image size mismatch!"
		return res, nil
	}
	total := min(sa, sb)
	wa, wb := a.NewWalker(), b.NewWalker()
	bufA, bufB := make([]byte, compareChunk), make([]byte, compareChunk)
	for pos := uint64(0); pos < total; {
		s1, err := wa.Status(pos, total)
		if err != nil {
			return nil, err
		}
		s2, err := wb.Status(pos, total)
		if err != nil {
			return nil, err
		}
		chunk := min(s1.Length, s2.Length, compareChunk)
		if strict && (s1.Present != s2.Present || s1.Zero != s2.Zero || s1.Data != s2.Data) {
			res.Offset = pos
			res.Reason = fmt.Sprintf("Strict mode: Offset %d block status mismatch!", pos)
			return res, nil
		}
		if s1.Zero && s2.Zero {
			pos += chunk
			continue
		}
		if err := wa.Read(bufA[:chunk], pos); err != nil {
			return nil, err
		}
		if err := wb.Read(bufB[:chunk], pos); err != nil {
			return nil, err
		}
		if i := firstDiff(bufA[:chunk], bufB[:chunk]); i >= 0 {
			res.Offset = (pos + uint64(i)) &^ 511
			res.Reason = fmt.Sprintf("Content mismatch at offset %d!", res.Offset)
			return res, nil
		}
		pos += chunk
	}
	if sa != sb {
		over, w := a, wa
		if sb > sa {
			over, w = b, wb
		}
		size := over.Size()
		for pos := total; pos < size; {
			s, err := w.Status(pos, size)
			if err != nil {
				return nil, err
			}
			chunk := min(s.Length, compareChunk)
			if !s.Zero {
				if err := w.Read(bufA[:chunk], pos); err != nil {
					return nil, err
				}
				if i := firstDiff(bufA[:chunk], nil); i >= 0 {
					res.Offset = (pos + uint64(i)) &^ 511
					res.Reason = fmt.Sprintf("Content mismatch at offset %d!", res.Offset)
					return res, nil
				}
			}
			pos += chunk
		}
	}
	res.Identical = true
	return res, nil
}

// firstDiff returns the index of the first byte where a and b differ (b nil
// means zeros), or -1.
func firstDiff(a, b []byte) int {
	if b == nil {
		for i := 0; i < len(a); i += 512 {
			j := min(i+512, len(a))
			if !allZero(a[i:j]) {
				for k := i; k < j; k++ {
					if a[k] != 0 {
						return k
					}
				}
			}
		}
		return -1
	}
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
