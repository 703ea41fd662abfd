package qcow2

import (
	"bufio"
	"bytes"
	"reflect"
	"testing"
	"time"
)

func TestSizeToStr(t *testing.T) {
	// Expected values are C's printf("%0.3g %sB") of QEMU's size_to_str.
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{999, "999 B"},
		{1000, "0.977 KiB"},
		{1023, "0.999 KiB"},
		{1024, "1 KiB"},
		{100352, "98 KiB"},
		{1023500, "1e+03 KiB"},
		{1024000, "0.977 MiB"},
		{2359296, "2.25 MiB"},
		{2949632, "2.81 MiB"},
		{4194304, "4 MiB"},
		{1 << 40, "1 TiB"},
		{^uint64(0), "16 EiB"},
	}
	for _, tt := range tests {
		if got := sizeToStr(tt.in); got != tt.want {
			t.Errorf("sizeToStr(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSortQDict(t *testing.T) {
	// The orders qemu-img 7.2 and 10.0 print these objects in.
	tests := [][]string{
		{"compat", "compression-type", "lazy-refcounts", "bitmaps", "refcount-bits", "data-file", "encrypt", "data-file-raw", "corrupt", "extended-l2"},
		{"ivgen-alg", "detached-header", "hash-alg", "cipher-alg", "uuid", "ivgen-hash-alg", "format", "cipher-mode", "slots", "payload-offset", "master-key-iters"},
		{"active", "iters", "key-offset", "stripes"},
		{"flags", "name", "granularity"},
		{"children", "virtual-size", "filename", "cluster-size", "format", "actual-size", "format-specific", "dirty-flag"},
	}
	for _, want := range tests {
		got := append([]string(nil), want...)
		for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
			got[i], got[j] = got[j], got[i]
		}
		sortQDict(got)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("QDict order %v, want %v", got, want)
		}
		seen := map[uint32]string{}
		for _, k := range want {
			b := qdictHash(k) % qdictBuckets
			if o, ok := seen[b]; ok {
				t.Errorf("%s and %s share QDict bucket %d: the order within a bucket is unknown here", o, k, b)
			}
			seen[b] = k
		}
	}
}

func TestSnapshotTable(t *testing.T) {
	date := time.Date(2024, 5, 6, 7, 8, 9, 0, time.Local).Unix()
	snaps := []SnapshotInfo{
		{ID: "1", Name: "first", DateSec: uint32(date), Icount: ptr(uint64(0))},
		{ID: "12", Name: "vm-state", VMStateSize: 3 << 20, DateSec: uint32(date), VMClockSec: 3725, VMClockNsec: 45e7},
	}
	tests := []struct {
		layout Layout
		want   string
	}{
		{LayoutQemu72, "" +
			"ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n" +
			"1         first                 0 B 2024-05-06 07:08:09 00:00:00.000          0\n" +
			"12        vm-state            3 MiB 2024-05-06 07:08:09 01:02:05.450           \n"},
		{LayoutQemu10, "" +
			"ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT\n" +
			"1       first                 0 B 2024-05-06 07:08:09  0000:00:00.000          0\n" +
			"12      vm-state            3 MiB 2024-05-06 07:08:09  0001:02:05.450         --\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		writeSnapshotTable(w, snaps, tt.layout)
		w.Flush()
		if b.String() != tt.want {
			t.Errorf("%s snapshot table:\n%s\nwant:\n%s", tt.layout, b.String(), tt.want)
		}
	}
}

func TestWriteInfoHumanDataFile(t *testing.T) {
	name := writeImage(t, "df.qcow2", dataFileImage("data.bin"))
	for _, l := range []Layout{LayoutQemu72, LayoutQemu10} {
		t.Run(l.String(), func(t *testing.T) {
			infos := chainInfo(t, name, l)
			if d := infos[0].FormatSpecific.Data.DataFile; d == nil || *d != "data.bin" {
				t.Fatalf("data file: %v, want data.bin", d)
			}
			disk := sizeToStr(uint64(*infos[0].ActualSize))
			// As qemu-img prints an image with a data file: "data file"
			// comes after "refcount bits", not at the end.
			want := "image: " + name + "\n" +
				"file format: qcow2\n" +
				"virtual size: 1 MiB (1048576 bytes)\n" +
				"disk size: " + disk + "\n" +
				"cluster_size: 512\n" +
				"Format specific information:\n" +
				"    compat: 1.1\n" +
				"    compression type: zlib\n" +
				"    lazy refcounts: false\n" +
				"    refcount bits: 16\n" +
				"    data file: data.bin\n" +
				"    data file raw: false\n" +
				"    corrupt: false\n" +
				"    extended l2: false\n"
			if l == LayoutQemu10 {
				want += "Child node '/file':\n" +
					"    filename: " + name + "\n" +
					"    protocol type: file\n" +
					"    file length: 3 KiB (3072 bytes)\n" +
					"    disk size: " + disk + "\n"
			}
			var b bytes.Buffer
			if err := WriteInfoHuman(&b, infos, OutputOptions{Layout: l}); err != nil {
				t.Fatal(err)
			}
			if b.String() != want {
				t.Errorf("human info:\n%s\nwant:\n%s", b.String(), want)
			}
		})
	}
}

func TestWriteInfoHumanNested(t *testing.T) {
	// Lists and nested objects as dump_qobject prints them, and the file
	// child's format-specific part once it is not empty.
	info := &ImageInfo{
		Filename: "x.qcow2", Format: "qcow2", VirtualSize: 1 << 20,
		FormatSpecific: &FormatSpecific{Type: "qcow2", Data: &Qcow2Specific{
			Compat: "1.1", RefcountBits: 16, CompressionType: "zlib",
			Bitmaps: []BitmapInfo{{Name: "b0", Granularity: 65536, Flags: []string{"in-use", "auto"}}, {Name: "off", Granularity: 512, Flags: []string{}}},
		}},
		Children: []ChildInfo{{Name: "file", Info: &ProtocolInfo{Children: []ChildInfo{}, Filename: "x.qcow2", Format: "file", VirtualSize: 512,
			FormatSpecific: FileFormatSpecific{Type: "file", Data: FileSpecific{ExtentSizeHint: ptr(uint64(1 << 20))}}}}},
	}
	want := `image: x.qcow2
file format: qcow2
virtual size: 1 MiB (1048576 bytes)
disk size: unavailable
Format specific information:
    compat: 1.1
    compression type: zlib
    bitmaps:
        [0]:
            flags:
                [0]: in-use
                [1]: auto
            name: b0
            granularity: 65536
        [1]:
            flags:
            name: off
            granularity: 512
    refcount bits: 16
Child node '/file':
    filename: x.qcow2
    protocol type: file
    file length: 512 B (512 bytes)
    disk size: unavailable
    Format specific information:
        extent size hint: 1048576
`
	var b bytes.Buffer
	if err := WriteInfoHuman(&b, []*ImageInfo{info}, OutputOptions{}); err != nil {
		t.Fatal(err)
	}
	if b.String() != want {
		t.Errorf("human info:\n%s\nwant:\n%s", b.String(), want)
	}
}
