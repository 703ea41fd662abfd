package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Layer is one image of a backing chain: a qcow2 file or a raw file.
type Layer interface {
	// Filename is the name QEMU would report for the layer.
	Filename() string
	// Format is "qcow2" or "raw".
	Format() string
	// Size is the guest size as QEMU sees it (whole 512-byte sectors).
	Size() uint64
	// Extent reports the run of this layer alone that starts at off, at
	// most max bytes long (off < Size()).
	Extent(off, max uint64) (Extent, error)
	// ReadExtent fills p with guest data at guest offset off, which lies in
	// e, an extent returned by Extent whose type is Normal or Compressed.
	ReadExtent(p []byte, e Extent, off uint64) error
	// Close releases the layer's files.
	Close() error
}

// Filename implements Layer.
func (f *File) Filename() string { return f.Name }

// Format implements Layer.
func (f *File) Format() string { return "qcow2" }

// Size implements Layer.
func (f *File) Size() uint64 { return f.VirtualSize() }

// ReadExtent implements Layer.
func (f *File) ReadExtent(p []byte, e Extent, off uint64) error {
	switch e.Type {
	case Normal:
		r, size, err := f.dataReader()
		if err != nil {
			return err
		}
		return readAtZeroFill(r, size, p, e.HostOffset+(off-e.Start))
	case Compressed:
		c, err := f.decompressCluster(e.Entry)
		if err != nil {
			return err
		}
		copy(p, c[off&(f.ClusterSize()-1):])
		return nil
	}
	clear(p)
	return nil
}

// readAtZeroFill reads len(p) bytes at off; bytes past the end of the file
// read as zeros, as QEMU's file driver reads them.
func readAtZeroFill(r io.ReaderAt, size int64, p []byte, off uint64) error {
	if off >= uint64(size) {
		clear(p)
		return nil
	}
	n := len(p)
	if rest := uint64(size) - off; uint64(n) > rest {
		n = int(rest)
	}
	m, err := r.ReadAt(p[:n], int64(off))
	if err != nil && !(errors.Is(err, io.EOF) && m == n) {
		if errors.Is(err, io.EOF) {
			clear(p[m:])
			return nil
		}
		return err
	}
	clear(p[n:])
	return nil
}

// RawFile is a raw image used as a backing file (or opened on its own).
type RawFile struct {
	Name string
	f    *os.File
	r    io.ReaderAt
	size int64
}

// OpenRaw opens the named file as a raw image.
func OpenRaw(name string) (*RawFile, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &RawFile{Name: name, f: f, r: f, size: st.Size()}, nil
}

// NewRaw returns a raw layer reading r, of size bytes, without hole
// detection (every byte is data).
func NewRaw(name string, r io.ReaderAt, size int64) *RawFile {
	return &RawFile{Name: name, r: r, size: size}
}

// Filename implements Layer.
func (r *RawFile) Filename() string { return r.Name }

// Format implements Layer.
func (r *RawFile) Format() string { return "raw" }

// Size implements Layer: the file size rounded up to whole sectors.
func (r *RawFile) Size() uint64 { return (uint64(r.size) + 511) &^ 511 }

// HostSize returns the size of the file itself.
func (r *RawFile) HostSize() int64 { return r.size }

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// Extent implements Layer. Holes of a sparse file are reported as ZeroAlloc
// and data as Normal, both mapped at the guest offset, as QEMU does.
func (r *RawFile) Extent(off, max uint64) (Extent, error) {
	size := r.Size()
	if off >= size || max == 0 {
		return Extent{}, fmt.Errorf("extent at %#x is outside the size %#x", off, size)
	}
	end := min(size, off+max)
	if r.f == nil {
		return Extent{Start: off, Length: end - off, Type: Normal, HostOffset: off}, nil
	}
	data, err := r.f.Seek(int64(off), seekData)
	if err != nil {
		// ENXIO: a trailing hole; any other error: assume data, as QEMU does.
		if isENXIO(err) {
			return Extent{Start: off, Length: end - off, Type: ZeroAlloc, HostOffset: off}, nil
		}
		return Extent{Start: off, Length: end - off, Type: Normal, HostOffset: off}, nil
	}
	if uint64(data) > off {
		return Extent{Start: off, Length: min(uint64(data), end) - off, Type: ZeroAlloc, HostOffset: off}, nil
	}
	hole, err := r.f.Seek(int64(off), seekHole)
	if err != nil {
		return Extent{Start: off, Length: end - off, Type: Normal, HostOffset: off}, nil
	}
	// Data ends at the file's real end; the rest of the last sector is a
	// trailing hole, as QEMU reports it.
	return Extent{Start: off, Length: min(uint64(hole), end) - off, Type: Normal, HostOffset: off}, nil
}

// ReadExtent implements Layer.
func (r *RawFile) ReadExtent(p []byte, e Extent, off uint64) error {
	if e.Type != Normal {
		clear(p)
		return nil
	}
	return readAtZeroFill(r.r, r.size, p, off)
}

// Close implements Layer.
func (r *RawFile) Close() error {
	if r.f != nil {
		return r.f.Close()
	}
	return nil
}
