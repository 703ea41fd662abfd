package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func openBytes(t *testing.T, b []byte) *Chain {
	t.Helper()
	f, err := NewFile(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	f.Name = "mem.qcow2"
	return &Chain{Layers: []Layer{f}, Probed: []bool{false}}
}

func TestMinimalImage(t *testing.T) {
	c := openBytes(t, minimalImage())
	buf := make([]byte, 1024)
	if _, err := c.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:11]); got != "hello qcow2" {
		t.Errorf("guest bytes at 0: %q", got)
	}
	if !allZero(buf[512:]) {
		t.Errorf("second cluster should read as zeros")
	}
	var entries []MapEntry
	c.Map(0, ^uint64(0), func(e *MapEntry) error { entries = append(entries, *e); return nil })
	want := []MapEntry{
		{Start: 0, Length: 512, Present: true, Data: true, HasOffset: true, Offset: 5 * 512},
		{Start: 512, Length: 1<<20 - 512, Zero: true},
	}
	if len(entries) != len(want) {
		t.Fatalf("map: %+v", entries)
	}
	for i := range want {
		if entries[i] != want[i] {
			t.Errorf("map entry %d: got %+v, want %+v", i, entries[i], want[i])
		}
	}
	res, err := c.Layers[0].(*File).Check()
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 || res.AllocatedClusters != 1 || res.ImageEndOffset != 6*512 || res.TotalClusters != 2048 {
		t.Errorf("check: %+v", res)
	}
}

// TestMinimalImageQemu makes sure the hand-built test image is one qemu-img
// accepts as clean, so tests built on it test real images.
func TestMinimalImageQemu(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	p := filepath.Join(t.TempDir(), "m.qcow2")
	os.WriteFile(p, minimalImage(), 0o644)
	if out, err := exec.Command("qemu-img", "check", p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
}

func TestParseHeaderErrors(t *testing.T) {
	mutate := func(f func(b []byte)) []byte {
		b := minimalImage()
		f(b)
		return b
	}
	be := binary.BigEndian
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrNotQcow2},
		{"bad magic", mutate(func(b []byte) { b[3] = 0 }), ErrNotQcow2},
		{"version 4", mutate(func(b []byte) { be.PutUint32(b[4:], 4) }), ErrCorrupt},
		{"cluster bits 22", mutate(func(b []byte) { be.PutUint32(b[20:], 22) }), ErrCorrupt},
		{"header too short", mutate(func(b []byte) { be.PutUint32(b[100:], 96) }), ErrCorrupt},
		{"refcount order 7", mutate(func(b []byte) { be.PutUint32(b[96:], 7) }), ErrCorrupt},
		{"l1 past eof", mutate(func(b []byte) { be.PutUint64(b[40:], 1<<30) }), ErrCorrupt},
		{"l1 too small", mutate(func(b []byte) { be.PutUint64(b[24:], 1<<40) }), ErrCorrupt},
		{"l1 huge", mutate(func(b []byte) { be.PutUint32(b[36:], 1<<31) }), ErrCorrupt},
		{"snapshots huge", mutate(func(b []byte) { be.PutUint32(b[60:], 1<<20) }), ErrCorrupt},
		{"backing offset past cluster", mutate(func(b []byte) { be.PutUint64(b[8:], 4096) }), ErrCorrupt},
		{"backing name too long", mutate(func(b []byte) { be.PutUint64(b[8:], 200); be.PutUint32(b[16:], 400) }), ErrCorrupt},
		{"extension past header area", mutate(func(b []byte) { be.PutUint32(b[104:], ExtFeatureTable); be.PutUint32(b[108:], 1000) }), ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFile(bytes.NewReader(tt.b), int64(len(tt.b)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			var fe *FormatError
			if tt.want == ErrCorrupt && !errors.As(err, &fe) {
				t.Errorf("%v is no *FormatError", err)
			}
		})
	}
}

func TestUnknownIncompatibleFeature(t *testing.T) {
	b := minimalImage()
	binary.BigEndian.PutUint64(b[72:], 1<<40)
	c := openBytes(t, b)
	if _, err := Info(c.Layers[0], false, OutputOptions{}); err != nil {
		t.Fatalf("info must still work: %v", err)
	}
	_, err := c.ReadAt(make([]byte, 512), 0)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("read: got %v, want ErrUnsupported", err)
	}
}

