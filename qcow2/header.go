package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Magic is the first four bytes of every qcow2 image ("QFI\xfb").
const Magic = 0x514649fb

// Limits from the spec and from QEMU's block/qcow2.h; a header that exceeds
// them is refused the way QEMU refuses it.
const (
	MinClusterBits     = 9  // 512-byte clusters
	MaxClusterBits     = 21 // 2 MiB clusters
	v2HeaderLength     = 72
	v3HeaderLength     = 104
	MaxBackingNameLen  = 1023
	MaxL1Bytes         = 32 << 20 // QCOW_MAX_L1_SIZE
	MaxRefTableBytes   = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	MaxSnapshots       = 65536    // QCOW_MAX_SNAPSHOTS
	MaxBitmaps         = 65535    // QCOW2_MAX_BITMAPS
	MaxBitmapDirectory = 64 << 20 // QCOW2_MAX_BITMAP_DIRECTORY_SIZE
	maxRefcountOrder   = 6
	maxBackingFmtLen   = 15 // sizeof(bs->backing_format) - 1
)

// Incompatible feature bits.
const (
	IncompatDirty           = 1 << 0
	IncompatCorrupt         = 1 << 1
	IncompatDataFile        = 1 << 2
	IncompatCompressionType = 1 << 3
	IncompatExtendedL2      = 1 << 4
	incompatKnown           = IncompatDirty | IncompatCorrupt | IncompatDataFile | IncompatCompressionType | IncompatExtendedL2
)

// Compatible and autoclear feature bits.
const (
	CompatLazyRefcounts = 1 << 0
	AutoclearBitmaps    = 1 << 0
	AutoclearDataRaw    = 1 << 1
)

// Encryption methods (crypt_method).
const (
	CryptNone = 0
	CryptAES  = 1
	CryptLUKS = 2
)

// Compression types (compression_type).
const (
	CompressionZlib = 0
	CompressionZstd = 1
)

// Header extension types.
const (
	ExtEnd           = 0x00000000
	ExtBackingFormat = 0xe2792aca
	ExtFeatureTable  = 0x6803f857
	ExtBitmaps       = 0x23852875
	ExtCryptoHeader  = 0x0537be77
	ExtDataFile      = 0x44415441
)

// Header is the decoded qcow2 header with its extensions. Field names
// follow docs/interop/qcow2.txt.
type Header struct {
	Version               uint32 `json:"version"`
	BackingFileOffset     uint64 `json:"backing_file_offset"`
	BackingFileSize       uint32 `json:"backing_file_size"`
	ClusterBits           uint32 `json:"cluster_bits"`
	Size                  uint64 `json:"size"` // virtual size in bytes, as stored
	CryptMethod           uint32 `json:"crypt_method"`
	L1Size                uint32 `json:"l1_size"`
	L1TableOffset         uint64 `json:"l1_table_offset"`
	RefcountTableOffset   uint64 `json:"refcount_table_offset"`
	RefcountTableClusters uint32 `json:"refcount_table_clusters"`
	NbSnapshots           uint32 `json:"nb_snapshots"`
	SnapshotsOffset       uint64 `json:"snapshots_offset"`
	IncompatibleFeatures  uint64 `json:"incompatible_features"`
	CompatibleFeatures    uint64 `json:"compatible_features"`
	AutoclearFeatures     uint64 `json:"autoclear_features"`
	RefcountOrder         uint32 `json:"refcount_order"`
	HeaderLength          uint32 `json:"header_length"`
	CompressionType       uint8  `json:"compression_type"`

	// From the extensions and the backing name area.
	BackingFile   string            `json:"backing_file,omitempty"`
	BackingFormat string            `json:"backing_format,omitempty"`
	DataFile      string            `json:"data_file,omitempty"`
	Features      []FeatureName     `json:"feature_names,omitempty"`
	Bitmaps       *BitmapsExtension `json:"bitmaps,omitempty"` // nil unless present and valid (autoclear bit set)
	Crypto        *CryptoHeader     `json:"crypto_header,omitempty"`
	Extensions    []Extension       `json:"extensions,omitempty"` // every extension in file order, known or not
}

// Extension is one header extension as found in the file.
type Extension struct {
	Type   uint32 `json:"type"`
	Offset int64  `json:"offset"` // file offset of the extension's data
	Length uint32 `json:"length"`
}

// FeatureName is one entry of the feature name table extension.
type FeatureName struct {
	Type uint8  `json:"type"` // 0 incompatible, 1 compatible, 2 autoclear
	Bit  uint8  `json:"bit"`
	Name string `json:"name"`
}

