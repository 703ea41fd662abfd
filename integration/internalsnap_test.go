package integration

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures/guest"
)

// wantTag checks with qemu-img that image holds internal snapshot tag
// (or, with !present, does not) and that qemu-img check finds it clean.
func wantTag(t *testing.T, image, tag string, present bool) {
	t.Helper()
	out, err := exec.Command("qemu-img", "snapshot", "-U", "-l", image).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img snapshot -l %s: %v\n%s", image, err, out)
	}
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == tag {
			found = true
		}
	}
	if found != present {
		t.Fatalf("qemu-img snapshot -l %s (want %s present: %t):\n%s", image, tag, present, out)
	}
	if out, err := exec.Command("qemu-img", "check", "-U", image).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", image, err, out)
	}
}

// wantKindJSON checks snapshot info --output=json's kind keys as JSON.
func wantKindJSON(t *testing.T, out string, internal, memory bool) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if m["internal"] != internal || m["memory"] != memory {
		t.Fatalf("snapshot info JSON: internal %v, memory %v, want %t, %t\n%s", m["internal"], m["memory"], internal, memory, out)
	}
}

// TestInternalSnapshotGuest takes a disk-only internal snapshot of the
// running real guest while it writes records, lets it write on, stops it
// and reverts offline: the disk holds every record acknowledged before
// the snapshot and none acknowledged after it. The guest started again
// boots on and writes after them; the snapshot is then deleted live.
func TestInternalSnapshotGuest(t *testing.T) {
	g := defineGuestVM(t, "is", "isnap", 10*time.Millisecond)
	g.ok("vm", "start", "is")
	g.waitAck(0, 20)
	active := g.active("is", "vda")

	c0, err := guest.ReadConsoleLog(g.console, g.run, 0)
	if err != nil {
		t.Fatal(err)
	}
	if out := g.ok("snapshot", "create", "--internal", "is", "d1"); !strings.Contains(out, "Internal snapshot d1 created") {
		t.Fatalf("snapshot create --internal said %q", out)
	}
	c1, err := guest.ReadConsoleLog(g.console, g.run, 0)
	if err != nil {
		t.Fatal(err)
	}
	if g.active("is", "vda") != active {
		t.Fatalf("a disk-only internal snapshot changed the active image to %s", g.active("is", "vda"))
	}
	info := g.ckInfo("d1")
	if !info.Internal || info.Memory || info.MemoryFile != "" || len(info.Disks) != 1 || info.Disks[0].File != active {
		t.Fatalf("internal snapshot d1: %+v", info)
	}
	wantKindJSON(t, g.ok("snapshot", "info", "--output=json", "is", "d1"), true, false)
	if out := g.ok("snapshot", "list", "is"); !strings.Contains(out, " internal ") {
		t.Fatalf("snapshot list does not give the kind:\n%s", out)
	}
	if out := g.ok("snapshot", "info", "is", "d1"); !strings.Contains(out, "Kind:        internal\n") {
		t.Fatalf("snapshot info does not give the kind:\n%s", out)
	}
	g.waitAck(0, c1.LastAck()+40)
	g.failsRunning([]string{"VM is is running", "stop it before reverting its disks"}, "snapshot", "revert", "--force", "is", "d1")
	g.ok("vm", "stop", "--force", "is")
	wantTag(t, active, "d1", true)
	g.fails([]string{"disk vda", "holds changes no snapshot keeps", "--force"}, "snapshot", "revert", "is", "d1")
	g.ok("snapshot", "revert", "--force", "is", "d1")
	last, err := guest.CheckRecords(active, g.run, c0.LastAck())
	if err != nil {
		t.Fatalf("after the revert to d1 (taken with %d..%d acknowledged): %v", c0.LastAck(), c1.LastAck(), err)
	}
	if last > c1.LastAck()+1 {
		t.Fatalf("after the revert the disk holds records up to %d, but the guest had acknowledged only %d when the snapshot command returned", last, c1.LastAck())
	}
	t.Logf("snapshot between acks %d and %d; the reverted disk ends at record %d", c0.LastAck(), c1.LastAck(), last)
	wantTag(t, active, "d1", true)
	// The disks are d1's now: no --force needed.
	g.ok("snapshot", "revert", "is", "d1")

	// Started again, the guest writes on after the reverted disk's records.
	off := g.consoleSize()
	g.ok("vm", "start", "is")
	c := g.waitAck(off, last+5)
	if c.Readies != 1 || c.Next != last+1 {
		t.Fatalf("the guest started at %d (%d boots), want %d", c.Next, c.Readies, last+1)
	}
	g.ok("snapshot", "delete", "is", "d1")
	g.ok("vm", "stop", "--force", "is")
	wantTag(t, active, "d1", false)
	if out := g.ok("snapshot", "list", "--output=json", "is"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("snapshot list after the delete: %s", out)
	}

	// An internal checkpoint of the paused guest: its VM state lies past
	// the disk in the image's tables, and does not count as a change of
	// the disk, so the revert needs no --force; once the guest wrote, it
	// does.
	g.ok("vm", "start", "--paused", "is")
	g.ok("snapshot", "create", "--memory", "--internal", "is", "m1")
	wantKindJSON(t, g.ok("snapshot", "info", "--output=json", "is", "m1"), true, true)
	if out := g.ok("snapshot", "list", "is"); !strings.Contains(out, " internal-memory ") {
		t.Fatalf("snapshot list does not give the kind:\n%s", out)
	}
	g.ok("snapshot", "revert", "--paused", "is", "m1")
	off = g.consoleSize()
	g.ok("snapshot", "revert", "is", "m1")
	g.waitAck(off, 3)
	g.failsRunning([]string{"holds changes no snapshot keeps", "--force"}, "snapshot", "revert", "is", "m1")
	g.ok("vm", "stop", "--force", "is")
	g.ok("snapshot", "delete", "is", "m1")
	wantTag(t, active, "m1", false)
}

