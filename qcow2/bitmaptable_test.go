package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// testdata/bitmaps.qcow2 (4 MiB, 512-byte clusters) was made with
//
//	qemu-img create -f qcow2 -o cluster_size=512 bitmaps.qcow2 4M
//	qemu-img bitmap --add -g 4k bitmaps.qcow2 dirty
//	qemu-img bitmap --add -g 512 bitmaps.qcow2 clean
//	qemu-img bitmap --add --disable bitmaps.qcow2 off
//	qemu-io -f qcow2 -c 'write -P 1 0 4k' -c 'write -P 2 1M 12k' \
//	        -c 'write 4095k 1k' bitmaps.qcow2
//	qemu-img bitmap --clear bitmaps.qcow2 clean
//
// and QEMU 7.2 reports the counts below (query-named-block-nodes).
func TestBitmapDirtyBytesTestdata(t *testing.T) {
	f, err := Open("testdata/bitmaps.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bms, err := f.Bitmaps()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"dirty": 5 * 4096, "clean": 0, "off": 0}
	if len(bms) != len(want) {
		t.Fatalf("got %d bitmaps, want %d", len(bms), len(want))
	}
	for i := range bms {
		got, err := f.BitmapDirtyBytes(&bms[i])
		if err != nil {
			t.Fatalf("%s: %v", bms[i].Name, err)
		}
		if got != want[bms[i].Name] {
			t.Errorf("%s: %d dirty bytes, want %d", bms[i].Name, got, want[bms[i].Name])
		}
	}
}

// TestBitmapDirtyBytesQemu counts what qemu-io writes through an enabled
// bitmap, at several granularities, on an image that needs more than one
// bitmap data cluster.
func TestBitmapDirtyBytesQemu(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(tool + " not installed")
		}
	}
	p := filepath.Join(t.TempDir(), "b.qcow2")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	// 64 MiB at 512-byte granularity is 131072 bits: 32 data clusters of
	// 512 bytes; the writes land in the first, a middle and the last one.
	run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "64M")
	run("qemu-img", "bitmap", "--add", "-g", "512", p, "fine")
	run("qemu-img", "bitmap", "--add", "-g", "64k", p, "coarse")
	run("qemu-io", "-f", "qcow2", "-c", "write 0 1536", "-c", "write 33554432 512",
		"-c", "write 67108352 512", "-c", "write 131072 70000", p)
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bms, err := f.Bitmaps()
	if err != nil {
		t.Fatal(err)
	}
	// fine: 3 + 1 + 1 sectors, and 131072..201071 covers sectors 256..392
	// (137 sectors). coarse: clusters 0, 512, 1023, and 2 and 3.
	want := map[string]uint64{"fine": (3 + 1 + 1 + 137) * 512, "coarse": 5 * 65536}
	for i := range bms {
		got, err := f.BitmapDirtyBytes(&bms[i])
		if err != nil {
			t.Fatal(err)
		}
		if got != want[bms[i].Name] {
			t.Errorf("%s: %d dirty bytes, want %d", bms[i].Name, got, want[bms[i].Name])
		}
	}
}

func TestParseBitmapTable(t *testing.T) {
	entry := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	for _, tc := range []struct {
		name    string
		entry   uint64
		wantErr bool
		allOnes bool
		offset  uint64
	}{
		{name: "unallocated zeros", entry: 0},
		{name: "unallocated ones", entry: 1, allOnes: true},
		{name: "allocated", entry: 0x10000, offset: 0x10000},
		{name: "reserved low bits", entry: 0x10000 | 2, wantErr: true},
		{name: "reserved high bits", entry: 1 << 60, wantErr: true},
		{name: "offset and all-ones bit", entry: 0x10000 | 1, wantErr: true},
		{name: "unaligned offset", entry: 0x10200, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := ParseBitmapTable(entry(tc.entry), 0x10000, 0x30000)
			if tc.wantErr {
				var fe *FormatError
				if !errors.As(err, &fe) || fe.Off != 0x30000 {
					t.Fatalf("got %v, want a *FormatError at 0x30000", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tab[0].AllOnes() != tc.allOnes || tab[0].Offset() != tc.offset {
				t.Errorf("entry %#x: all-ones %v offset %#x", tc.entry, tab[0].AllOnes(), tab[0].Offset())
			}
		})
	}
}

func TestCountBits(t *testing.T) {
	data := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0b1010_0101}
	for _, tc := range []struct {
		nbits, want uint64
	}{{0, 0}, {3, 3}, {64, 64}, {66, 66}, {72, 68}, {73, 69}, {75, 70}, {80, 72}} {
		if got := countBits(data, tc.nbits); got != tc.want {
			t.Errorf("countBits(%d) = %d, want %d", tc.nbits, got, tc.want)
		}
	}
}

// TestBitmapTableChecks corrupts the testdata image's first bitmap entry
// in memory: each bad field is a *FormatError, never a panic or a huge
// allocation.
func TestBitmapTableChecks(t *testing.T) {
	orig, err := os.ReadFile("testdata/bitmaps.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	f0, err := NewFile(bytes.NewReader(orig), int64(len(orig)))
	if err != nil {
		t.Fatal(err)
	}
	bms, err := f0.Bitmaps()
	if err != nil {
		t.Fatal(err)
	}
	ent := bms[0].Offset
	for _, tc := range []struct {
		name  string
		patch func(b []byte)
	}{
		{"table size", func(b []byte) { binary.BigEndian.PutUint32(b[ent+8:], 0xffffffff) }},
		{"table offset unaligned", func(b []byte) { binary.BigEndian.PutUint64(b[ent:], 0x201) }},
		{"table past the end", func(b []byte) { binary.BigEndian.PutUint64(b[ent:], 1<<40) }},
		{"type", func(b []byte) { b[ent+16] = 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append([]byte(nil), orig...)
			tc.patch(b)
			f, err := NewFile(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			bms, err := f.Bitmaps()
			if err != nil {
				return // rejected by the directory parser already
			}
			if _, err := f.BitmapDirtyBytes(&bms[0]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
		})
	}
}
