package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// dataFileImage is minimalImage with an external data file named name.
func dataFileImage(name string) []byte {
	b := minimalImage()
	be := binary.BigEndian
	be.PutUint64(b[72:], IncompatDataFile)
	ext := b[104:]
	be.PutUint32(ext[0:], ExtDataFile)
	be.PutUint32(ext[4:], uint32(len(name)))
	copy(ext[8:], name)
	return b // the end-of-extensions marker follows as zeros
}

// writeImage writes b to a file in a temporary folder and returns its name.
func writeImage(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func chainInfo(t *testing.T, name string, l Layout) []*ImageInfo {
	t.Helper()
	c, err := OpenChain(name, ChainOptions{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	infos, err := c.ChainInfo(OutputOptions{Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	return infos
}

func TestInfoChildren(t *testing.T) {
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"plain.qcow2", minimalImage()},
		// qemu-img info opens no data file: the only child is the file.
		{"df.qcow2", dataFileImage("data.bin")},
		// The protocol node's length is whole sectors.
		{"odd.qcow2", append(minimalImage(), 1, 2, 3)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			name := writeImage(t, tt.name, tt.b)
			info := chainInfo(t, name, LayoutQemu10)[0]
			if len(info.Children) != 1 || info.Children[0].Name != "file" || info.Children[0].Info == nil {
				t.Fatalf("children: %+v, want the file alone", info.Children)
			}
			p := info.Children[0].Info
			wantSize := (uint64(len(tt.b)) + 511) &^ 511
			if p.Filename != name || p.Format != "file" || p.VirtualSize != wantSize || p.DirtyFlag ||
				p.FormatSpecific.Type != "file" || p.Children == nil || len(p.Children) != 0 {
				t.Errorf("file child: %+v, want %s, format file, %d bytes", p, name, wantSize)
			}
			if (p.ActualSize == nil) != (info.ActualSize == nil) || p.ActualSize != nil && *p.ActualSize != *info.ActualSize {
				t.Errorf("file child's actual size %v, the image's %v: qemu-img gives both the file's", p.ActualSize, info.ActualSize)
			}
			var js map[string]any
			b, _ := json.Marshal(info)
			json.Unmarshal(b, &js)
			kids, ok := js["children"].([]any)
			if !ok || len(kids) != 1 {
				t.Fatalf("JSON children: %s", b)
			}
			child := kids[0].(map[string]any)["info"].(map[string]any)
			if cc, ok := child["children"].([]any); !ok || len(cc) != 0 {
				t.Errorf("the file child must list an empty children array: %s", b)
			}
			if fs := child["format-specific"].(map[string]any); fs["type"] != "file" || fs["data"] == nil {
				t.Errorf("file child's format-specific: %v", fs)
			}

			old := chainInfo(t, name, LayoutQemu72)[0]
			b, _ = json.Marshal(old)
			if bytes.Contains(b, []byte(`"children"`)) {
				t.Errorf("7.2's layout has no children: %s", b)
			}
		})
	}
}

func TestOpenChainNoDataFile(t *testing.T) {
	// qemu-img info describes an image whose data file is gone; opening
	// the chain for reading fails at once, as qemu does.
	name := writeImage(t, "df.qcow2", dataFileImage("missing.bin"))
	if c, err := OpenChain(name, ChainOptions{}); err == nil {
		c.Close()
		t.Errorf("OpenChain of an image without its data file succeeded")
	}
	c, err := OpenChain(name, ChainOptions{NoDataFile: true})
	if err != nil {
		t.Fatalf("OpenChain with NoDataFile: %v", err)
	}
	defer c.Close()
	if _, err := c.ChainInfo(OutputOptions{}); err != nil {
		t.Errorf("ChainInfo: %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Errorf("reading guest data without the data file succeeded")
	}
}
