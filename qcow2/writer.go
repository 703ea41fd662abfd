package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// CreateOptions describes a new image. The zero value of each field is
// qemu-img's default.
type CreateOptions struct {
	// Size is the virtual size in bytes, rounded up to 512; 0 takes the
	// backing file's size (and is then required to have a backing file).
	Size uint64
	// ClusterSize in bytes, a power of two from 512 to 2 MiB; 0 means 64 KiB.
	ClusterSize uint64
	// BackingFile is recorded as given (relative names are resolved from
	// the new image's folder, as QEMU does); empty for a standalone image.
	BackingFile string
	// BackingFormat is recorded in the header; empty probes the backing
	// file's format now and records it.
	BackingFormat string
}

// Feature names QEMU 7.2 records in the feature name table.
var qemuFeatureTable = []FeatureName{
	{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
	{0, 3, "compression type"}, {0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
}

// newHeaderLength is the header length QEMU 7.2 writes (with the
// compression type byte and its padding).
const newHeaderLength = 112

// Create writes a new empty qcow2 v3 image at name, laid out as qemu-img
// lays it out (header, refcount table, refcount block, L1 table). It never
// overwrites an existing file, and removes what it wrote on failure.
func Create(name string, opts CreateOptions) (err error) {
	cs := opts.ClusterSize
	if cs == 0 {
		cs = 64 << 10
	}
	bits := uint32(0)
	for bits = MinClusterBits; bits <= MaxClusterBits && uint64(1)<<bits != cs; bits++ {
	}
	if bits > MaxClusterBits {
		return fmt.Errorf("%s: cluster size %d is not a power of two from 512 to 2 MiB", name, cs)
	}
	size := opts.Size
	backingFmt := opts.BackingFormat
	if opts.BackingFile != "" {
		bp := BackingPath(name, opts.BackingFile)
		if hasProtocol(opts.BackingFile) {
			return fmt.Errorf("%s: backing file %q uses a protocol; only local files are supported", name, opts.BackingFile)
		}
		l, _, err := OpenLayer(bp, backingFmt, ChainOptions{})
		if err != nil {
			return fmt.Errorf("%s: cannot open backing file: %w", name, err)
		}
		if backingFmt == "" {
			backingFmt = l.Format()
		}
		if size == 0 {
			size = l.Size()
		}
		l.Close()
	} else if size == 0 && opts.Size == 0 {
		return fmt.Errorf("%s: a size is needed for an image without a backing file", name)
	}
	size = (size + 511) &^ 511
	if len(opts.BackingFile) > MaxBackingNameLen {
		return fmt.Errorf("%s: backing file name longer than %d bytes", name, MaxBackingNameLen)
	}
	if len(backingFmt) > maxBackingFmtLen {
		return fmt.Errorf("%s: backing format %q too long", name, backingFmt)
	}

	l2Span := cs * (cs / 8)
	l1Entries := divRoundUp(size, l2Span)
	if l1Entries > MaxL1Bytes/8 {
		return fmt.Errorf("%s: size %d too large for %d-byte clusters", name, size, cs)
	}
	l1Clusters := divRoundUp(l1Entries*8, cs)
	// Header, refcount table, refcount blocks, L1: find how many refcount
	// blocks and table clusters cover every cluster, themselves included.
	perBlock := cs / 2 // 16-bit refcounts
	rtClusters, rbCount := uint64(1), uint64(1)
	for {
		total := 1 + rtClusters + rbCount + l1Clusters
		needBlocks := divRoundUp(total, perBlock)
		needTable := divRoundUp(needBlocks*8, cs)
		if needBlocks == rbCount && needTable == rtClusters {
			break
		}
		rbCount, rtClusters = needBlocks, needTable
	}
	if rtClusters*cs > MaxRefTableBytes {
		return fmt.Errorf("%s: refcount table would be too large", name)
	}
	rtOff := cs
	rbOff := rtOff + rtClusters*cs
	l1Off := rbOff + rbCount*cs
	total := 1 + rtClusters + rbCount + l1Clusters

	hdr, err := buildHeaderCluster(headerFields{
		clusterBits: bits, size: size, l1Size: uint32(l1Entries), l1Off: l1Off,
		rtOff: rtOff, rtClusters: uint32(rtClusters),
	}, opts.BackingFile, backingFmt, cs)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(name)
		}
	}()
	rt := make([]byte, rtClusters*cs)
	for i := uint64(0); i < rbCount; i++ {
		binary.BigEndian.PutUint64(rt[i*8:], rbOff+i*cs)
	}
	rb := make([]byte, rbCount*cs)
	for i := uint64(0); i < total; i++ {
		binary.BigEndian.PutUint16(rb[i*2:], 1)
	}
	for _, w := range []struct {
		b   []byte
		off uint64
	}{{hdr, 0}, {rt, rtOff}, {rb, rbOff}} {
		if _, err := f.WriteAt(w.b, int64(w.off)); err != nil {
			return err
		}
	}
	// The L1 table is all zeros: the file ends right after it, as
	// qemu-img leaves it (a sparse hole, no data written).
	end := l1Off + l1Entries*8
	if l1Entries == 0 {
		end = l1Off
	}
	if err := f.Truncate(int64(end)); err != nil {
		return err
	}
	return f.Sync()
}

