package qcow2

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestSizeToStrQemu compares with what qemu-img 7.2 printed as the
// virtual size of images of these sizes (qemu-img info's human output
// goes through the same size_to_str).
func TestSizeToStrQemu(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		want string
	}{
		{0, "0 B"}, {512, "512 B"}, {765, "765 B"}, {1024, "1 KiB"}, {1536, "1.5 KiB"},
		{2560, "2.5 KiB"}, {10240, "10 KiB"}, {102400, "100 KiB"}, {511488, "500 KiB"},
		{1022464, "998 KiB"}, {1022976, "999 KiB"}, {1023488, "1e+03 KiB"},
		{1024000, "0.977 MiB"}, {1047552, "0.999 MiB"}, {1048064, "1 MiB"},
		{1572864, "1.5 MiB"}, {123456512, "118 MiB"}, {1 << 30, "1 GiB"},
		{1 << 40, "1 TiB"}, {1125899906842112, "1 PiB"},
	} {
		if got := sizeToStr(tc.n); got != tc.want {
			t.Errorf("sizeToStr(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// TestWriteSnapshotList compares with tables qemu-img 7.2 and 10.0 printed
// (TZ=UTC): a snapshot of qemu-img -c (icount 0), one of savevm (VM state,
// no icount), one a storage daemon took (its clock in hours since 1970),
// and a name with multi-byte characters, padded by bytes as C pads.
func TestWriteSnapshotList(t *testing.T) {
	defer func(l *time.Location) { time.Local = l }(time.Local)
	time.Local = time.UTC
	zero := uint64(0)
	snaps := []SnapshotInfo{
		{ID: "1", Name: "s1", DateSec: 1795995065, Icount: &zero},
		{ID: "2", Name: "vm1", VMStateSize: 765, DateSec: 1795995309, VMClockNsec: 704261},
		{ID: "3", Name: "s2", DateSec: 1795995605, VMClockSec: 1795995605, VMClockNsec: 58000000},
		{ID: "4", Name: "snäp", DateSec: 1795995065, Icount: &zero},
	}
	want72 := "Snapshot list:\n" +
		"ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n" +
		"1         s1                    0 B 2026-11-29 23:31:05 00:00:00.000          0\n" +
		"2         vm1                 765 B 2026-11-29 23:35:09 00:00:00.000           \n" +
		"3         s2                    0 B 2026-11-29 23:40:05498887:40:05.058           \n" +
		"4         snäp" + strings.Repeat(" ", 17) + "0 B 2026-11-29 23:31:05 00:00:00.000          0\n"
	want100 := "Snapshot list:\n" +
		"ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT\n" +
		"1       s1                    0 B 2026-11-29 23:31:05  0000:00:00.000          0\n" +
		"2       vm1                 765 B 2026-11-29 23:35:09  0000:00:00.000         --\n" +
		"3       s2                    0 B 2026-11-29 23:40:05 498887:40:05.058         --\n" +
		"4       snäp" + strings.Repeat(" ", 17) + "0 B 2026-11-29 23:31:05  0000:00:00.000          0\n"
	for _, tc := range []struct {
		layout Layout
		want   string
	}{{LayoutQemu72, want72}, {LayoutQemu10, want100}} {
		var b bytes.Buffer
		WriteSnapshotList(&b, snaps, OutputOptions{Layout: tc.layout})
		if b.String() != tc.want {
			t.Errorf("layout %d:\n%s\nwant:\n%s", tc.layout, b.String(), tc.want)
		}
	}
	var b bytes.Buffer
	WriteSnapshotList(&b, nil, OutputOptions{})
	if b.Len() != 0 {
		t.Errorf("no snapshots must print nothing, got %q", b.String())
	}
}
