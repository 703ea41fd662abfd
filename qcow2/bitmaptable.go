package qcow2

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Limits of one persistent bitmap, from QEMU's block/qcow2-bitmap.c.
const (
	// BitmapTypeDirty is the only bitmap type the spec defines: a dirty
	// tracking bitmap.
	BitmapTypeDirty = 1
	// MaxBitmapTableEntries is BME_MAX_TABLE_SIZE, the most entries a
	// bitmap table may have.
	MaxBitmapTableEntries = 0x8000000
	// MaxBitmapDataBytes is BME_MAX_PHYS_SIZE, the most bytes of bitmap
	// data (table entries times the cluster size) QEMU loads.
	MaxBitmapDataBytes = 0x20000000
	// MinBitmapGranularityBits and MaxBitmapGranularityBits bound the
	// granularity: one bit covers 512 bytes to 2 GiB of the guest disk.
	MinBitmapGranularityBits = 9
	MaxBitmapGranularityBits = 31
)

// Bitmap table entry fields (docs/interop/qcow2.txt, "Bitmap table").
const (
	bitmapEntryAllOnes   = 1 << 0
	bitmapEntryOffset    = 0x00fffffffffffe00 // bits 9-55
	bitmapEntryReserved  = 0xff000000000001fe // bits 1-8 and 56-63
	bitmapTableEntrySize = 8
)

// BitmapTableEntry is one entry of a bitmap table: where one cluster of
// the bitmap's data is stored, or, when unallocated, whether that cluster
// reads as all zeros or all ones.
type BitmapTableEntry uint64

// Offset returns the host offset of the data cluster; 0 means unallocated.
func (e BitmapTableEntry) Offset() uint64 { return uint64(e) & bitmapEntryOffset }

// AllOnes reports an unallocated cluster that reads as all ones (every
// bit it covers set).
func (e BitmapTableEntry) AllOnes() bool { return e.Offset() == 0 && e&bitmapEntryAllOnes != 0 }

// BitmapBits returns the number of bits of a bitmap with granularity
// 1<<granularityBits over a disk of size bytes: one per started
// granularity.
func BitmapBits(size uint64, granularityBits uint8) uint64 {
	if granularityBits >= 64 {
		return 0
	}
	g := uint64(1) << granularityBits
	return size/g + boolToUint(size%g != 0)
}

