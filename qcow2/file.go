package qcow2

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// l2CacheBytes bounds the memory of the L2 table cache of one File.
const l2CacheBytes = 4 << 20

// File is one opened qcow2 file: its header, L1 table and a bounded cache of
// L2 tables. It describes one layer; Chain combines layers.
type File struct {
	Name   string // the name the file was opened by
	Header *Header
	Geo    Geometry

	r         io.ReaderAt
	size      int64 // host file size in bytes
	closer    io.Closer
	l1        []uint64
	l1Err     error
	l1Once    sync.Once
	rt        []uint64
	rtErr     error
	rtOnce    sync.Once
	preOnce   sync.Once
	prealloc  bool
	snaps     []Snapshot
	snapsErr  error
	snapsSize uint64
	snapOnce  sync.Once

	// dataFile is the external data file, opened on first use.
	dataOnce sync.Once
	data     io.ReaderAt
	dataSize int64
	dataErr  error
	dataCl   io.Closer
	// DataFileResolver, when set before the first read, opens the external
	// data file; Open sets one that joins relative names to the image's folder.
	DataFileResolver func(name string) (io.ReaderAt, int64, io.Closer, error)

	// readErr says why guest data cannot be read (unknown features,
	// encryption), or is nil.
	readErr error

	mu      sync.Mutex
	l2      map[uint64]*list.Element // table cache: L2 tables and refcount blocks
	l2lru   list.List
	l2bytes int
	zbuf    *decompressed
}

type l2Table struct {
	off uint64
	b   []byte
}

// Open opens the named qcow2 file read-only.
func Open(name string) (*File, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	q, err := NewFile(f, st.Size())
	if err != nil {
		f.Close()
		return nil, withFile(name, err)
	}
	q.Name = name
	q.closer = f
	// QEMU opens a relative data file name as given, from its current
	// folder (not the image's), and so does qchain.
	q.DataFileResolver = func(dn string) (io.ReaderAt, int64, io.Closer, error) {
		return openReaderAt(dn)
	}
	return q, nil
}

func openReaderAt(name string) (io.ReaderAt, int64, io.Closer, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return f, st.Size(), f, nil
}

// NewFile reads a qcow2 image from r, whose size is size bytes. It parses
// the header and its extensions; tables are read on demand.
func NewFile(r io.ReaderAt, size int64) (*File, error) {
	n := int64(headerReadSize)
	if size < n {
		n = size
	}
	// Read the first 4 KiB and parse them. Parsing reads no byte past the
	// buffer and fails when it would, so a success on this prefix is the
	// parse of the whole header cluster; only on failure is the rest of
	// the cluster read and the parse repeated (few headers need it, and
	// fresh pages are costly on some hosts: a chain opens many files).
	first := min(n, 4096)
	b := make([]byte, first)
	if _, err := r.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	h, err := ParseHeader(b, size)
	if err != nil && len(b) >= 24 && binary.BigEndian.Uint32(b) == Magic {
		if cb := binary.BigEndian.Uint32(b[20:]); cb >= MinClusterBits && cb <= MaxClusterBits && int64(1)<<cb > first {
			want := min(int64(1)<<cb, n)
			b = make([]byte, want)
			if _, err := r.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			h, err = ParseHeader(b, size)
		}
	}
	if err != nil {
		return nil, err
	}
	f := &File{
		Header: h,
		Geo:    Geometry{ClusterBits: h.ClusterBits, ExtendedL2: h.ExtendedL2(), DataFile: h.HasDataFile()},
		r:      r,
		size:   size,
		l2:     make(map[uint64]*list.Element),
	}
	f.readErr = f.readable()
	return f, nil
}

// Close closes the underlying files if Open opened them.
func (f *File) Close() error {
	var err error
	if f.closer != nil {
		err = f.closer.Close()
	}
	if f.dataCl != nil {
		f.dataCl.Close()
	}
	return err
}

// HostSize returns the size of the qcow2 file itself.
func (f *File) HostSize() int64 { return f.size }

// VirtualSize returns the guest size as QEMU sees it: the header's size
// rounded down to whole 512-byte sectors.
func (f *File) VirtualSize() uint64 { return f.Header.Size &^ 511 }

// ClusterSize returns the cluster size in bytes.
func (f *File) ClusterSize() uint64 { return f.Header.ClusterSize() }

// ReaderAt returns the raw host file.
func (f *File) ReaderAt() io.ReaderAt { return f.r }

// readable reports why the guest data of this file cannot be read, if so.
// NewFile calls it before Open sets the name: readers add the name.
func (f *File) readable() error {
	h := f.Header
	if u := h.UnknownIncompatible(); u != 0 {
		return fmt.Errorf("%w: unknown incompatible feature(s): %s", ErrUnsupported, h.featureNames(u))
	}
	if h.CryptMethod != CryptNone {
		return fmt.Errorf("%w: image is encrypted (%s); reading encrypted data is not supported", ErrUnsupported, cryptName(h.CryptMethod))
	}
	return nil
}

func cryptName(m uint32) string {
	switch m {
	case CryptAES:
		return "aes"
	case CryptLUKS:
		return "luks"
	}
	return fmt.Sprintf("method %d", m)
}