type headerFields struct {
	clusterBits           uint32
	size                  uint64
	l1Size                uint32
	l1Off, rtOff          uint64
	rtClusters            uint32
	nbSnapshots           uint32
	snapshotsOff          uint64
	incompat, compat, acl uint64
	refcountOrder         uint32
	compressionType       uint8
}

// buildHeaderCluster lays out a v3 header cluster as QEMU's
// qcow2_update_header does: fixed header, backing format, feature table
// (when it fits), end marker, then the backing file name.
func buildHeaderCluster(h headerFields, backing, backingFmt string, cs uint64) ([]byte, error) {
	return buildHeader(h, backing, backingFmt, nil, nil, cs)
}

// buildHeader is buildHeaderCluster keeping other extensions (raw type and
// data) where QEMU puts them: before are written between the backing format
// and the feature table (data file, crypto header), after follow the
// feature table (bitmaps, unknown extensions).
func buildHeader(h headerFields, backing, backingFmt string, before, after []rawExtension, cs uint64) ([]byte, error) {
	if h.refcountOrder == 0 {
		h.refcountOrder = 4
	}
	b := make([]byte, cs)
	be := binary.BigEndian
	be.PutUint32(b[0:], Magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], h.clusterBits)
	be.PutUint64(b[24:], h.size)
	be.PutUint32(b[36:], h.l1Size)
	be.PutUint64(b[40:], h.l1Off)
	be.PutUint64(b[48:], h.rtOff)
	be.PutUint32(b[56:], h.rtClusters)
	be.PutUint32(b[60:], h.nbSnapshots)
	be.PutUint64(b[64:], h.snapshotsOff)
	be.PutUint64(b[72:], h.incompat)
	be.PutUint64(b[80:], h.compat)
	be.PutUint64(b[88:], h.acl)
	be.PutUint32(b[96:], h.refcountOrder)
	be.PutUint32(b[100:], newHeaderLength)
	b[104] = h.compressionType
	off := uint64(newHeaderLength)
	put := func(typ uint32, data []byte) error {
		n := uint64(len(data))
		if off+8+((n+7)&^7) > cs {
			return errors.New("header extensions do not fit in the first cluster")
		}
		be.PutUint32(b[off:], typ)
		be.PutUint32(b[off+4:], uint32(n))
		copy(b[off+8:], data)
		off += 8 + (n+7)&^7
		return nil
	}
	if backingFmt != "" {
		if err := put(ExtBackingFormat, []byte(backingFmt)); err != nil {
			return nil, err
		}
	}
	for _, e := range before {
		if err := put(e.typ, e.data); err != nil {
			return nil, err
		}
	}
	table := make([]byte, 0, 48*len(qemuFeatureTable))
	for _, f := range qemuFeatureTable {
		ent := make([]byte, 48)
		ent[0], ent[1] = f.Type, f.Bit
		copy(ent[2:], f.Name)
		table = append(table, ent...)
	}
	if err := put(ExtFeatureTable, table); err != nil {
		return nil, err
	}
	for _, e := range after {
		if err := put(e.typ, e.data); err != nil {
			return nil, err
		}
	}
	if err := put(ExtEnd, nil); err != nil {
		return nil, err
	}
	if backing != "" {
		if off+uint64(len(backing)) > cs {
			return nil, errors.New("backing file name does not fit in the first cluster")
		}
		be.PutUint64(b[8:], off)
		be.PutUint32(b[16:], uint32(len(backing)))
		copy(b[off:], backing)
	}
	return b, nil
}

