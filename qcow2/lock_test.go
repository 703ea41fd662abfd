package qcow2

import (
	"os"
	"path/filepath"
	"testing"
)

// TestInUse takes QEMU's lock bytes through one open file description, as
// a QEMU process does, and asks through another.
func TestInUse(t *testing.T) {
	name := filepath.Join(t.TempDir(), "a.qcow2")
	if err := Create(name, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if busy, err := InUse(name); err != nil || busy {
		t.Fatalf("InUse of a file nobody has open: %v, %v", busy, err)
	}
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	release, err := lockImage(f)
	if err != nil {
		t.Fatal(err)
	}
	if busy, err := InUse(name); err != nil || !busy {
		t.Errorf("InUse of a locked file: %v, %v", busy, err)
	}
	if err := Rebase(name, "", ""); err == nil {
		t.Error("Rebase of a locked file succeeded")
	}
	release()
	if busy, err := InUse(name); err != nil || busy {
		t.Errorf("InUse after the lock was released: %v, %v", busy, err)
	}
}