// BitmapsExtension is the bitmaps header extension.
type BitmapsExtension struct {
	NbBitmaps       uint32 `json:"nb_bitmaps"`
	DirectorySize   uint64 `json:"bitmap_directory_size"`
	DirectoryOffset uint64 `json:"bitmap_directory_offset"`
}

// CryptoHeader is the full disk encryption header pointer extension.
type CryptoHeader struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
}

// ClusterSize returns the cluster size in bytes.
func (h *Header) ClusterSize() uint64 { return 1 << h.ClusterBits }

// ExtendedL2 reports whether L2 entries carry subcluster bitmaps.
func (h *Header) ExtendedL2() bool { return h.IncompatibleFeatures&IncompatExtendedL2 != 0 }

// HasDataFile reports whether guest data lives in an external data file.
func (h *Header) HasDataFile() bool { return h.IncompatibleFeatures&IncompatDataFile != 0 }

// DataFileRaw reports whether the external data file is a valid raw image.
func (h *Header) DataFileRaw() bool {
	return h.HasDataFile() && h.AutoclearFeatures&AutoclearDataRaw != 0
}

// RefcountBits returns the width of one refcount entry.
func (h *Header) RefcountBits() uint32 { return 1 << h.RefcountOrder }

// UnknownIncompatible returns the incompatible feature bits this package
// does not know.
func (h *Header) UnknownIncompatible() uint64 { return h.IncompatibleFeatures &^ incompatKnown }

// featureName names an incompatible feature bit from the image's own
// feature table, or by number.
func (h *Header) featureNames(bits uint64) string {
	var names []string
	for bit := 0; bit < 64; bit++ {
		if bits&(1<<bit) == 0 {
			continue
		}
		name := fmt.Sprintf("bit %d", bit)
		for _, f := range h.Features {
			if f.Type == 0 && int(f.Bit) == bit && f.Name != "" {
				name = f.Name
			}
		}
		names = append(names, name)
	}
	return strings.Join(names, ", ")
}

// headerReadSize is how much of the file ParseHeader needs at most: the
// header cluster (clusters are at most 2 MiB).
const headerReadSize = 1 << MaxClusterBits

