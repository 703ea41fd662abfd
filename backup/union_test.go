package backup

import (
	"fmt"
	"strings"
	"testing"

	"github.com/qchain/qchain/qmp"
)

func TestBitmapUnion(t *testing.T) {
	const want = "qchain-backup-x-4"
	on := qmp.DirtyBitmapInfo{Name: want, Recording: true, Persistent: true, Granularity: 65536}
	off := qmp.DirtyBitmapInfo{Name: want, Persistent: true, Granularity: 65536}
	older := qmp.DirtyBitmapInfo{Name: "qchain-backup-x-3", Persistent: true}
	bad := off
	bad.Inconsistent = true
	layer := func(i int, bms ...qmp.DirtyBitmapInfo) layerBitmaps {
		return layerBitmaps{sessionLayer{Node: fmt.Sprint("n", i), File: fmt.Sprintf("/d/l%d.qcow2", i)}, bms}
	}
	tests := []struct {
		name    string
		layers  []layerBitmaps
		sources string // nodes, or the reason's start
		reason  string
	}{
		{name: "active only", layers: []layerBitmaps{layer(0, on), layer(1)}, sources: "n0"},
		{name: "after two snapshots", layers: []layerBitmaps{layer(0, on), layer(1, off, older), layer(2, off), layer(3, older)}, sources: "n0 n1 n2"},
		{name: "stale enabled below", layers: []layerBitmaps{layer(0, on), layer(1, on)}, sources: "n0 n1"},
		{name: "missing on active", layers: []layerBitmaps{layer(0, older), layer(1)}, reason: "its active image l0.qcow2 has no bitmap"},
		{name: "missing on active, below it", layers: []layerBitmaps{layer(0), layer(1, off)}, reason: "which l1.qcow2 below has"},
		{name: "disabled on active", layers: []layerBitmaps{layer(0, off), layer(1, off)}, reason: "is disabled"},
		{name: "inconsistent on active", layers: []layerBitmaps{layer(0, bad)}, reason: "is inconsistent"},
		{name: "inconsistent below", layers: []layerBitmaps{layer(0, on), layer(1, bad)}, reason: "of l1.qcow2 is inconsistent"},
		{name: "gap", layers: []layerBitmaps{layer(0, on), layer(1), layer(2, off)}, reason: "is on l2.qcow2 but not on l1.qcow2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, reason := bitmapUnion("vda", tc.layers, want, 4)
			var nodes []string
			for _, s := range src {
				if s.Name != want {
					t.Errorf("source %+v", s)
				}
				nodes = append(nodes, s.Node)
			}
			if got := strings.Join(nodes, " "); got != tc.sources || !strings.Contains(reason, tc.reason) || (tc.reason == "") != (reason == "") {
				t.Errorf("sources %q reason %q, want %q and a reason with %q", got, reason, tc.sources, tc.reason)
			}
		})
	}
}
