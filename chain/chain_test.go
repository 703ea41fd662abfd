package chain

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/qchain/qchain/qcow2"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// sum is the guest-visible checksum of an image chain.
func sum(t *testing.T, file string) string {
	t.Helper()
	c, err := qcow2.OpenChain(file, qcow2.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(c, 0, int64(c.Size()))); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func write(t *testing.T, file string, pattern byte, off string) {
	t.Helper()
	run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %s 64k", pattern, off), file)
}

func TestSnapshotLifeOffline(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	dir := t.TempDir()
	disk := filepath.Join(dir, "vda.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "8M")
	write(t, disk, 1, "0")
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := m.Store.Define(&VM{Name: "vm1", Disks: []Disk{{Target: "vda", Active: disk}}}); err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	active := func() string {
		vm, err := m.Store.Load("vm1")
		if err != nil {
			t.Fatal(err)
		}
		return vm.Disks[0].Active
	}
	for i, name := range []string{"s1", "s2", "s3"} {
		if _, err := m.CreateSnapshot("vm1", name, "", false); err != nil {
			t.Fatal(err)
		}
		sums[name] = sum(t, active())
		write(t, active(), byte(10+i), fmt.Sprint((i+1)*65536))
	}
	current := sum(t, active())
	check := func(step string) {
		t.Helper()
		vm, _ := m.Store.Load("vm1")
		for _, s := range vm.Snapshots {
			if got := sum(t, s.File("vda")); got != sums[s.Name] {
				t.Fatalf("%s: snapshot %s reads differently", step, s.Name)
			}
		}
		if got := sum(t, vm.Disks[0].Active); got != current {
			t.Fatalf("%s: current state reads differently", step)
		}
		if err := Verify(vm); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		for _, f := range vm.trackedFiles("vda") {
			if out, err := exec.Command("qemu-img", "check", f).CombinedOutput(); err != nil {
				t.Fatalf("%s: qemu-img check %s: %s", step, f, out)
			}
		}
	}
	check("created")
	// Middle snapshot, dry run first.
	p, err := m.Delete("vm1", "s2", DeleteOptions{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) == 0 || p.Before["vda"] == "" || p.After["vda"] == "" {
		t.Fatalf("dry run plan: %+v", p)
	}
	if _, err := m.Delete("vm1", "s2", DeleteOptions{}, false); err != nil {
		t.Fatal(err)
	}
	delete(sums, "s2")
	check("deleted s2")
	// Newest (under the active image), by commit.
	if _, err := m.Delete("vm1", "s3", DeleteOptions{Merge: MergeCommit}, false); err != nil {
		t.Fatal(err)
	}
	delete(sums, "s3")
	check("deleted s3")
	// Revert refuses to lose changes, then works with force.
	if _, err := m.Revert("vm1", "s1", false); err == nil {
		t.Fatal("revert discarded changes without --force")
	}
	if _, err := m.Revert("vm1", "s1", true); err != nil {
		t.Fatal(err)
	}
	current = sums["s1"]
	check("reverted")
	// Oldest, by pull.
	if _, err := m.Delete("vm1", "s1", DeleteOptions{Merge: MergePull}, false); err != nil {
		t.Fatal(err)
	}
	delete(sums, "s1")
	check("deleted s1")
}