// ParseHeader decodes the header, the header extensions and the backing file
// name from the start of an image. b holds the first bytes of the file (up
// to its first cluster; fewer if the file is shorter). fileSize is the size
// of the whole file, used to bound offsets.
func ParseHeader(b []byte, fileSize int64) (*Header, error) {
	be := binary.BigEndian
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: file too short for a qcow2 header (%d bytes)", ErrNotQcow2, len(b))
	}
	if be.Uint32(b) != Magic {
		return nil, fmt.Errorf("%w: bad magic %#08x", ErrNotQcow2, be.Uint32(b))
	}
	if len(b) < 8 {
		return nil, formatErr(0, "truncated qcow2 header: %d bytes", len(b))
	}
	h := &Header{Version: be.Uint32(b[4:])}
	if h.Version != 2 && h.Version != 3 {
		return nil, formatErr(4, "unsupported qcow2 version %d", h.Version)
	}
	if len(b) < v2HeaderLength {
		return nil, formatErr(0, "truncated qcow2 header: %d bytes, need %d", len(b), v2HeaderLength)
	}
	h.BackingFileOffset = be.Uint64(b[8:])
	h.BackingFileSize = be.Uint32(b[16:])
	h.ClusterBits = be.Uint32(b[20:])
	h.Size = be.Uint64(b[24:])
	h.CryptMethod = be.Uint32(b[32:])
	h.L1Size = be.Uint32(b[36:])
	h.L1TableOffset = be.Uint64(b[40:])
	h.RefcountTableOffset = be.Uint64(b[48:])
	h.RefcountTableClusters = be.Uint32(b[56:])
	h.NbSnapshots = be.Uint32(b[60:])
	h.SnapshotsOffset = be.Uint64(b[64:])

	if h.ClusterBits < MinClusterBits || h.ClusterBits > MaxClusterBits {
		return nil, formatErr(20, "unsupported cluster size: cluster_bits %d (must be %d to %d)", h.ClusterBits, MinClusterBits, MaxClusterBits)
	}
	cs := h.ClusterSize()
	if h.Version == 2 {
		h.RefcountOrder = 4
		h.HeaderLength = v2HeaderLength
	} else {
		if len(b) < v3HeaderLength {
			return nil, formatErr(0, "truncated qcow2 v3 header: %d bytes, need %d", len(b), v3HeaderLength)
		}
		h.IncompatibleFeatures = be.Uint64(b[72:])
		h.CompatibleFeatures = be.Uint64(b[80:])
		h.AutoclearFeatures = be.Uint64(b[88:])
		h.RefcountOrder = be.Uint32(b[96:])
		h.HeaderLength = be.Uint32(b[100:])
		if h.HeaderLength < v3HeaderLength {
			return nil, formatErr(100, "qcow2 header too short: header_length %d < %d", h.HeaderLength, v3HeaderLength)
		}
		if uint64(h.HeaderLength) > cs {
			return nil, formatErr(100, "qcow2 header exceeds cluster size: header_length %d > %d", h.HeaderLength, cs)
		}
		if uint64(h.HeaderLength) > uint64(len(b)) {
			return nil, formatErr(100, "qcow2 header_length %d is past the end of the file", h.HeaderLength)
		}
		if h.HeaderLength > v3HeaderLength {
			h.CompressionType = b[104]
		}
	}
	if h.BackingFileOffset > cs {
		return nil, formatErr(8, "invalid backing file offset %#x (past the first cluster)", h.BackingFileOffset)
	}
	switch {
	case h.CompressionType > CompressionZstd:
		return nil, formatErr(104, "unknown compression type %d", h.CompressionType)
	case h.CompressionType != CompressionZlib && h.IncompatibleFeatures&IncompatCompressionType == 0:
		return nil, formatErr(72, "compression type %d without the compression type incompatible feature bit", h.CompressionType)
	case h.CompressionType == CompressionZlib && h.IncompatibleFeatures&IncompatCompressionType != 0:
		return nil, formatErr(72, "compression type incompatible feature bit set with zlib compression")
	}

	extEnd := cs
	if h.BackingFileOffset != 0 {
		extEnd = h.BackingFileOffset
	}
	if err := h.parseExtensions(b, uint64(h.HeaderLength), extEnd); err != nil {
		return nil, err
	}

	if h.RefcountOrder > maxRefcountOrder {
		return nil, formatErr(96, "refcount_order %d too large: refcount entries may not exceed 64 bits", h.RefcountOrder)
	}
	if h.CryptMethod > CryptLUKS {
		return nil, formatErr(32, "unsupported encryption method %d", h.CryptMethod)
	}
	if h.Crypto != nil && h.CryptMethod != CryptLUKS {
		return nil, formatErr(-1, "crypto header extension is only expected with LUKS encryption")
	}
	if err := h.checkTables(fileSize); err != nil {
		return nil, err
	}

	if h.BackingFileOffset != 0 {
		n := uint64(h.BackingFileSize)
		if n > MaxBackingNameLen || n > cs-h.BackingFileOffset {
			return nil, formatErr(16, "backing file name too long: %d bytes (limit %d, and it must end inside the first cluster)", n, MaxBackingNameLen)
		}
		end := h.BackingFileOffset + n
		if end > uint64(len(b)) {
			return nil, formatErr(int64(h.BackingFileOffset), "backing file name is past the end of the file")
		}
		h.BackingFile = cString(b[h.BackingFileOffset:end])
	}
	if h.IncompatibleFeatures&IncompatDataFile == 0 && h.DataFile != "" {
		return nil, formatErr(-1, "external data file name %q given but the data file feature bit is not set", h.DataFile)
	}
	return h, nil
}

