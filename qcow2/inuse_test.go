package qcow2

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestCheckNotInUse holds QEMU's lock bytes through another open file
// description (OFD locks conflict between descriptions, also within one
// process), as a running QEMU would.
func TestCheckNotInUse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := CheckNotInUse(p); err != nil {
		t.Fatalf("free image: %v", err)
	}
	if held, err := InUse(p); err != nil || held {
		t.Fatalf("free image: held %v, %v", held, err)
	}
	other, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	release, err := lockImage(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckNotInUse(p); !errors.Is(err, ErrInUse) {
		t.Fatalf("held image: got %v, want ErrInUse", err)
	}
	if held, err := InUse(p); err != nil || !held {
		t.Fatalf("held image: held %v, %v", held, err)
	}
	release()
	if err := CheckNotInUse(p); err != nil {
		t.Fatalf("released image: %v", err)
	}
}
