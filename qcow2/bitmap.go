package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Bitmap directory entry flags.
const (
	BitmapInUse       = 1 << 0
	BitmapAuto        = 1 << 1
	BitmapExtra       = 1 << 2
	bitmapEntryHeader = 24
	maxBitmapNameLen  = 1023
)

// Bitmap is one entry of the persistent bitmap directory.
type Bitmap struct {
	TableOffset     uint64 `json:"bitmap_table_offset"`
	TableSize       uint32 `json:"bitmap_table_size"`
	Flags           uint32 `json:"flags"`
	Type            uint8  `json:"type"`
	GranularityBits uint8  `json:"granularity_bits"`
	Name            string `json:"name"`
	Offset          int64  `json:"offset"` // file offset of the directory entry
}

// Granularity returns the bytes covered by one bit.
func (b *Bitmap) Granularity() uint64 { return 1 << b.GranularityBits }

// Bitmaps returns the persistent bitmap directory (nil when the image has
// none, or when the bitmaps are ignored because the autoclear bit is clear).
func (f *File) Bitmaps() ([]Bitmap, error) {
	e := f.Header.Bitmaps
	if e == nil {
		return nil, nil
	}
	if e.DirectoryOffset > uint64(f.size) || e.DirectorySize > uint64(f.size)-e.DirectoryOffset {
		return nil, withFile(f.Name, formatErr(int64(e.DirectoryOffset), "bitmap directory (%d bytes) is past the end of the file", e.DirectorySize))
	}
	dir := make([]byte, e.DirectorySize)
	if _, err := f.r.ReadAt(dir, int64(e.DirectoryOffset)); err != nil {
		return nil, withFile(f.Name, fmt.Errorf("reading bitmap directory: %w", err))
	}
	bms, err := ParseBitmapDirectory(dir, e.NbBitmaps, int64(e.DirectoryOffset))
	return bms, withFile(f.Name, err)
}

// ParseBitmapDirectory decodes nb entries of a bitmap directory; base is the
// directory's file offset, used in errors.
func ParseBitmapDirectory(dir []byte, nb uint32, base int64) ([]Bitmap, error) {
	be := binary.BigEndian
	var out []Bitmap
	pos := uint64(0)
	for i := uint32(0); i < nb; i++ {
		if pos+bitmapEntryHeader > uint64(len(dir)) {
			return nil, formatErr(base+int64(pos), "bitmap directory entry %d is past the end of the directory", i)
		}
		h := dir[pos:]
		b := Bitmap{
			TableOffset:     be.Uint64(h),
			TableSize:       be.Uint32(h[8:]),
			Flags:           be.Uint32(h[12:]),
			Type:            h[16],
			GranularityBits: h[17],
			Offset:          base + int64(pos),
		}
		nameLen := uint64(be.Uint16(h[18:]))
		extra := uint64(be.Uint32(h[20:]))
		end := pos + bitmapEntryHeader + extra + nameLen
		if nameLen > maxBitmapNameLen || end > uint64(len(dir)) {
			return nil, formatErr(b.Offset, "bitmap directory entry %d runs past the end of the directory", i)
		}
		if b.Flags&^(BitmapInUse|BitmapAuto|BitmapExtra) != 0 {
			return nil, formatErr(b.Offset, "bitmap %d has unknown flags %#x", i, b.Flags)
		}
		if b.GranularityBits < 9 || b.GranularityBits > 31 {
			return nil, formatErr(b.Offset, "bitmap %d has invalid granularity bits %d", i, b.GranularityBits)
		}
		b.Name = string(dir[pos+bitmapEntryHeader+extra : end])
		out = append(out, b)
		pos = (end + 7) &^ 7
	}
	return out, nil
}