// cString returns b up to its first NUL byte, as QEMU reads names.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func (h *Header) parseExtensions(b []byte, off, end uint64) error {
	be := binary.BigEndian
	for off < end {
		if off+8 > end {
			return formatErr(int64(off), "header extension too large: its type and length run past the header area")
		}
		if off+8 > uint64(len(b)) {
			return formatErr(int64(off), "header extension is past the end of the file")
		}
		typ, n := be.Uint32(b[off:]), be.Uint32(b[off+4:])
		off += 8
		if uint64(n) > end-off {
			return formatErr(int64(off-8), "header extension %#08x too large: length %d runs past the header area", typ, n)
		}
		if off+uint64(n) > uint64(len(b)) {
			return formatErr(int64(off-8), "header extension %#08x is past the end of the file", typ)
		}
		data := b[off : off+uint64(n)]
		if typ == ExtEnd {
			return nil
		}
		h.Extensions = append(h.Extensions, Extension{Type: typ, Offset: int64(off), Length: n})
		switch typ {
		case ExtBackingFormat:
			if n > maxBackingFmtLen {
				return formatErr(int64(off), "backing format extension too long: %d bytes", n)
			}
			h.BackingFormat = cString(data)
		case ExtFeatureTable:
			for i := 0; i+48 <= len(data); i += 48 {
				h.Features = append(h.Features, FeatureName{Type: data[i], Bit: data[i+1], Name: cString(data[i+2 : i+48])})
			}
		case ExtCryptoHeader:
			if n != 16 {
				return formatErr(int64(off), "crypto header extension size %d, expected 16", n)
			}
			c := &CryptoHeader{Offset: be.Uint64(data), Length: be.Uint64(data[8:])}
			if c.Offset%h.ClusterSize() != 0 {
				return formatErr(int64(off), "encryption header offset %#x is not cluster aligned", c.Offset)
			}
			h.Crypto = c
		case ExtBitmaps:
			if n != 24 {
				return formatErr(int64(off), "bitmaps extension: invalid length %d", n)
			}
			if h.AutoclearFeatures&AutoclearBitmaps == 0 {
				// A program without bitmap support touched the image: QEMU
				// considers every bitmap inconsistent and ignores them.
				break
			}
			if be.Uint32(data[4:]) != 0 {
				return formatErr(int64(off), "bitmaps extension: reserved field is not zero")
			}
			e := &BitmapsExtension{NbBitmaps: be.Uint32(data), DirectorySize: be.Uint64(data[8:]), DirectoryOffset: be.Uint64(data[16:])}
			switch {
			case e.NbBitmaps > MaxBitmaps:
				return formatErr(int64(off), "bitmaps extension: %d bitmaps exceed the maximum of %d", e.NbBitmaps, MaxBitmaps)
			case e.NbBitmaps == 0:
				return formatErr(int64(off), "bitmaps extension with zero bitmaps")
			case e.DirectoryOffset%h.ClusterSize() != 0:
				return formatErr(int64(off), "bitmaps extension: bitmap directory offset %#x is not cluster aligned", e.DirectoryOffset)
			case e.DirectorySize > MaxBitmapDirectory:
				return formatErr(int64(off), "bitmaps extension: bitmap directory size %d exceeds %d", e.DirectorySize, MaxBitmapDirectory)
			}
			h.Bitmaps = e
		case ExtDataFile:
			h.DataFile = cString(data)
		}
		off += (uint64(n) + 7) &^ 7
	}
	return nil
}

// checkTables validates the table offsets and sizes named in the header, as
// QEMU does on open, and additionally that each table lies inside the file.
func (h *Header) checkTables(fileSize int64) error {
	cs := h.ClusterSize()
	if uint64(h.L1Size) > MaxL1Bytes/8 {
		return formatErr(36, "L1 table too large: l1_size %d exceeds %d entries", h.L1Size, MaxL1Bytes/8)
	}
	l2Entries := cs / h.l2EntrySize()
	need := divRoundUp(h.Size, cs*l2Entries)
	if need > 1<<31-1 {
		return formatErr(24, "image is too big: virtual size %d", h.Size)
	}
	if uint64(h.L1Size) < need {
		return formatErr(36, "L1 table is too small: l1_size %d, virtual size %d needs %d entries", h.L1Size, h.Size, need)
	}
	if err := checkTable("L1 table", 40, h.L1TableOffset, uint64(h.L1Size)*8, cs, fileSize); err != nil {
		return err
	}
	if uint64(h.RefcountTableClusters) > MaxRefTableBytes/cs {
		return formatErr(56, "refcount table too large: %d clusters", h.RefcountTableClusters)
	}
	if err := checkTable("refcount table", 48, h.RefcountTableOffset, uint64(h.RefcountTableClusters)*cs, cs, fileSize); err != nil {
		return err
	}
	if h.NbSnapshots > MaxSnapshots {
		return formatErr(60, "too many snapshots: %d (limit %d)", h.NbSnapshots, MaxSnapshots)
	}
	if err := checkTable("snapshot table", 64, h.SnapshotsOffset, uint64(h.NbSnapshots)*snapshotHeaderSize, cs, fileSize); err != nil {
		return err
	}
	return nil
}

// checkTable checks a table's offset is cluster aligned and the table lies
// inside the file. Empty tables may have any offset.
func checkTable(name string, field int64, off, size, cs uint64, fileSize int64) error {
	if size == 0 {
		return nil
	}
	if off%cs != 0 {
		return formatErr(field, "%s offset %#x is not cluster aligned", name, off)
	}
	if off > 1<<63-1-size || off+size > uint64(fileSize) {
		return formatErr(field, "%s at %#x (%d bytes) is past the end of the file (%d bytes)", name, off, size, fileSize)
	}
	return nil
}

func (h *Header) l2EntrySize() uint64 {
	if h.ExtendedL2() {
		return 16
	}
	return 8
}

func divRoundUp(a, b uint64) uint64 {
	if a == 0 {
		return 0
	}
	return (a-1)/b + 1
}
