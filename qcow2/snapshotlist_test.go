package qcow2

import (
	"strings"
	"testing"
)

func TestFindSnapshot(t *testing.T) {
	snaps := []Snapshot{{ID: "1", Name: "2"}, {ID: "2", Name: "base"}, {ID: "3", Name: "base"}}
	for _, tc := range []struct {
		key  string
		want int
	}{
		{"2", 1},    // an ID wins over another snapshot's name
		{"base", 1}, // the first of two with one name
		{"3", 2},
		{"nope", -1},
		{"", -1},
	} {
		if got := FindSnapshot(snaps, tc.key); got != tc.want {
			t.Errorf("FindSnapshot(%q) = %d, want %d", tc.key, got, tc.want)
		}
	}
}

func TestSnapshotInfo(t *testing.T) {
	long := strings.Repeat("n", 300)
	s := Snapshot{ID: strings.Repeat("7", 200), Name: long, VMClockNsec: 3723_456_000_000, Icount: noIcount, VMStateSize: 765}
	si := s.Info()
	if len(si.ID) != MaxSnapshotIDBytes || len(si.Name) != MaxSnapshotNameBytes {
		t.Errorf("ID and name not cut to QEMU's lengths: %d, %d bytes", len(si.ID), len(si.Name))
	}
	if si.VMClockSec != 3723 || si.VMClockNsec != 456_000_000 || si.Icount != nil || si.VMStateSize != 765 {
		t.Errorf("info %+v", si)
	}
	s.Icount = 0
	if si := s.Info(); si.Icount == nil || *si.Icount != 0 {
		t.Errorf("a recorded icount of 0 must be listed")
	}
}
