package qcow2

import (
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// TestUnchangedSnapshots builds images with qemu-img and qemu-io (snapshot,
// write, revert, resize) and checks which snapshots the current state is.
func TestUnchangedSnapshots(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	sh := func(t *testing.T, name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	io := func(t *testing.T, img, cmd string) { t.Helper(); sh(t, "qemu-io", "-f", "qcow2", "-c", cmd, img) }
	snap := func(t *testing.T, img, flag, name string) { t.Helper(); sh(t, "qemu-img", "snapshot", flag, name, img) }
	for _, c := range []struct {
		name  string
		build func(t *testing.T, img string)
		want  []string
	}{
		{"no snapshots", func(t *testing.T, img string) { io(t, img, "write -P 1 0 64k") }, nil},
		{"fresh snapshot", func(t *testing.T, img string) { io(t, img, "write -P 1 0 64k"); snap(t, img, "-c", "a") }, []string{"a"}},
		{"empty image snapshot", func(t *testing.T, img string) { snap(t, img, "-c", "a") }, []string{"a"}},
		{"write after", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			io(t, img, "write -P 2 0 4k")
		}, nil},
		{"write into a range no L2 table covered", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			io(t, img, "write -P 2 1G 4k")
		}, nil},
		{"zero write after", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			io(t, img, "write -z 0 64k")
		}, nil},
		{"discard after", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			io(t, img, "discard 0 64k")
		}, nil},
		{"two snapshots no write", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			snap(t, img, "-c", "b")
		}, []string{"a", "b"}},
		{"second after write", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			io(t, img, "write -P 2 0 4k")
			snap(t, img, "-c", "b")
		}, []string{"b"}},
		{"reverted", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			io(t, img, "write -P 2 0 4k")
			snap(t, img, "-c", "b")
			snap(t, img, "-a", "a")
		}, []string{"a"}},
		{"reverted then written", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			snap(t, img, "-a", "a")
			io(t, img, "write -P 3 64k 4k")
		}, nil},
		{"grown after", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			sh(t, "qemu-img", "resize", "-q", img, "+1G")
		}, nil},
		{"other snapshot deleted", func(t *testing.T, img string) {
			io(t, img, "write -P 1 0 64k")
			snap(t, img, "-c", "a")
			io(t, img, "write -P 2 0 4k")
			snap(t, img, "-c", "b")
			snap(t, img, "-d", "a")
		}, []string{"b"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "a.qcow2")
			sh(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "2G")
			c.build(t, img)
			f, err := Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := f.UnchangedSnapshots()
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, s := range got {
				names = append(names, s.Name)
			}
			if !slices.Equal(names, c.want) {
				t.Fatalf("unchanged snapshots %v, want %v", names, c.want)
			}
		})
	}
}
