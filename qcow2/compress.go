package qcow2

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// decompressed caches the last decompressed cluster of a File: reads of a
// compressed cluster usually come in several pieces.
type decompressed struct {
	desc uint64
	data []byte
}

var zstdDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		return err
	}
	return d
}}

// decompressCluster returns the guest content of the compressed cluster
// described by e (one cluster of bytes).
func (f *File) decompressCluster(e L2Entry) ([]byte, error) {
	f.mu.Lock()
	if z := f.zbuf; z != nil && z.desc == e.Desc {
		f.mu.Unlock()
		return z.data, nil
	}
	f.mu.Unlock()
	if f.Header.HasDataFile() {
		return nil, withFile(f.Name, formatErr(-1, "compressed cluster in an image with an external data file"))
	}
	off, n := f.Geo.CompressedRange(e)
	cs := f.ClusterSize()
	if off >= uint64(f.size) {
		return nil, withFile(f.Name, formatErr(int64(off), "compressed cluster at %#x is past the end of the file", off))
	}
	// The descriptor may overstate the length: the last sector of the file
	// can be partial, and QEMU reads what is there.
	src := make([]byte, n)
	if err := readAtZeroFill(f.r, f.size, src, off); err != nil {
		return nil, withFile(f.Name, fmt.Errorf("reading compressed cluster at %#x: %w", off, err))
	}
	out := make([]byte, cs)
	var err error
	switch f.Header.CompressionType {
	case CompressionZlib:
		err = inflateRaw(out, src)
	case CompressionZstd:
		err = unzstd(out, src)
	default:
		err = fmt.Errorf("%w: compression type %d", ErrUnsupported, f.Header.CompressionType)
	}
	if err != nil {
		return nil, withFile(f.Name, formatErr(int64(off), "cannot decompress cluster at %#x: %v", off, err))
	}
	f.mu.Lock()
	f.zbuf = &decompressed{desc: e.Desc, data: out}
	f.mu.Unlock()
	return out, nil
}

// inflateRaw decompresses a raw deflate stream (zlib windowBits -12) into
// out. Like QEMU, it succeeds once out is full even if the stream goes on.
func inflateRaw(out, src []byte) error {
	r := flate.NewReader(bytes.NewReader(src))
	defer r.Close()
	n, err := io.ReadFull(r, out)
	if n == len(out) {
		return nil
	}
	if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("deflate stream ends after %d of %d bytes", n, len(out))
	}
	return err
}

// unzstd decompresses zstd frames from src into out, which must be filled
// exactly, as QEMU requires.
func unzstd(out, src []byte) error {
	v := zstdDecoders.Get()
	d, ok := v.(*zstd.Decoder)
	if !ok {
		return v.(error)
	}
	defer zstdDecoders.Put(d)
	if err := d.Reset(bytes.NewReader(src)); err != nil {
		return err
	}
	n, err := io.ReadFull(d, out)
	if n == len(out) {
		return nil
	}
	if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("zstd stream ends after %d of %d bytes", n, len(out))
	}
	return err
}
