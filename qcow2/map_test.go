package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// compressedImage is minimalImage with guest clusters 1 and 2 compressed
// (their data is never read by map) and cluster 3 a plain data cluster.
func compressedImage() []byte {
	const cs = 512
	b := minimalImage()
	be := binary.BigEndian
	be.PutUint64(b[4*cs+8:], FlagCompressed|(5*cs+64))
	be.PutUint64(b[4*cs+16:], FlagCompressed|(5*cs+128))
	be.PutUint64(b[4*cs+24:], 5*cs|FlagCopied)
	return b
}

func TestMapJSONCompressed(t *testing.T) {
	c := openBytes(t, compressedImage())
	tests := []struct {
		layout Layout
		want   string
	}{
		{LayoutQemu10, `[{ "start": 0, "length": 512, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 2560},
{ "start": 512, "length": 1024, "depth": 0, "present": true, "zero": false, "data": true, "compressed": true},
{ "start": 1536, "length": 512, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 2560},
{ "start": 2048, "length": 1046528, "depth": 0, "present": false, "zero": true, "data": false, "compressed": false}]
`},
		{LayoutQemu72, `[{ "start": 0, "length": 512, "depth": 0, "present": true, "zero": false, "data": true, "offset": 2560},
{ "start": 512, "length": 1024, "depth": 0, "present": true, "zero": false, "data": true},
{ "start": 1536, "length": 512, "depth": 0, "present": true, "zero": false, "data": true, "offset": 2560},
{ "start": 2048, "length": 1046528, "depth": 0, "present": false, "zero": true, "data": false}]
`},
	}
	for _, tt := range tests {
		t.Run(tt.layout.String(), func(t *testing.T) {
			var out bytes.Buffer
			if err := c.WriteMapJSON(&out, 0, ^uint64(0), OutputOptions{Layout: tt.layout}); err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want {
				t.Errorf("map JSON:\n%s\nwant:\n%s", out.String(), tt.want)
			}
		})
	}
}

func TestMergeCompressed(t *testing.T) {
	// Offset-less data that is not compressed (an encrypted cluster, say)
	// merges with compressed data in 7.2 and not in 10.0.
	a := MapEntry{Start: 0, Length: 512, Present: true, Data: true, Compressed: true}
	b := MapEntry{Start: 512, Length: 512, Present: true, Data: true}
	if mergeable(&a, &b) || !mergeable72(&a, &b) {
		t.Errorf("compressed next to other offset-less data: 10.0 merges %t (want false), 7.2 %t (want true)", mergeable(&a, &b), mergeable72(&a, &b))
	}
	b.Compressed = true
	if !mergeable(&a, &b) {
		t.Errorf("two compressed entries must merge")
	}
}

func TestMapHumanCompressed(t *testing.T) {
	// qemu-img prints the lines before the compressed data it refuses.
	c := openBytes(t, compressedImage())
	var out bytes.Buffer
	err := c.WriteMapHuman(&out, 0, ^uint64(0))
	want := "Offset          Length          Mapped to       File\n" +
		"0               0x200           0xa00           mem.qcow2\n"
	if !errors.Is(err, ErrMapHuman) || out.String() != want {
		t.Errorf("WriteMapHuman: %v\n%s\nwant ErrMapHuman after:\n%s", err, out.String(), want)
	}
}