func boolToUint(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// bitmapClusters returns how many data clusters hold nbits bits.
func bitmapClusters(nbits, clusterSize uint64) uint64 {
	bytes := nbits/8 + boolToUint(nbits%8 != 0)
	return bytes/clusterSize + boolToUint(bytes%clusterSize != 0)
}

// ParseBitmapTable decodes a bitmap table read from file offset base
// (used in errors), checking each entry's reserved bits and the alignment
// of its offset to clusterSize.
func ParseBitmapTable(buf []byte, clusterSize uint64, base int64) ([]BitmapTableEntry, error) {
	if clusterSize == 0 || clusterSize&(clusterSize-1) != 0 {
		return nil, fmt.Errorf("qcow2: bitmap table: cluster size %d is not a power of two", clusterSize)
	}
	n := len(buf) / bitmapTableEntrySize
	out := make([]BitmapTableEntry, n)
	for i := range out {
		e := BitmapTableEntry(binary.BigEndian.Uint64(buf[i*bitmapTableEntrySize:]))
		off := base + int64(i*bitmapTableEntrySize)
		switch {
		case e&bitmapEntryReserved != 0:
			return nil, formatErr(off, "bitmap table entry %d has reserved bits set (%#x)", i, uint64(e))
		case e.Offset() != 0 && e&bitmapEntryAllOnes != 0:
			return nil, formatErr(off, "bitmap table entry %d has both an offset and the all-ones bit", i)
		case e.Offset()%clusterSize != 0:
			return nil, formatErr(off, "bitmap table entry %d: data offset %#x is not cluster aligned", i, e.Offset())
		}
		out[i] = e
	}
	return out, nil
}

// BitmapTable reads and checks b's bitmap table. Its size must be what the
// image's virtual size and b's granularity need, and within QEMU's limits.
func (f *File) BitmapTable(b *Bitmap) ([]BitmapTableEntry, error) {
	cs := f.ClusterSize()
	if b.Type != BitmapTypeDirty {
		return nil, withFile(f.Name, formatErr(b.Offset, "bitmap %q has unsupported type %d", b.Name, b.Type))
	}
	if b.GranularityBits < MinBitmapGranularityBits || b.GranularityBits > MaxBitmapGranularityBits {
		return nil, withFile(f.Name, formatErr(b.Offset, "bitmap %q has invalid granularity bits %d", b.Name, b.GranularityBits))
	}
	if b.TableOffset == 0 || b.TableOffset%cs != 0 {
		return nil, withFile(f.Name, formatErr(b.Offset, "bitmap %q: table offset %#x is not cluster aligned", b.Name, b.TableOffset))
	}
	n := uint64(b.TableSize)
	if n > MaxBitmapTableEntries || n*cs > MaxBitmapDataBytes {
		return nil, withFile(f.Name, formatErr(b.Offset, "bitmap %q: table of %d entries exceeds QEMU's limits", b.Name, n))
	}
	need := bitmapClusters(BitmapBits(f.VirtualSize(), b.GranularityBits), cs)
	if n != need {
		return nil, withFile(f.Name, formatErr(b.Offset, "bitmap %q: table has %d entries, the disk size and granularity need %d", b.Name, n, need))
	}
	if b.TableOffset > uint64(f.size) || n*bitmapTableEntrySize > uint64(f.size)-b.TableOffset {
		return nil, withFile(f.Name, formatErr(int64(b.TableOffset), "bitmap %q: table (%d entries) is past the end of the file", b.Name, n))
	}
	buf := make([]byte, n*bitmapTableEntrySize)
	if _, err := f.r.ReadAt(buf, int64(b.TableOffset)); err != nil {
		return nil, withFile(f.Name, fmt.Errorf("reading the table of bitmap %q: %w", b.Name, err))
	}
	t, err := ParseBitmapTable(buf, cs, int64(b.TableOffset))
	return t, withFile(f.Name, err)
}

// BitmapDirtyBytes returns how many bytes of the guest disk b marks dirty:
// its set bits times its granularity, the last bit counting a whole
// granularity even where the disk ends inside it, as QEMU counts them
// (query-block's "count"). The data is read one cluster at a time.
//
// The number is only meaningful for a bitmap whose in-use flag is clear:
// an in-use bitmap is either being changed by a running QEMU right now or
// was left inconsistent by one that stopped without storing it.
func (f *File) BitmapDirtyBytes(b *Bitmap) (uint64, error) {
	table, err := f.BitmapTable(b)
	if err != nil {
		return 0, err
	}
	cs := f.ClusterSize()
	nbits := BitmapBits(f.VirtualSize(), b.GranularityBits)
	bitsPerCluster := cs * 8
	var set uint64
	var buf []byte
	for i, e := range table {
		first := uint64(i) * bitsPerCluster
		span := min(bitsPerCluster, nbits-first) // bits of the disk this cluster covers
		switch {
		case e.AllOnes():
			set += span
			continue
		case e.Offset() == 0:
			continue
		}
		nbytes := span/8 + boolToUint(span%8 != 0)
		off := e.Offset()
		if off > uint64(f.size) || nbytes > uint64(f.size)-off {
			return 0, withFile(f.Name, formatErr(int64(off), "bitmap %q: data cluster %d is past the end of the file", b.Name, i))
		}
		if buf == nil {
			buf = make([]byte, cs)
		}
		if _, err := f.r.ReadAt(buf[:nbytes], int64(off)); err != nil {
			return 0, withFile(f.Name, fmt.Errorf("reading the data of bitmap %q: %w", b.Name, err))
		}
		set += countBits(buf[:nbytes], span)
	}
	return set << b.GranularityBits, nil
}

// countBits counts the set bits among the first nbits bits of data, bit k
// being bit k%8 of byte k/8 (QEMU serialises bitmaps little-endian).
func countBits(data []byte, nbits uint64) uint64 {
	full := nbits / 8
	var n uint64
	i := uint64(0)
	for ; i+8 <= full; i += 8 {
		n += uint64(bits.OnesCount64(binary.LittleEndian.Uint64(data[i:])))
	}
	for ; i < full; i++ {
		n += uint64(bits.OnesCount8(data[i]))
	}
	if rest := nbits % 8; rest != 0 {
		n += uint64(bits.OnesCount8(data[full] & (1<<rest - 1)))
	}
	return n
}
