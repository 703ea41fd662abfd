package qcow2

// ImageInfo is what `qemu-img info --output=json` prints for one image;
// it marshals to the same keys, present or absent as qemu-img 7.2 has them.
type ImageInfo struct {
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
	Format         string     `json:"format"`
	CipherAlg      string     `json:"cipher-alg,omitempty"`
	CipherMode     string     `json:"cipher-mode,omitempty"`
	IvgenAlg       string     `json:"ivgen-alg,omitempty"`
	IvgenHashAlg   string     `json:"ivgen-hash-alg,omitempty"`
	HashAlg        string     `json:"hash-alg,omitempty"`
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

// Info describes one layer as qemu-img info does. probed says whether the
// layer's format was probed.
func Info(l Layer, probed bool) (*ImageInfo, error) {
	info := &ImageInfo{
		Filename:            l.Filename(),
		Format:              l.Format(),
		VirtualSize:         l.Size(),
		DirtyFlag:           ptr(false),
		BackingFormatProbed: probed,
	}
	switch l := l.(type) {
	case *RawFile:
		if n := allocatedBytes(l.f); n >= 0 {
			info.ActualSize = ptr(n)
		}
		return info, nil
	case *File:
		return info, l.fillInfo(info)
	}
	return info, nil
}

func (f *File) fillInfo(info *ImageInfo) error {
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
// `qemu-img info --backing-chain` does.
func (c *Chain) ChainInfo() ([]*ImageInfo, error) {
	var out []*ImageInfo
	for i, l := range c.Layers {
		info, err := Info(l, c.Probed[i])
		if err != nil {
			return nil, withFile(l.Filename(), err)
		}
		out = append(out, info)
	}
	return out, nil
}