func TestSubclusterType(t *testing.T) {
	std := Geometry{ClusterBits: 16}
	ext := Geometry{ClusterBits: 16, ExtendedL2: true}
	df := Geometry{ClusterBits: 16, DataFile: true}
	tests := []struct {
		name string
		g    Geometry
		e    L2Entry
		sc   uint
		want ClusterType
	}{
		{"unallocated", std, L2Entry{}, 0, Unallocated},
		{"normal", std, L2Entry{Desc: 0x50000 | FlagCopied}, 0, Normal},
		{"zero plain", std, L2Entry{Desc: FlagZero}, 0, ZeroPlain},
		{"zero alloc", std, L2Entry{Desc: 0x50000 | FlagZero}, 0, ZeroAlloc},
		{"compressed", std, L2Entry{Desc: FlagCompressed | 0x1234}, 0, Compressed},
		{"data file offset 0", df, L2Entry{Desc: FlagCopied}, 0, Normal},
		{"ext zero flag ignored", ext, L2Entry{Desc: FlagZero}, 0, Unallocated},
		{"ext allocated sc", ext, L2Entry{Desc: 0x50000, Bitmap: 1 << 3}, 3, Normal},
		{"ext unallocated sc in allocated cluster", ext, L2Entry{Desc: 0x50000, Bitmap: 1 << 3}, 4, UnallocatedAlloc},
		{"ext zero sc in allocated cluster", ext, L2Entry{Desc: 0x50000, Bitmap: 1 << 36}, 4, ZeroAlloc},
		{"ext zero sc, no cluster", ext, L2Entry{Bitmap: 1 << 33}, 1, ZeroPlain},
		{"ext alloc bit without cluster", ext, L2Entry{Bitmap: 1}, 5, Invalid},
		{"ext alloc and zero", ext, L2Entry{Desc: 0x50000, Bitmap: 1<<2 | 1<<34}, 7, Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.g.SubclusterType(tt.e, tt.sc); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCompressedRange(t *testing.T) {
	g := Geometry{ClusterBits: 16} // x = 54
	e := L2Entry{Desc: FlagCompressed | 3<<54 | 0x12345}
	off, size := g.CompressedRange(e)
	if off != 0x12345 || size != 4*512-0x145 {
		t.Errorf("got %#x+%d", off, size)
	}
}

func TestRefcountEntry(t *testing.T) {
	block := []byte{0b10110100, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0}
	tests := []struct {
		order uint32
		i     uint64
		want  uint64
	}{
		{0, 0, 0}, {0, 2, 1}, {0, 7, 1},
		{1, 1, 1}, {1, 3, 2},
		{2, 0, 4}, {2, 1, 0xb},
		{3, 1, 0x12},
		{4, 1, 0x3456},
		{5, 1, 0x789abcde},
		{6, 0, 0xb4123456789abcde},
	}
	for _, tt := range tests {
		if got := RefcountEntry(block, tt.order, tt.i); got != tt.want {
			t.Errorf("order %d entry %d: got %#x, want %#x", tt.order, tt.i, got, tt.want)
		}
	}
}

func TestBackingPath(t *testing.T) {
	tests := []struct{ overlay, backing, want string }{
		{"top.qcow2", "base.qcow2", "base.qcow2"},
		{"a/top.qcow2", "../b/base.qcow2", "a/../b/base.qcow2"},
		{"/x/y/top.qcow2", "base.qcow2", "/x/y/base.qcow2"},
		{"a/top.qcow2", "/abs/base.qcow2", "/abs/base.qcow2"},
		{"a/top.qcow2", "nbd://host/export", "nbd://host/export"},
		{"a/top.qcow2", "json:{}", "json:{}"},
		{"a/top.qcow2", "dir/with:colon", "a/dir/with:colon"},
	}
	for _, tt := range tests {
		if got := BackingPath(tt.overlay, tt.backing); got != tt.want {
			t.Errorf("BackingPath(%q, %q) = %q, want %q", tt.overlay, tt.backing, got, tt.want)
		}
	}
}

func TestChainLoopAndRoot(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	withBacking := func(backing string) []byte {
		b := minimalImage()
		be := binary.BigEndian
		be.PutUint64(b[8:], 200)
		be.PutUint32(b[16:], uint32(len(backing)))
		copy(b[200:], backing)
		return b
	}
	a := write("a.qcow2", withBacking("b.qcow2"))
	write("b.qcow2", withBacking("a.qcow2"))
	if _, err := OpenChain(a, ChainOptions{}); !errors.Is(err, ErrChain) {
		t.Errorf("loop: got %v, want ErrChain", err)
	}
	self := write("self.qcow2", withBacking("self.qcow2"))
	if _, err := OpenChain(self, ChainOptions{}); !errors.Is(err, ErrChain) {
		t.Errorf("self loop: got %v, want ErrChain", err)
	}
	esc := write("esc.qcow2", withBacking("../../../../../../etc/passwd"))
	if _, err := OpenChain(esc, ChainOptions{Root: dir}); !errors.Is(err, ErrChain) {
		t.Errorf("escape: got %v, want ErrChain", err)
	}
	c, err := OpenChain(esc, ChainOptions{Root: dir, NoBacking: true})
	if err != nil {
		t.Fatalf("--no-backing: %v", err)
	}
	c.Close()
}

func TestReadAtPastEnd(t *testing.T) {
	c := openBytes(t, minimalImage())
	n, err := c.ReadAt(make([]byte, 100), int64(c.Size())-10)
	if n != 10 || err != io.EOF {
		t.Errorf("got %d, %v; want 10, EOF", n, err)
	}
}

// TestHeaderPastFirstPage: NewFile parses the first 4 KiB and reads the
// rest of the header cluster only when the parse needs it; extensions and
// a backing name past 4 KiB must come out as from a whole-cluster parse.
func TestHeaderPastFirstPage(t *testing.T) {
	const cs = 64 << 10
	big := rawExtension{typ: 0x12345678, data: bytes.Repeat([]byte{0xab}, 6000)}
	h := headerFields{clusterBits: 16, size: 1 << 30, l1Size: 2, l1Off: 3 * cs, rtOff: cs, rtClusters: 1}
	b, err := buildHeader(h, "far/away/base.qcow2", "qcow2", nil, []rawExtension{big}, cs)
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 4*cs)
	copy(img, b)
	want, err := ParseHeader(img[:cs], int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if want.BackingFileOffset < 4096 || want.BackingFile != "far/away/base.qcow2" || want.BackingFormat != "qcow2" {
		t.Fatalf("test image does not put the backing name past 4 KiB: %+v", want)
	}
	f, err := NewFile(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if f.Header.BackingFile != want.BackingFile || f.Header.BackingFormat != want.BackingFormat || len(f.Header.Extensions) != len(want.Extensions) {
		t.Fatalf("NewFile header %+v, want %+v", f.Header, want)
	}
	// The same header with the extension running past the end of a file
	// shorter than one cluster stays an error.
	if _, err := NewFile(bytes.NewReader(img[:5000]), 5000); err == nil {
		t.Fatal("NewFile accepted a header cut inside an extension")
	}
}
