package qcow2

import "os"

// ImageInfo is what `qemu-img info --output=json` prints for one image;
// it marshals to the same keys, present or absent as qemu-img has them in
// the layout it was made for (Children is empty in 7.2's).
type ImageInfo struct {
	Children              []ChildInfo     `json:"children,omitempty"`
	Filename              string          `json:"filename"`
	Format                string          `json:"format"`
	DirtyFlag             *bool           `json:"dirty-flag,omitempty"`
	ActualSize            *int64          `json:"actual-size,omitempty"`
	VirtualSize           uint64          `json:"virtual-size"`
	ClusterSize           *uint64         `json:"cluster-size,omitempty"`
	Encrypted             *bool           `json:"encrypted,omitempty"`
	BackingFilename       string          `json:"backing-filename,omitempty"`
	FullBackingFilename   string          `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string          `json:"backing-filename-format,omitempty"`
	Snapshots             []SnapshotInfo  `json:"snapshots,omitempty"`
	FormatSpecific        *FormatSpecific `json:"format-specific,omitempty"`

	// BackingFormatProbed is true when this image's format was probed
	// because its overlay records no backing format (not in qemu-img's JSON).
	BackingFormatProbed bool `json:"-"`
	// UnsupportedFeatures names unknown incompatible features: the image is
	// described but its data cannot be read (qemu-img refuses to open it).
	UnsupportedFeatures string `json:"-"`
}

// ChildInfo is one child node of an image as qemu-img 8.0 and later list
// them: the protocol node holding the image's bytes, named "file". qemu-img
// info lists no other child: it opens neither backing files (each has its
// own entry with --backing-chain) nor, since QEMU 8.2 and 7.2's stable
// releases, an external data file.
type ChildInfo struct {
	Name string        `json:"name"`
	Info *ProtocolInfo `json:"info"`
}

// ProtocolInfo describes a protocol node, the host file under an image, as
// qemu-img info describes it inside a ChildInfo.
type ProtocolInfo struct {
	// Children is empty and never nil: a host file has no child nodes, and
	// qemu-img prints an empty list.
	Children []ChildInfo `json:"children"`
	// VirtualSize is the file's length rounded up to whole 512-byte
	// sectors, as QEMU's block layer sees any file.
	VirtualSize    uint64             `json:"virtual-size"`
	Filename       string             `json:"filename"`
	Format         string             `json:"format"` // "file"
	ActualSize     *int64             `json:"actual-size,omitempty"`
	FormatSpecific FileFormatSpecific `json:"format-specific"`
	DirtyFlag      bool               `json:"dirty-flag"`
}

// FileFormatSpecific is the "format-specific" object of a protocol node.
type FileFormatSpecific struct {
	Type string       `json:"type"` // "file"
	Data FileSpecific `json:"data"`
}

// FileSpecific is what QEMU's file driver reports about a host file.
type FileSpecific struct {
	// ExtentSizeHint is the file's extent size hint (FS_IOC_FSGETXATTR's
	// fsx_extsize), when it is not zero: XFS keeps the 1 MiB hint QEMU
	// sets on the images it creates.
	ExtentSizeHint *uint64 `json:"extent-size-hint,omitempty"`
}

// SnapshotInfo is one internal snapshot as qemu-img info lists it.
type SnapshotInfo struct {
	Icount      *uint64 `json:"icount,omitempty"`
	VMStateSize uint64  `json:"vm-state-size"`
	DateSec     uint32  `json:"date-sec"`
	DateNsec    uint32  `json:"date-nsec"`
	VMClockSec  uint64  `json:"vm-clock-sec"`
	VMClockNsec uint64  `json:"vm-clock-nsec"`
	ID          string  `json:"id"`
	Name        string  `json:"name"`
}

// FormatSpecific is qemu-img's "format-specific" object.
type FormatSpecific struct {
	Type string         `json:"type"`
	Data *Qcow2Specific `json:"data"`
}

// Qcow2Specific is the qcow2 part of FormatSpecific.
type Qcow2Specific struct {
	Compat          string       `json:"compat"`
	DataFile        *string      `json:"data-file,omitempty"`
	DataFileRaw     *bool        `json:"data-file-raw,omitempty"`
	ExtendedL2      *bool        `json:"extended-l2,omitempty"`
	LazyRefcounts   *bool        `json:"lazy-refcounts,omitempty"`
	Corrupt         *bool        `json:"corrupt,omitempty"`
	RefcountBits    uint32       `json:"refcount-bits"`
	Encrypt         *EncryptInfo `json:"encrypt,omitempty"`
	Bitmaps         []BitmapInfo `json:"bitmaps,omitempty"`
	CompressionType string       `json:"compression-type"`
}

// EncryptInfo describes the encryption of an image; for LUKS, the fields
// of the LUKS header as qemu-img lists them.
type EncryptInfo struct {
	Format       string `json:"format"`
	CipherAlg    string `json:"cipher-alg,omitempty"`
	CipherMode   string `json:"cipher-mode,omitempty"`
	IvgenAlg     string `json:"ivgen-alg,omitempty"`
	IvgenHashAlg string `json:"ivgen-hash-alg,omitempty"`
	HashAlg      string `json:"hash-alg,omitempty"`
	// DetachedHeader is false for LUKS inside qcow2 (the header is in the
	// image); qemu-img lists it since QEMU 9.0.
	DetachedHeader *bool      `json:"detached-header,omitempty"`
	PayloadOffset  *uint64    `json:"payload-offset,omitempty"`
	MasterKeyIters *uint32    `json:"master-key-iters,omitempty"`
	UUID           string     `json:"uuid,omitempty"`
	Slots          []LUKSSlot `json:"slots,omitempty"`
}

// BitmapInfo is one persistent bitmap as qemu-img info lists it.
type BitmapInfo struct {
	Flags       []string `json:"flags"`
	Name        string   `json:"name"`
	Granularity uint64   `json:"granularity"`
}

func ptr[T any](v T) *T { return &v }

// Info describes one layer as qemu-img info of opts.Layout does. probed
// says whether the layer's format was probed.
func Info(l Layer, probed bool, opts OutputOptions) (*ImageInfo, error) {
	info := &ImageInfo{
		Filename:            l.Filename(),
		Format:              l.Format(),
		VirtualSize:         l.Size(),
		DirtyFlag:           ptr(false),
		BackingFormatProbed: probed,
	}
	var host any
	var hostSize int64
	switch l := l.(type) {
	case *RawFile:
		host, hostSize = l.f, l.size
		if n := allocatedBytes(l.f); n >= 0 {
			info.ActualSize = ptr(n)
		}
	case *File:
		host, hostSize = l.r, l.size
		if err := l.fillInfo(info, opts.Layout); err != nil {
			return nil, err
		}
	}
	if opts.Layout != LayoutQemu72 {
		info.Children = []ChildInfo{{Name: "file", Info: protocolInfo(l.Filename(), host, hostSize)}}
	}
	return info, nil
}

// protocolInfo describes the host file under a layer: host is what the
// layer reads (an *os.File gives the allocated size and the extent size
// hint) and size its length in bytes.
func protocolInfo(name string, host any, size int64) *ProtocolInfo {
	p := &ProtocolInfo{
		Children:       []ChildInfo{},
		VirtualSize:    (uint64(max(size, 0)) + 511) &^ 511,
		Filename:       name,
		Format:         "file",
		FormatSpecific: FileFormatSpecific{Type: "file"},
	}
	if n := allocatedBytes(host); n >= 0 {
		p.ActualSize = ptr(n)
	}
	if f, ok := host.(*os.File); ok && f != nil {
		if hint, ok := extentSizeHint(f); ok {
			p.FormatSpecific.Data.ExtentSizeHint = ptr(hint)
		}
	}
	return p
}

func (f *File) fillInfo(info *ImageInfo, layout Layout) error {
	h := f.Header
	// qemu-img 7.2 counts the qcow2 file alone, not an external data file.
	if n := allocatedBytes(f.r); n >= 0 {
		info.ActualSize = ptr(n)
	}
	info.ClusterSize = ptr(f.ClusterSize())
	info.DirtyFlag = ptr(h.IncompatibleFeatures&IncompatDirty != 0)
	if h.CryptMethod != CryptNone {
		info.Encrypted = ptr(true)
	}
	if u := h.UnknownIncompatible(); u != 0 {
		info.UnsupportedFeatures = h.featureNames(u)
	}
	if h.BackingFile != "" {
		info.BackingFilename = h.BackingFile
		info.FullBackingFilename = BackingPath(f.Name, h.BackingFile)
		info.BackingFilenameFormat = h.BackingFormat
	}
	snaps, err := f.Snapshots()
	if err != nil {
		return err
	}
	for _, s := range snaps {
		si := SnapshotInfo{
			VMStateSize: s.VMStateSize,
			DateSec:     s.DateSec,
			DateNsec:    s.DateNsec,
			VMClockSec:  s.VMClockNsec / 1e9,
			VMClockNsec: s.VMClockNsec % 1e9,
			ID:          s.ID,
			Name:        s.Name,
		}
		if s.HasIcount() {
			si.Icount = ptr(s.Icount)
		}
		info.Snapshots = append(info.Snapshots, si)
	}
	spec := &Qcow2Specific{RefcountBits: h.RefcountBits(), CompressionType: "zlib"}
	if h.CompressionType == CompressionZstd {
		spec.CompressionType = "zstd"
	}
	switch h.CryptMethod {
	case CryptAES:
		spec.Encrypt = &EncryptInfo{Format: "aes"}
	case CryptLUKS:
		enc, err := f.luksInfo()
		if err != nil {
			return err
		}
		if layout != LayoutQemu72 {
			enc.DetachedHeader = ptr(false)
		}
		spec.Encrypt = enc
	}
	if h.Version == 2 {
		spec.Compat = "0.10"
	} else {
		spec.Compat = "1.1"
		spec.LazyRefcounts = ptr(h.CompatibleFeatures&CompatLazyRefcounts != 0)
		spec.Corrupt = ptr(h.IncompatibleFeatures&IncompatCorrupt != 0)
		spec.ExtendedL2 = ptr(h.ExtendedL2())
		if h.DataFile != "" {
			spec.DataFile = ptr(h.DataFile)
		}
		if h.HasDataFile() {
			spec.DataFileRaw = ptr(h.DataFileRaw())
		}
		bms, err := f.Bitmaps()
		if err != nil {
			return err
		}
		for _, b := range bms {
			bi := BitmapInfo{Name: b.Name, Granularity: b.Granularity(), Flags: []string{}}
			if b.Flags&BitmapInUse != 0 {
				bi.Flags = append(bi.Flags, "in-use")
			}
			if b.Flags&BitmapAuto != 0 {
				bi.Flags = append(bi.Flags, "auto")
			}
			spec.Bitmaps = append(spec.Bitmaps, bi)
		}
	}
	info.FormatSpecific = &FormatSpecific{Type: "qcow2", Data: spec}
	return nil
}

// ChainInfo describes every layer of the chain, top first, as
// `qemu-img info --backing-chain` of opts.Layout does.
func (c *Chain) ChainInfo(opts OutputOptions) ([]*ImageInfo, error) {
	var out []*ImageInfo
	for i, l := range c.Layers {
		info, err := Info(l, c.Probed[i], opts)
		if err != nil {
			return nil, withFile(l.Filename(), err)
		}
		out = append(out, info)
	}
	return out, nil
}