// L1 returns the active L1 table, reading it on first use.
func (f *File) L1() ([]uint64, error) {
	f.l1Once.Do(func() {
		f.l1, f.l1Err = f.readTable(f.Header.L1TableOffset, uint64(f.Header.L1Size), "L1 table")
	})
	return f.l1, f.l1Err
}

// readTable reads n big-endian uint64 entries at off. Callers have checked
// n against a named limit; the range is checked against the file size here.
func (f *File) readTable(off, n uint64, what string) ([]uint64, error) {
	if n == 0 {
		return nil, nil
	}
	size := n * 8
	if off > uint64(f.size) || size > uint64(f.size)-off {
		return nil, withFile(f.Name, formatErr(int64(off), "%s (%d entries) is past the end of the file", what, n))
	}
	b := make([]byte, size)
	if _, err := f.r.ReadAt(b, int64(off)); err != nil {
		return nil, withFile(f.Name, fmt.Errorf("reading %s: %w", what, err))
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(b[i*8:])
	}
	return t, nil
}

// l2Size returns the number of entries in one L2 table.
func (f *File) l2Entries() uint64 { return f.ClusterSize() / f.Header.l2EntrySize() }

// l2Table returns the L2 table at host offset off, through the cache.
func (f *File) l2Table(off uint64) ([]byte, error) {
	cs := f.ClusterSize()
	if off%cs != 0 {
		return nil, withFile(f.Name, formatErr(int64(off), "L2 table offset %#x is not cluster aligned", off))
	}
	if off > uint64(f.size) || cs > uint64(f.size)-off {
		return nil, withFile(f.Name, formatErr(int64(off), "L2 table at %#x is past the end of the file", off))
	}
	return f.cluster(off)
}

// cluster returns the host cluster at off (cluster aligned) through the
// table cache. Bytes past the end of the file read as zeros, as in QEMU.
func (f *File) cluster(off uint64) ([]byte, error) {
	cs := f.ClusterSize()
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.l2[off]; ok {
		f.l2lru.MoveToFront(e)
		return e.Value.(*l2Table).b, nil
	}
	b := make([]byte, cs)
	if err := readAtZeroFill(f.r, f.size, b, off); err != nil {
		return nil, withFile(f.Name, fmt.Errorf("reading cluster at %#x: %w", off, err))
	}
	// Evicted tables are dropped, never reused: a caller on another
	// goroutine may still be reading one. Hot sequential paths use a
	// TableCursor instead of this cache.
	for f.l2bytes+len(b) > l2CacheBytes && f.l2lru.Len() > 1 {
		old := f.l2lru.Back()
		t := old.Value.(*l2Table)
		f.l2lru.Remove(old)
		delete(f.l2, t.off)
		f.l2bytes -= len(t.b)
	}
	f.l2[off] = f.l2lru.PushFront(&l2Table{off: off, b: b})
	f.l2bytes += len(b)
	return b, nil
}

// entryAt decodes entry i of an L2 table.
func (f *File) entryAt(t []byte, i uint64) L2Entry {
	if f.Geo.ExtendedL2 {
		return L2Entry{Desc: binary.BigEndian.Uint64(t[i*16:]), Bitmap: binary.BigEndian.Uint64(t[i*16+8:])}
	}
	return L2Entry{Desc: binary.BigEndian.Uint64(t[i*8:])}
}

// dataReader returns where guest clusters live: the qcow2 file itself or
// the external data file.
func (f *File) dataReader() (io.ReaderAt, int64, error) {
	if !f.Header.HasDataFile() {
		return f.r, f.size, nil
	}
	f.dataOnce.Do(func() {
		if f.Header.DataFile == "" {
			f.dataErr = withFile(f.Name, fmt.Errorf("%w: image needs an external data file but names none", ErrUnsupported))
			return
		}
		if f.DataFileResolver == nil {
			f.dataErr = withFile(f.Name, fmt.Errorf("no resolver for external data file %q", f.Header.DataFile))
			return
		}
		var err error
		f.data, f.dataSize, f.dataCl, err = f.DataFileResolver(f.Header.DataFile)
		if err != nil {
			f.dataErr = withFile(f.Name, fmt.Errorf("opening external data file: %w", err))
		}
	})
	return f.data, f.dataSize, f.dataErr
}

// EntryAt returns the L2 entry of the guest cluster holding guest offset
// off (a zero entry when its L2 table is not allocated).
func (f *File) EntryAt(off uint64) (L2Entry, error) {
	l1, err := f.L1()
	if err != nil {
		return L2Entry{}, err
	}
	ci := off >> f.Header.ClusterBits
	l1i, l2i := ci/f.l2Entries(), ci%f.l2Entries()
	if l1i >= uint64(len(l1)) || l1[l1i]&L1EntryOffsetMask == 0 {
		return L2Entry{}, nil
	}
	t, err := f.l2Table(l1[l1i] & L1EntryOffsetMask)
	if err != nil {
		return L2Entry{}, err
	}
	return f.entryAt(t, l2i), nil
}
