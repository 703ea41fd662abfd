package qcow2

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// corpusFiles returns the committed malformed images and small valid ones,
// the seeds of every fuzz target.
func corpusFiles(t testing.TB) [][]byte {
	var out [][]byte
	dirs, _ := filepath.Glob("../fixtures/testdata/malformed/*")
	for _, d := range dirs {
		// One seed per case keeps the fuzzer's corpus small and fast.
		names, _ := filepath.Glob(filepath.Join(d, "*"))
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err == nil && len(b) <= 64<<10 {
				out = append(out, b)
				break
			}
		}
	}
	out = append(out, minimalImage())
	return out
}

// minimalImage builds a tiny valid qcow2 v3 image: 512-byte clusters, one
// L2 table and one data cluster.
func minimalImage() []byte {
	const cs = 512
	b := make([]byte, 6*cs)
	be := binary.BigEndian
	be.PutUint32(b[0:], Magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], 9)
	be.PutUint64(b[24:], 1<<20)
	be.PutUint32(b[36:], 32) // l1_size: 1 MiB / (64 entries * 512)
	be.PutUint64(b[40:], 3*cs)
	be.PutUint64(b[48:], 1*cs)
	be.PutUint32(b[56:], 1)
	be.PutUint32(b[96:], 4)
	be.PutUint32(b[100:], 104)
	be.PutUint64(b[1*cs:], 2*cs) // refcount table -> block at cluster 2
	for i := 0; i < 6; i++ {
		be.PutUint16(b[2*cs+i*2:], 1)
	}
	be.PutUint64(b[3*cs:], 4*cs|FlagCopied) // L1[0] -> L2 at cluster 4
	be.PutUint64(b[4*cs:], 5*cs|FlagCopied) // L2[0] -> data at cluster 5
	copy(b[5*cs:], "hello qcow2")
	return b
}

func FuzzParseHeader(f *testing.F) {
	for _, b := range corpusFiles(f) {
		f.Add(b[:min(len(b), 4096)])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b, int64(len(b)))
		if err == nil && h.ClusterBits < MinClusterBits {
			t.Fatalf("accepted cluster_bits %d", h.ClusterBits)
		}
	})
}

func FuzzL2Entry(f *testing.F) {
	f.Add(uint64(0x8000000000050000), uint64(0), uint8(16), false, false)
	f.Add(uint64(0x4000000000050200), uint64(0), uint8(16), false, false)
	f.Add(uint64(0x8000000000050000), uint64(0x0000ffff0000ffff), uint8(16), true, false)
	f.Add(uint64(1), uint64(0xffffffff00000000), uint8(21), true, true)
	f.Fuzz(func(t *testing.T, desc, bitmap uint64, cb uint8, ext, df bool) {
		bits := uint32(cb%(MaxClusterBits-MinClusterBits+1)) + MinClusterBits
		g := Geometry{ClusterBits: bits, ExtendedL2: ext, DataFile: df}
		e := L2Entry{Desc: desc, Bitmap: bitmap}
		for sc := uint(0); sc < 32; sc++ {
			typ := g.SubclusterType(e, sc)
			if typ > Invalid {
				t.Fatalf("type %d out of range", typ)
			}
			if !ext {
				break
			}
		}
		if g.ClusterKind(e) == Compressed {
			off, size := g.CompressedRange(e)
			if size == 0 || size > 1<<bits+512 || off >= 1<<62 {
				t.Fatalf("compressed range %#x+%d for %d-bit clusters", off, size, bits)
			}
		}
	})
}

func FuzzSnapshotTable(f *testing.F) {
	for _, b := range corpusFiles(f) {
		f.Add(b, uint32(2))
	}
	f.Fuzz(func(t *testing.T, b []byte, n uint32) {
		r := io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b)))
		snaps, size, err := ParseSnapshotTable(r, 0, n%70000, 1<<30)
		if err == nil && size > uint64(len(b)) {
			t.Fatalf("table size %d larger than the input %d", size, len(b))
		}
		_ = snaps
	})
}

func FuzzRefcountBlock(f *testing.F) {
	f.Add([]byte{0xff, 0x01, 0x80, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, uint8(4), uint16(3))
	f.Fuzz(func(t *testing.T, block []byte, order uint8, i uint16) {
		o := uint32(order % 7)
		bits := uint64(1) << o
		n := uint64(len(block)) * 8 / bits
		if n == 0 {
			return
		}
		v := RefcountEntry(block, o, uint64(i)%n)
		if bits < 64 && v >= 1<<bits {
			t.Fatalf("entry %d does not fit %d bits", v, bits)
		}
	})
}

func FuzzBitmapDirectory(f *testing.F) {
	f.Add(make([]byte, 32), uint32(1))
	f.Fuzz(func(t *testing.T, dir []byte, n uint32) {
		ParseBitmapDirectory(dir, n%1000, 0)
	})
}

// FuzzImage opens an arbitrary file as an image and runs info, map, check
// and a full read on it: nothing may panic or allocate without bound.
func FuzzImage(f *testing.F) {
	for _, b := range corpusFiles(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := NewFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		q.Name = "fuzz.qcow2"
		c := &Chain{Layers: []Layer{q}, Probed: []bool{false}}
		for _, l := range []Layout{LayoutQemu10, LayoutQemu72} {
			if infos, err := c.ChainInfo(OutputOptions{Layout: l}); err == nil {
				WriteInfoHuman(io.Discard, infos, OutputOptions{Layout: l})
			}
		}
		q.Check()
		q.UnchangedSnapshots()
		if q.VirtualSize() > 4<<20 {
			return
		}
		c.Map(0, ^uint64(0), func(*MapEntry) error { return nil })
		buf := make([]byte, 64<<10)
		for off := int64(0); off < int64(c.Size()); off += int64(len(buf)) {
			if _, err := c.ReadAt(buf, off); err != nil && err != io.EOF {
				break
			}
		}
	})
}
