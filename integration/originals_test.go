package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/qcow2"
)

// scPlan is the part of `snapshot delete --output=json` about files.
type scPlan struct {
	Removed []string `json:"removed"`
	Kept    []struct {
		File   string `json:"file"`
		Reason string `json:"reason"`
	} `json:"kept"`
}

func (p scPlan) keptFor(file string) string {
	for _, k := range p.Kept {
		if k.File == file {
			return k.Reason
		}
	}
	return ""
}

// TestSnapshotCLIOriginalImages is issue 12's case through the binary: a
// VM defined on its images, snapshots s1 and s2 with writes between, s1
// deleted by pull, which leaves the images the VM was defined on needed by
// no chain of the VM. For vm2 nothing else needs them: they are removed and
// the output says so. For vm1 an image of the folder sits on vdb's and a
// process (qemu-io) holds vda's: both stay, named with the reason in the
// delete's JSON and in vm show (human and JSON), until a later operation
// finds them free.
func TestSnapshotCLIOriginalImages(t *testing.T) {
	e := newSCEnv(t)
	for _, vm := range []string{"vm1", "vm2"} {
		e.define(vm)
		e.ok("snapshot", "create", vm, "s1")
		e.write(vm, 0x21)
		e.ok("snapshot", "create", vm, "s2")
		e.write(vm, 0x22)
	}
	want := map[string]string{"vm1": e.contents("vm1", "s2"), "vm2": e.contents("vm2", "s2")}
	vda := func(vm string) string { return filepath.Join(e.img, vm+"-vda.qcow2") }
	vdb := func(vm string) string { return filepath.Join(e.img, vm+"-vdb.qcow2") }

	// Removed.
	out := e.ok("snapshot", "delete", "--merge=pull", "vm2", "s1")
	for _, f := range []string{vda("vm2"), vdb("vm2")} {
		if !strings.Contains(out, "remove "+f+"\n     why: the VM's original image") {
			t.Errorf("delete does not say it removes the original image %s:\n%s", f, out)
		}
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s is still there: %v", f, err)
		}
	}
	if out := e.ok("vm", "show", "vm2"); strings.Contains(out, "no chain needs") {
		t.Errorf("vm show lists unused files after they were removed:\n%s", out)
	}

	// Kept: an image of the folder uses vdb's, a process holds vda's.
	e.q.Overlay("other.qcow2", "vm1-vdb.qcow2", "qcow2", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	holder := exec.CommandContext(ctx, "qemu-io", "-r", "-f", "qcow2", vda("vm1"))
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	held := true
	release := func() {
		if held {
			stdin.Close()
			holder.Wait()
			held = false
		}
	}
	defer release()
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if busy, _ := qcow2.InUse(vda("vm1")); busy {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("qemu-io took no lock of the image")
		}
	}
	var p scPlan
	js := e.ok("snapshot", "delete", "--merge=pull", "--output=json", "vm1", "s1")
	if err := json.Unmarshal([]byte(js), &p); err != nil {
		t.Fatalf("delete --output=json: %v\n%s", err, js)
	}
	if why := p.keptFor(vda("vm1")); !strings.Contains(why, "a process has it open") {
		t.Errorf("delete JSON keeps %v; want %s kept because a process holds it:\n%s", p.Kept, vda("vm1"), js)
	}
	if why := p.keptFor(vdb("vm1")); !strings.Contains(why, "other.qcow2 uses it") {
		t.Errorf("delete JSON keeps %v; want %s kept because other.qcow2 uses it:\n%s", p.Kept, vdb("vm1"), js)
	}
	for _, f := range []string{vda("vm1"), vdb("vm1")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s was removed: %v", f, err)
		}
	}
	human := e.ok("vm", "show", "vm1")
	for _, want := range []string{vda("vm1") + ": a process has it open", vdb("vm1") + ": " + filepath.Join(e.img, "other.qcow2") + " uses it"} {
		if !strings.Contains(human, want) {
			t.Errorf("vm show does not say %q:\n%s", want, human)
		}
	}
	var show struct {
		Unused []struct {
			File   string `json:"file"`
			Reason string `json:"reason"`
		} `json:"unused"`
	}
	if err := json.Unmarshal([]byte(e.ok("vm", "show", "--output=json", "vm1")), &show); err != nil {
		t.Fatal(err)
	}
	if len(show.Unused) != 2 {
		t.Errorf("vm show --output=json lists unused files %+v, want vm1's two original images", show.Unused)
	}

	// Both free: the next operation removes them and says so.
	release()
	if err := os.Remove(filepath.Join(e.img, "other.qcow2")); err != nil {
		t.Fatal(err)
	}
	e.ok("snapshot", "create", "vm1", "s3")
	out = e.ok("snapshot", "delete", "vm1", "s3")
	for _, f := range []string{vda("vm1"), vdb("vm1")} {
		if !strings.Contains(out, "remove "+f+"\n") {
			t.Errorf("the next delete does not remove %s:\n%s", f, out)
		}
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s is still there: %v", f, err)
		}
	}
	for _, vm := range []string{"vm1", "vm2"} {
		if got := e.contents(vm, "s2"); got != want[vm] {
			t.Errorf("%s: snapshot s2 or the current state no longer reads as before the deletes", vm)
		}
	}
}

// contents is what the VM's snapshot snap and current state read, every
// disk, as `qchain export` writes it.
func (e *scEnv) contents(vm, snap string) string {
	e.t.Helper()
	var out []string
	for _, d := range e.info(vm, snap).Disks {
		out = append(out, e.ok("export", d.File))
	}
	for _, tg := range []string{"vda", "vdb"} {
		out = append(out, e.ok("export", e.active(vm, tg)))
	}
	return strings.Join(out, "|")
}
