package chain

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/qcow2"
)

// originalRig is issue 12's case: a VM defined on vm1.qcow2, snapshots s1
// and s2 with writes between, so that deleting s1 pulls vm1.qcow2 into the
// overlay above and leaves it needed by no chain of the VM.
type originalRig struct {
	dir, vm1 string
	m        *Manager
}

func newOriginalRig(t *testing.T) *originalRig {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	dir := t.TempDir()
	o := &originalRig{dir: dir, vm1: filepath.Join(dir, "vm1.qcow2")}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", o.vm1, "8M")
	write(t, o.vm1, 1, "0")
	o.m = &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := o.m.Store.Define(&VM{Name: "vm1", Disks: []Disk{{Target: "vda", Active: o.vm1}}}); err != nil {
		t.Fatal(err)
	}
	vm, err := o.m.Store.Load("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(vm.Originals, []string{o.vm1}) {
		t.Fatalf("define recorded originals %v, want [%s]", vm.Originals, o.vm1)
	}
	o.snapshot(t, "s1")
	write(t, o.active(t), 2, "1M")
	o.snapshot(t, "s2")
	write(t, o.active(t), 3, "2M")
	return o
}

func (o *originalRig) active(t *testing.T) string {
	vm, err := o.m.Store.Load("vm1")
	if err != nil {
		t.Fatal(err)
	}
	return vm.Disks[0].Active
}

func (o *originalRig) snapshot(t *testing.T, name string) {
	if _, err := o.m.CreateSnapshot("vm1", name, "", false); err != nil {
		t.Fatal(err)
	}
}

// deleteS1 deletes s1 by pull, checking that s2 and the current state
// read as before.
func (o *originalRig) deleteS1(t *testing.T) *Plan {
	t.Helper()
	vm, _ := o.m.Store.Load("vm1")
	s2, cur := sum(t, vm.Snapshot("s2").File("vda")), sum(t, vm.Disks[0].Active)
	p, err := o.m.Delete("vm1", "s1", DeleteOptions{Merge: MergePull}, false)
	if err != nil {
		t.Fatal(err)
	}
	vm, _ = o.m.Store.Load("vm1")
	if sum(t, vm.Snapshot("s2").File("vda")) != s2 || sum(t, vm.Disks[0].Active) != cur {
		t.Fatal("deleting s1 changed what s2 or the current state reads")
	}
	return p
}

// kept returns the reason the plan kept file for, or "".
func kept(p []KeptFile, file string) string {
	for _, k := range p {
		if k.File == file {
			return k.Reason
		}
	}
	return ""
}

func TestOriginalImageRemoved(t *testing.T) {
	o := newOriginalRig(t)
	p := o.deleteS1(t)
	if !slices.Contains(p.Removed, o.vm1) {
		t.Errorf("plan removes %v, kept %v; want %s removed", p.Removed, p.Kept, o.vm1)
	}
	if _, err := os.Stat(o.vm1); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", o.vm1, err)
	}
	vm, _ := o.m.Store.Load("vm1")
	if len(vm.Originals) != 0 {
		t.Errorf("metadata still lists originals %v", vm.Originals)
	}
	if u, err := o.m.UnusedFiles(vm); err != nil || len(u) != 0 {
		t.Errorf("UnusedFiles: %v, %v; want none", u, err)
	}
}

func TestOriginalImageKeptForFolderImage(t *testing.T) {
	o := newOriginalRig(t)
	other := filepath.Join(o.dir, "other.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "vm1.qcow2", "-F", "qcow2", other)
	p := o.deleteS1(t)
	if why := kept(p.Kept, o.vm1); !strings.Contains(why, "other.qcow2 uses it") {
		t.Errorf("kept %v, removed %v; want %s kept because other.qcow2 uses it", p.Kept, p.Removed, o.vm1)
	}
	if _, err := os.Stat(o.vm1); err != nil {
		t.Fatal(err)
	}
	vm, _ := o.m.Store.Load("vm1")
	u, err := o.m.UnusedFiles(vm)
	if err != nil || !strings.Contains(kept(u, o.vm1), "other.qcow2") {
		t.Errorf("UnusedFiles: %v, %v; want %s named", u, err, o.vm1)
	}
	// Once the other image is gone, the next operation removes it.
	if err := os.Remove(other); err != nil {
		t.Fatal(err)
	}
	u, _ = o.m.UnusedFiles(vm)
	if !strings.Contains(kept(u, o.vm1), "next snapshot operation") {
		t.Errorf("UnusedFiles: %v; want %s due for removal", u, o.vm1)
	}
	o.snapshot(t, "s3")
	p, err = o.m.Delete("vm1", "s3", DeleteOptions{}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(p.Removed, o.vm1) {
		t.Errorf("the next delete removes %v, keeps %v; want %s removed", p.Removed, p.Kept, o.vm1)
	}
}

// TestOriginalImageKeptWhileHeld holds vm1.qcow2 open in qemu-io (QEMU's
// locks) across the delete.
func TestOriginalImageKeptWhileHeld(t *testing.T) {
	o := newOriginalRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-io", "-r", "-f", "qcow2", o.vm1)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if busy, _ := qcow2.InUse(o.vm1); busy {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatal("qemu-io took no lock of the image")
		}
	}
	p := o.deleteS1(t)
	if why := kept(p.Kept, o.vm1); !strings.Contains(why, "process") {
		t.Errorf("kept %v, removed %v; want %s kept because a process holds it", p.Kept, p.Removed, o.vm1)
	}
	if _, err := os.Stat(o.vm1); err != nil {
		t.Fatal(err)
	}
	// A remove step that meets the lock refuses.
	if err := (&Offline{}).Run(Step{Kind: StepRemove, File: o.vm1}); err == nil {
		t.Error("a remove step removed a file a process holds")
	}
}

func TestOriginalImageKeptForOtherVM(t *testing.T) {
	o := newOriginalRig(t)
	b := filepath.Join(o.dir, "b.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "vm1.qcow2", "-F", "qcow2", b)
	if err := o.m.Store.Define(&VM{Name: "b", Disks: []Disk{{Target: "vda", Active: b}}}); err != nil {
		t.Fatal(err)
	}
	p := o.deleteS1(t)
	if why := kept(p.Kept, o.vm1); why != "VM b uses it" {
		t.Errorf("kept %v, removed %v; want %s kept because VM b uses it", p.Kept, p.Removed, o.vm1)
	}
}

// TestMetadataDeleteKeepsFiles: --metadata names the files it leaves
// unused and touches none.
func TestMetadataDeleteKeepsFiles(t *testing.T) {
	o := newOriginalRig(t)
	if _, err := o.m.Revert("vm1", "s1", true); err != nil {
		t.Fatal(err)
	}
	vm, _ := o.m.Store.Load("vm1")
	s2file := vm.Snapshot("s2").File("vda")
	p, err := o.m.Delete("vm1", "s2", DeleteOptions{MetadataOnly: true}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 0 || !strings.Contains(kept(p.Kept, s2file), "--metadata") {
		t.Errorf("--metadata: steps %v, kept %v; want no step and %s kept", p.Steps, p.Kept, s2file)
	}
	if _, err := os.Stat(s2file); err != nil {
		t.Error(err)
	}
}
