package chain

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// sums records the guest checksum of every snapshot and of the current
// state of every disk.
func sums(t *testing.T, m *Manager, name string) map[string]string {
	t.Helper()
	vm, err := m.Store.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range vm.Disks {
		out[d.Target+"@current"] = sum(t, d.Active)
		for _, s := range vm.Snapshots {
			out[d.Target+"@"+s.Name] = sum(t, s.File(d.Target))
		}
	}
	return out
}

// sameSums checks that every recorded point in time still present reads
// the same, and that the files pass qemu-img check.
func sameSums(t *testing.T, m *Manager, name string, want map[string]string) {
	t.Helper()
	got := sums(t, m, name)
	for k, v := range got {
		if w, ok := want[k]; ok && w != v {
			t.Errorf("%s reads differently", k)
		}
	}
	vm, _ := m.Store.Load(name)
	if err := Verify(vm); err != nil {
		t.Error(err)
	}
	for _, d := range vm.Disks {
		for _, f := range vm.trackedFiles(d.Target) {
			if out, err := exec.Command("qemu-img", "check", "-U", f).CombinedOutput(); err != nil {
				t.Errorf("qemu-img check %s: %s", f, out)
			}
		}
	}
}

// TestDeleteENOSPC: a pull that runs out of space fails with a clear
// error, leaves every file consistent and every snapshot reading the same;
// once space is freed, recover finishes the delete.
func TestDeleteENOSPC(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.Mkdir(small, 0o755)
	if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	defer syscall.Unmount(small, syscall.MNT_DETACH)
	disk := filepath.Join(small, "vda.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "8M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 3M", disk)
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := m.Store.Define(&VM{Name: "full", Disks: []Disk{{Target: "vda", Active: disk}}}); err != nil {
		t.Fatal(err)
	}
	for i, s := range []string{"s1", "s2"} {
		if _, err := m.CreateSnapshot("full", s, "", false); err != nil {
			t.Fatal(err)
		}
		vm, _ := m.Store.Load("full")
		run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %dM 64k", 0x20+i, 4+i), vm.Disks[0].Active)
	}
	want := sums(t, m, "full")
	// Leave less free space than the pull must copy (3 MiB).
	filler := filepath.Join(small, "filler")
	var st syscall.Statfs_t
	syscall.Statfs(small, &st)
	free := int64(st.Bavail) * st.Bsize
	if err := os.WriteFile(filler, make([]byte, free-1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := m.Delete("full", "s1", DeleteOptions{Merge: MergePull}, false)
	if err == nil {
		t.Fatal("a pull into a full file system succeeded")
	}
	t.Logf("delete on a full file system: %v", err)
	if strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), "recover") {
		t.Errorf("error is not one clear line saying what to do: %v", err)
	}
	if _, err := m.Store.Lock("full", false); !errors.Is(err, ErrUnfinished) {
		t.Errorf("after the failure, other operations must refuse: %v", err)
	}
	sameSums(t, m, "full", want)
	os.Remove(filler)
	if _, err := m.Recover("full"); err != nil {
		t.Fatalf("recover after freeing space: %v", err)
	}
	vm, _ := m.Store.Load("full")
	if vm.Snapshot("s1") != nil {
		t.Error("s1 still there after recover")
	}
	sameSums(t, m, "full", want)
}

// TestLiveQMPDiesMidDelete: qemu dies (its QMP socket stops answering) in
// the middle of a live delete. The operation either finishes offline (the
// images are free once qemu is gone) or stops with a clear error that
// recover then finishes; every remaining point in time reads the same.
func TestLiveQMPDiesMidDelete(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon", "qemu-system-x86_64")
	dir := t.TempDir()
	vda, vdb := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.qcow2")
	for _, f := range []string{vda, vdb} {
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "4M")
	}
	q := startLiveVM(t, map[string]string{"vda": vda, "vdb": vdb})
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := m.Store.Define(&VM{Name: "dies", QMP: q.qchain, Disks: []Disk{{Target: "vda", Active: vda}, {Target: "vdb", Active: vdb}}}); err != nil {
		t.Fatal(err)
	}
	for i, s := range []string{"s1", "s2", "s3"} {
		for _, tg := range []string{"vda", "vdb"} {
			if out, err := q.hmp(fmt.Sprintf("qemu-io %s \"write -P %d %dk 64k\"", tg, 0x30+i, 64*i)); err != nil || strings.TrimSpace(out) != "" {
				t.Fatalf("guest write: %v %s", err, out)
			}
		}
		if _, err := m.CreateSnapshot("dies", s, "", false); err != nil {
			t.Fatal(err)
		}
	}
	q.flush()
	want := sums(t, m, "dies")
	setStepHook(t, func(_ string, i int, _ Step) {
		if i == 0 {
			q.cmd.Process.Kill()
			<-q.exited
		}
	})
	_, err := m.Delete("dies", "s2", DeleteOptions{}, false)
	StepHook = nil
	if err != nil {
		if strings.Count(err.Error(), "\n") != 0 {
			t.Errorf("error is not one line: %v", err)
		}
		if _, err := m.Recover("dies"); err != nil {
			t.Fatalf("recover after qemu died: %v", err)
		}
	}
	vm, _ := m.Store.Load("dies")
	if vm.Snapshot("s2") != nil {
		t.Error("s2 still there")
	}
	sameSums(t, m, "dies", want)
}

// TestLiveMismatch: when the running qemu writes to another image than the
// metadata names, live operations refuse with a clear error and change
// nothing.
func TestLiveMismatch(t *testing.T) {
	need(t, "qemu-img", "qemu-system-x86_64")
	dir := t.TempDir()
	var files []string
	for _, n := range []string{"vda", "vdb", "other"} {
		f := filepath.Join(dir, n+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "4M")
		files = append(files, f)
	}
	q := startLiveVM(t, map[string]string{"vda": files[0], "vdb": files[1]})
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := m.Store.Define(&VM{Name: "mm", QMP: q.qchain, Disks: []Disk{{Target: "vda", Active: files[2]}}}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(dir)
	_, err := m.CreateSnapshot("mm", "s1", "", false)
	if err == nil || !strings.Contains(err.Error(), "behind qchain's back") {
		t.Fatalf("create with qemu on another image: %v", err)
	}
	if after, _ := os.ReadDir(dir); len(after) != len(before) {
		t.Errorf("files created by a refused create")
	}
}
