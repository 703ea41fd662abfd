package backup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readTestIndex(t testing.TB) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", IndexName))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseIndex(t *testing.T) {
	good := readTestIndex(t)
	x, err := ParseIndex(good)
	if err != nil {
		t.Fatal(err)
	}
	if x.VM != "vm1" || len(x.Points) != 2 || x.Last().Point != 3 || x.Previous(x.Last()).Point != 1 {
		t.Errorf("parsed %+v", x)
	}
	if got := BitmapName(x.ID, 3); got != "qchain-backup-0123456789ab-3" {
		t.Errorf("BitmapName: %s", got)
	}
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"file outside the folder", `"vda.3.qcow2"`, `"../vda.3.qcow2"`, `file "../vda.3.qcow2", want "vda.3.qcow2"`},
		{"absolute file", `"vda.3.qcow2"`, `"/etc/passwd"`, `want "vda.3.qcow2"`},
		{"target with a slash", `"target": "vda", "file": "vda.3.qcow2"`, `"target": "a/b", "file": "a/b.3.qcow2"`, "may hold only"},
		{"dot target", `"target": "vda", "file": "vda.3.qcow2"`, `"target": "..", "file": "...3.qcow2"`, "not starting with '.'"},
		{"numbers going down", `"point": 3`, `"point": 1`, "numbers must grow"},
		{"negative number", `"point": 1,`, `"point": -1,`, "numbers must grow"},
		{"huge number", `"point": 3`, `"point": 9223372036854775807`, "numbers must grow"},
		{"incremental first", `"kind": "full"`, `"kind": "incremental"`, "oldest point must be full"},
		{"unknown kind", `"kind": "full"`, `"kind": "diff"`, `kind "diff"`},
		{"bad checksum", `"64f8c0c3`, `"zz`, "sha256"},
		{"bad id", `"0123456789ab"`, `"../x"`, "12 hex digits"},
		{"unknown version", `"version": 1`, `"version": 2`, "version 2"},
		{"unknown field", `"version": 1,`, `"version": 1, "extra": 1,`, "unknown field"},
		{"merging an unknown point", `"version": 1,`, `"version": 1, "merging": 7,`, "merging into point 7"},
		{"trailing data", "}\n", "}\n{}", "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := bytes.LastIndex(good, []byte(tc.old))
			if i < 0 {
				t.Fatalf("%q not in the test index", tc.old)
			}
			bad := append(append(bytes.Clone(good[:i]), tc.new...), good[i+len(tc.old):]...)
			_, err := ParseIndex(bad)
			if !errors.Is(err, ErrCorruptIndex) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want ErrCorruptIndex mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := ParseIndex(make([]byte, MaxIndexSize+1)); !errors.Is(err, ErrCorruptIndex) {
		t.Errorf("oversized index: %v", err)
	}
}

func TestReadIndexMissing(t *testing.T) {
	if _, err := ReadIndex(t.TempDir()); !errors.Is(err, ErrNoIndex) {
		t.Errorf("empty folder: %v, want ErrNoIndex", err)
	}
}

func TestRemoveLeftovers(t *testing.T) {
	dir := t.TempDir()
	x, err := ParseIndex(readTestIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"vda.1.qcow2", "vda.3.qcow2", "vda.4.qcow2", "vdb.3.qcow2", ".vda.4.qcow2.tmp", "notes.txt", "vda.1.raw", IndexName} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	removed, err := removeLeftovers(dir, x)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(removed); got != "[.vda.4.qcow2.tmp vda.4.qcow2 vdb.3.qcow2]" {
		t.Errorf("removed %s", got)
	}
}

func FuzzParseIndex(f *testing.F) {
	f.Add(readTestIndex(f))
	f.Add([]byte(`{"version":1,"vm":"a","id":"000000000000","points":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := ParseIndex(b)
		if err != nil {
			return
		}
		for i := range x.Points {
			for _, d := range x.Points[i].Disks {
				if filepath.Base(d.File) != d.File || strings.HasPrefix(d.File, ".") {
					t.Fatalf("accepted file name %q", d.File)
				}
			}
		}
	})
}

func ExampleFileName() {
	fmt.Println(FileName("vda", 3), BitmapName("0123456789ab", 3))
	// Output: vda.3.qcow2 qchain-backup-0123456789ab-3
}
