package imagesnap

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/qcow2"
)

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"s1", true},
		{"snäp", true},
		{strings.Repeat("x", qcow2.MaxSnapshotNameBytes), true},
		{strings.Repeat("x", qcow2.MaxSnapshotNameBytes+1), false},
		{strings.Repeat("ä", 128), false}, // 256 bytes
		{"", false},
		{"a\x00b", false},
	} {
		err := CheckName(tc.name)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrBadName) {
			t.Errorf("CheckName(%q): %v", tc.name, err)
		}
	}
}

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-storage-daemon"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(tool + " not on PATH")
		}
	}
}

// TestCreateApplyDelete runs the three writing operations on one image and
// reads the results back with qemu-img.
func TestCreateApplyDelete(t *testing.T) {
	needTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	img := filepath.Join(dir, "img.qcow2")
	qemu := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	qemu("qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	qemu("qemu-io", "-f", "qcow2", "-c", "write -q -P 0x11 0 1M", img)
	ref := filepath.Join(dir, "s1.raw")
	qemu("qemu-img", "convert", "-O", "raw", img, ref)

	if err := Create(ctx, img, "s1", Options{}); err != nil {
		t.Fatal(err)
	}
	err := Create(ctx, img, "s1", Options{})
	var ie *Error
	if !errors.As(err, &ie) || !errors.Is(err, ErrNameInUse) || ie.Op != "create" || ie.Snapshot != "s1" {
		t.Errorf("second s1: %v", err)
	}
	list, err := List(img, "")
	if err != nil || len(list) != 1 || list[0].Name != "s1" || list[0].ID != "1" || list[0].Icount != nil {
		t.Fatalf("List after create: %+v, %v", list, err)
	}
	qemu("qemu-io", "-f", "qcow2", "-c", "write -q -P 0x22 512k 1M", img)
	if _, err := Apply(img, "s1"); err != nil {
		t.Fatal(err)
	}
	qemu("qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, ref)
	qemu("qemu-img", "check", img)

	if _, err := Delete(ctx, img, "nope", Options{}); !errors.Is(err, qcow2.ErrSnapshotNotFound) || !strings.HasSuffix(err.Error(), ": could not delete snapshot 'nope': snapshot not found") {
		t.Errorf("deleting a missing snapshot: %v", err)
	}
	if _, err := Delete(ctx, img, "1", Options{}); !errors.Is(err, qcow2.ErrSnapshotNotFound) {
		t.Errorf("-d looks at names only, as qemu-img: deleting \"1\": %v", err)
	}
	deleted, err := Delete(ctx, img, "s1", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if deleted.Name != "s1" {
		t.Errorf("deleted %+v, want s1", deleted)
	}
	if out := qemu("qemu-img", "snapshot", "-l", img); out != "" {
		t.Errorf("qemu-img snapshot -l after delete:\n%s", out)
	}
	qemu("qemu-img", "check", img)
}

func TestRaw(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := List(img, "")
	if err != nil || list == nil || len(list) != 0 {
		t.Errorf("List of a raw image: %v, %v; want an empty list", list, err)
	}
	for _, err := range []error{
		Create(context.Background(), img, "s1", Options{}),
		func() error { _, err := Apply(img, "s1"); return err }(),
		func() error { _, err := Delete(context.Background(), img, "s1", Options{}); return err }(),
	} {
		if !errors.Is(err, qcow2.ErrNotQcow2) || !strings.Contains(err.Error(), "not a qcow2 image") {
			t.Errorf("raw image: %v", err)
		}
	}
}
