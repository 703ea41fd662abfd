package qcow2

import (
	"encoding/binary"
	"os"
	"syscall"
)

// RefcountTableEntry masks from the spec.
const (
	RefTableOffsetMask   = 0xfffffffffffffe00
	RefTableReservedMask = 0x1ff
)

// RefcountTable returns the refcount table, reading it on first use.
func (f *File) RefcountTable() ([]uint64, error) {
	f.rtOnce.Do(func() {
		n := uint64(f.Header.RefcountTableClusters) * f.ClusterSize() / 8
		f.rt, f.rtErr = f.readTable(f.Header.RefcountTableOffset, n, "refcount table")
	})
	return f.rt, f.rtErr
}

// refcountBlockBits is log2 of the number of entries in a refcount block.
func (f *File) refcountBlockBits() uint32 {
	return f.Header.ClusterBits + 3 - f.Header.RefcountOrder
}

// Refcount returns the refcount of host cluster index ci, as QEMU's
// qcow2_get_refcount: clusters beyond the table, or in a missing block,
// have refcount 0; a refcount block past the end of the file reads as zeros.
func (f *File) Refcount(ci uint64) (uint64, error) {
	rt, err := f.RefcountTable()
	if err != nil {
		return 0, err
	}
	ti := ci >> f.refcountBlockBits()
	if ti >= uint64(len(rt)) {
		return 0, nil
	}
	off := rt[ti] & RefTableOffsetMask
	if off == 0 {
		return 0, nil
	}
	if off&(f.ClusterSize()-1) != 0 {
		return 0, withFile(f.Name, formatErr(int64(f.Header.RefcountTableOffset+ti*8), "refcount block offset %#x is not cluster aligned (refcount table index %d)", off, ti))
	}
	b, err := f.cluster(off)
	if err != nil {
		return 0, err
	}
	return RefcountEntry(b, f.Header.RefcountOrder, ci&(1<<f.refcountBlockBits()-1)), nil
}

// RefcountEntry decodes entry i of a refcount block whose entries are
// 1<<order bits wide. Sub-byte entries are packed from the least
// significant bit, as QEMU packs them.
func RefcountEntry(block []byte, order uint32, i uint64) uint64 {
	switch order {
	case 0:
		return uint64(block[i/8]>>(i%8)) & 1
	case 1:
		return uint64(block[i/4]>>(2*(i%4))) & 3
	case 2:
		return uint64(block[i/2]>>(4*(i%2))) & 15
	case 3:
		return uint64(block[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(block[i*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(block[i*4:]))
	}
	return binary.BigEndian.Uint64(block[i*8:])
}

// allocatedBytes returns how many bytes of the host file are allocated on
// disk (st_blocks * 512), or -1 when unknown.
func allocatedBytes(r any) int64 {
	osf, ok := r.(*os.File)
	if !ok {
		return -1
	}
	st, err := osf.Stat()
	if err != nil {
		return -1
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return sys.Blocks * 512
}

// metadataPreallocated reports whether QEMU would treat the image as
// preallocated with metadata only (qcow2_detect_metadata_preallocation):
// clearly more clusters have a refcount than the host file has allocated.
func (f *File) metadataPreallocated() bool {
	f.preOnce.Do(func() {
		real := allocatedBytes(f.r)
		if real < 0 {
			return
		}
		cs := f.ClusterSize()
		realClusters := uint64(real) / cs
		threshold := max(realClusters*10/9, realClusters+2)
		end := divRoundUp(uint64(f.size), cs)
		if end < threshold {
			// Fewer clusters in the file than the threshold: the count
			// cannot reach it, and the refcounts need not be read.
			return
		}
		var count uint64
		for i := uint64(0); i < end && count < threshold; i++ {
			rc, err := f.Refcount(i)
			if err != nil {
				return
			}
			if rc != 0 {
				count++
			}
		}
		f.prealloc = count >= threshold
	})
	return f.prealloc
}

// hostFile returns the file that holds guest clusters as a raw layer, so
// its holes can be found.
func (f *File) hostFile() (*RawFile, bool) {
	r, size := f.r, f.size
	if f.Header.HasDataFile() {
		var err error
		r, size, err = f.dataReader()
		if err != nil {
			return nil, false
		}
	}
	osf, ok := r.(*os.File)
	if !ok {
		return nil, false
	}
	return &RawFile{Name: f.Name, f: osf, r: osf, size: size}, true
}
