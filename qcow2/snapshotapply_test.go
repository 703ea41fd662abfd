package qcow2

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestPutRefcountEntry(t *testing.T) {
	for order := uint32(0); order <= 6; order++ {
		bits := uint64(1) << order
		maxRef := ^uint64(0)
		if bits < 64 {
			maxRef = 1<<bits - 1
		}
		block := make([]byte, 64)
		n := uint64(len(block)) * 8 / bits
		want := make([]uint64, n)
		for i := uint64(0); i < n; i++ {
			want[i] = (i*0x9e3779b97f4a7c15 + 7) & maxRef
			putRefcountEntry(block, order, i, want[i])
		}
		// Overwrite every other entry: neighbours must keep their values.
		for i := uint64(0); i < n; i += 2 {
			want[i] = maxRef - want[i]
			putRefcountEntry(block, order, i, want[i])
		}
		for i := uint64(0); i < n; i++ {
			if got := RefcountEntry(block, order, i); got != want[i] {
				t.Fatalf("order %d entry %d: got %d, want %d", order, i, got, want[i])
			}
		}
	}
}

// snapImage makes an image with qemu-img and qemu-io: s1 holds 0x11 in
// the first MiB and a compressed cluster; afterwards the active state is
// rewritten in part and s2 taken, then written again.
func snapImage(t *testing.T, opts string) string {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(tool + " not installed")
		}
	}
	p := filepath.Join(t.TempDir(), "snap.qcow2")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	run("qemu-img", append(args, p, "8M")...)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -c -P 0x12 4M 64k", p)
	run("qemu-img", "snapshot", "-c", "s1", p)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x21 512k 1M", "-c", "write -z 4M 64k", "-c", "discard 0 64k", p)
	run("qemu-img", "snapshot", "-c", "s2", p)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x31 6M 1M", p)
	return p
}

// guest returns the guest-visible bytes of the image, or of its snapshot
// key when key is not empty.
func guest(t *testing.T, name, key string) []byte {
	t.Helper()
	c, err := OpenChain(name, ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := c
	if key != "" {
		if r, err = c.WithSnapshot(key); err != nil {
			t.Fatal(err)
		}
	}
	b := make([]byte, r.Size())
	if _, err := r.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}

func fileSum(t *testing.T, name string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func checkClean(t *testing.T, name string) {
	t.Helper()
	f, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := f.Check()
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 {
		t.Errorf("check after apply: %+v %q", res, res.Messages)
	}
	if out, err := exec.Command("qemu-img", "check", name).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check after apply: %v\n%s", err, out)
	}
}

func TestApplySnapshot(t *testing.T) {
	for _, tc := range []struct{ name, opts string }{
		{"default", ""},
		{"cluster-512", "cluster_size=512"},
		{"extended-l2", "extended_l2=on"},
		{"refcount-bits-2", "refcount_bits=2"},
		{"refcount-bits-64", "refcount_bits=64"},
		{"compat-0.10", "compat=0.10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := snapImage(t, tc.opts)
			want1, want2 := guest(t, p, "s1"), guest(t, p, "s2")
			for _, key := range []string{"s1", "2", "s1"} {
				res, err := ApplySnapshot(p, key, ApplyOptions{})
				if err != nil {
					t.Fatalf("apply %s: %v", key, err)
				}
				want := want1
				if res.Snapshot.Name == "s2" {
					want = want2
				}
				if got := guest(t, p, ""); !bytes.Equal(got, want) {
					t.Fatalf("after apply %s the image does not read as the snapshot", key)
				}
				checkClean(t, p)
			}
			if got := guest(t, p, "s2"); !bytes.Equal(got, want2) {
				t.Errorf("s2 changed")
			}
		})
	}
}

func TestApplySnapshotRefusals(t *testing.T) {
	p := snapImage(t, "")
	setHeaderBit := func(bit uint64) func(t *testing.T, name string) {
		return func(t *testing.T, name string) {
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			b[79] |= byte(bit) // low byte of incompatible_features
			if err := os.WriteFile(name, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name    string
		key     string
		prepare func(t *testing.T, name string)
		want    error
	}{
		{"not-found", "nope", nil, ErrSnapshotNotFound},
		{"dirty", "s1", setHeaderBit(IncompatDirty), nil},
		{"corrupt", "s1", setHeaderBit(IncompatCorrupt), ErrCorrupt},
		{"raw", "s1", func(t *testing.T, name string) { os.WriteFile(name, make([]byte, 1<<20), 0o644) }, ErrNotQcow2},
		{"unknown-autoclear", "s1", func(t *testing.T, name string) {
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			b[95] |= 0x04 // autoclear bit 2: nobody's
			os.WriteFile(name, b, 0o644)
		}, ErrUnsupported},
		{"bitmaps", "s1", func(t *testing.T, name string) {
			if out, err := exec.Command("qemu-img", "bitmap", "--add", name, "b0").CombinedOutput(); err != nil {
				t.Fatalf("qemu-img bitmap: %v\n%s", err, out)
			}
		}, ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "img")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(name, b, 0o644)
			if tc.prepare != nil {
				tc.prepare(t, name)
			}
			before := fileSum(t, name)
			_, err = ApplySnapshot(name, tc.key, ApplyOptions{})
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if fileSum(t, name) != before {
				t.Errorf("a refused apply changed the file")
			}
		})
	}
	t.Run("in-use", func(t *testing.T) {
		other, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		release, err := lockImage(other)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		before := fileSum(t, p)
		if _, err := ApplySnapshot(p, "s1", ApplyOptions{}); !errors.Is(err, ErrInUse) {
			t.Errorf("got %v, want ErrInUse", err)
		}
		if fileSum(t, p) != before {
			t.Errorf("a refused apply changed the file")
		}
	})
}

// FuzzApplySnapshot applies snapshot "1" to mutated images: no panic, and
// whenever the apply succeeds, Check must find no corruption afterwards.
func FuzzApplySnapshot(f *testing.F) {
	for _, b := range corpusFiles(f) {
		f.Add(b)
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		p := filepath.Join(f.TempDir(), "seed.qcow2")
		for _, args := range [][]string{
			{"create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "64k"},
			{"snapshot", "-c", "s1", p},
		} {
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				f.Fatalf("qemu-img %v: %v\n%s", args, err, out)
			}
		}
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<20 {
			return
		}
		p := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ApplySnapshot(p, "1", ApplyOptions{}); err != nil {
			return
		}
		q, err := Open(p)
		if err != nil {
			t.Fatalf("open after a successful apply: %v", err)
		}
		defer q.Close()
		res, err := q.Check()
		if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
			t.Fatalf("check after a successful apply: %+v %v %q", res, err, res.Messages)
		}
	})
}
