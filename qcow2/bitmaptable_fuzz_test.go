package qcow2

import (
	"bytes"
	"os"
	"testing"
)

func FuzzBitmapTable(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(16))
	f.Add([]byte{0xff, 0, 0, 0, 0, 0, 2, 1}, uint8(9))
	f.Fuzz(func(t *testing.T, b []byte, clusterBits uint8) {
		if len(b) > 1<<16 {
			return
		}
		tab, err := ParseBitmapTable(b, uint64(1)<<(clusterBits%64), 0)
		if err == nil && len(tab) != len(b)/8 {
			t.Fatalf("%d entries from %d bytes", len(tab), len(b))
		}
	})
}

// FuzzBitmapDirtyBytes counts the bitmaps of arbitrary images: errors are
// fine, panics and counts past the disk are not.
func FuzzBitmapDirtyBytes(f *testing.F) {
	if b, err := os.ReadFile("testdata/bitmaps.qcow2"); err == nil {
		f.Add(b)
	}
	for _, b := range corpusFiles(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := NewFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		bms, err := q.Bitmaps()
		if err != nil {
			return
		}
		for i := range bms {
			n, err := q.BitmapDirtyBytes(&bms[i])
			if err != nil {
				continue
			}
			if max := BitmapBits(q.VirtualSize(), bms[i].GranularityBits) << bms[i].GranularityBits; n > max {
				t.Fatalf("bitmap %q: %d dirty bytes, more than its %d", bms[i].Name, n, max)
			}
		}
	})
}