type rawExtension struct {
	typ  uint32
	data []byte
}

// Rebase rewrites the backing file name and format recorded in a qcow2 v3
// image's header, like `qemu-img rebase -u`: no data is copied, so the
// caller must know the new backing file reads the same. The header cluster
// is rebuilt and written with one write, then synced. The image must not be
// in use.
func Rebase(name, backing, backingFmt string) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	release, err := lockImage(f)
	if err != nil {
		return err
	}
	defer release()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	q, err := NewFile(f, st.Size())
	if err != nil {
		return withFile(name, err)
	}
	h := q.Header
	if h.Version != 3 {
		return fmt.Errorf("%s: rewriting the header of a version %d image is not supported", name, h.Version)
	}
	if h.HeaderLength > newHeaderLength {
		return fmt.Errorf("%s: header has %d bytes of fields this version does not know; refusing to rewrite it", name, h.HeaderLength-newHeaderLength)
	}
	if h.UnknownIncompatible() != 0 {
		return fmt.Errorf("%s: %w: unknown incompatible features %s", name, ErrUnsupported, h.featureNames(h.UnknownIncompatible()))
	}
	if backing != "" && backingFmt == "" {
		l, _, err := OpenLayer(BackingPath(name, backing), "", ChainOptions{})
		if err != nil {
			return fmt.Errorf("%s: cannot open new backing file: %w", name, err)
		}
		backingFmt = l.Format()
		l.Close()
	}
	if backing == "" {
		backingFmt = ""
	}
	// Keep every extension but the backing format and the feature table
	// (both rewritten), in QEMU's order.
	var before, after []rawExtension
	for _, e := range h.Extensions {
		if e.Type == ExtBackingFormat || e.Type == ExtFeatureTable {
			continue
		}
		data := make([]byte, e.Length)
		if _, err := f.ReadAt(data, e.Offset); err != nil {
			return withFile(name, err)
		}
		if e.Type == ExtDataFile || e.Type == ExtCryptoHeader {
			before = append(before, rawExtension{e.Type, data})
		} else {
			after = append(after, rawExtension{e.Type, data})
		}
	}
	hdr, err := buildHeader(headerFields{
		clusterBits: h.ClusterBits, size: h.Size, l1Size: h.L1Size, l1Off: h.L1TableOffset,
		rtOff: h.RefcountTableOffset, rtClusters: h.RefcountTableClusters,
		nbSnapshots: h.NbSnapshots, snapshotsOff: h.SnapshotsOffset,
		incompat: h.IncompatibleFeatures, compat: h.CompatibleFeatures, acl: h.AutoclearFeatures,
		refcountOrder: h.RefcountOrder, compressionType: h.CompressionType,
	}, backing, backingFmt, before, after, h.ClusterSize())
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return err
	}
	return f.Sync()
}