// TestInternalSnapshotCLI drives disk-only internal snapshots of a
// stopped VM through the binary: create, list/info JSON, revert (with
// and without --force), delete, the refusals, and a mixed tree.
func TestInternalSnapshotCLI(t *testing.T) {
	e := newSCEnv(t)
	e.define("vm1")
	vda, vdb := e.active("vm1", "vda"), e.active("vm1", "vdb")
	e.fails([]string{"--live means nothing"}, "snapshot", "create", "--internal", "--live", "vm1", "i1")
	e.fails([]string{"--quiesce needs a running VM"}, "snapshot", "create", "--internal", "--quiesce", "vm1", "i1")
	e.ok("snapshot", "create", "--internal", "vm1", "i1")
	for _, f := range []string{vda, vdb} {
		wantTag(t, f, "i1", true)
	}
	if e.active("vm1", "vda") != vda || e.show("vm1").Current != "i1" {
		t.Fatalf("after the create: %+v", e.show("vm1"))
	}
	wantKindJSON(t, e.ok("snapshot", "info", "--output=json", "vm1", "i1"), true, false)
	e.fails([]string{"already has a snapshot i1"}, "snapshot", "create", "--internal", "vm1", "i1")
	e.q.Img("snapshot", "-c", "tagged", vdb)
	e.fails([]string{"disk vdb", "already holds an internal snapshot tagged"}, "snapshot", "create", "--internal", "vm1", "tagged")
	e.q.Img("snapshot", "-d", "tagged", vdb)

	e.ok("snapshot", "revert", "vm1", "i1") // nothing changed since
	e.write("vm1", 3)
	e.fails([]string{"holds changes no snapshot keeps", "--force"}, "snapshot", "revert", "vm1", "i1")
	e.ok("snapshot", "create", "--internal", "vm1", "i2")
	e.ok("snapshot", "revert", "vm1", "i1") // the state was i2's
	e.ok("snapshot", "revert", "vm1", "i2")

	// Mixed: an external snapshot over i2.
	e.ok("snapshot", "create", "vm1", "e1")
	e.fails([]string{"internal snapshot i2", "no longer the active image"}, "snapshot", "revert", "--force", "vm1", "i2")
	e.fails([]string{"by pull", "holds internal snapshots (i1, i2)"}, "snapshot", "delete", "--merge=pull", "vm1", "e1")
	e.write("vm1", 4)
	out := e.ok("snapshot", "delete", "vm1", "e1")
	if !strings.Contains(out, "commit") {
		t.Fatalf("e1 not deleted by commit:\n%s", out)
	}
	e.ok("snapshot", "revert", "--force", "vm1", "i1")
	e.ok("snapshot", "delete", "vm1", "i1")
	e.ok("snapshot", "delete", "vm1", "i2")
	for _, f := range []string{vda, vdb} {
		wantTag(t, f, "i1", false)
		wantTag(t, f, "i2", false)
	}
	if s := e.show("vm1"); s.Current != "" || s.Disks[0].Active != vda {
		t.Fatalf("after the deletes: %+v", s)
	}
}
