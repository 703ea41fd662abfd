package integration

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures/guest"
)

// TestBackupGuestSnapshots backs up a real guest's disk across live
// snapshot operations while the guest writes acknowledged records (issue
// 11): a snapshot create, a delete by active commit, a delete by pull and
// a checkpoint with memory each come before an incremental point, which
// must be incremental and hold every record acknowledged before its
// backup began, intact and in order, as must its restore.
func TestBackupGuestSnapshots(t *testing.T) {
	b := startGuestBackups(t, "bksnap")
	steps := [][][]string{
		nil,
		{{"snapshot", "create", b.vm, "s1"}},
		{{"snapshot", "create", b.vm, "s2"}, {"snapshot", "delete", "--merge=commit", b.vm, "s2"}},
		{{"snapshot", "create", b.vm, "s3"}, {"snapshot", "delete", "--merge=pull", b.vm, "s3"}},
		{{"snapshot", "create", "--memory", b.vm, "c1"}},
	}
	for i, ops := range steps {
		for _, op := range ops {
			t.Logf("%v: %s", op, b.ok(op...))
			b.wait(100)
		}
		if p := b.take(); (i > 0) != (p.Kind == "incremental") {
			t.Errorf("point %d after %v: %+v", p.Point, ops, p)
		}
		b.wait(100)
	}
	b.finish()
}

// TestBackupGuestCheckpointRevert: a real guest writes records; a live
// point, a checkpoint with memory, more records (the branch the revert
// discards), the revert (qchain starts the guest again from the
// checkpoint), more records, a live point. That point is incremental (the
// revert kept the first point's bitmap, which recorded the checkpoint's
// disk until its instant), and it and its restore hold every record
// acknowledged before it began, none missing from between the first point
// and the checkpoint, and none past those acknowledged when it ended.
func TestBackupGuestCheckpointRevert(t *testing.T) {
	g := defineGuestVM(t, "bkck", "bkck", 10*time.Millisecond)
	g.ok("vm", "start", g.name)
	g.waitAck(0, 20)
	dir := filepath.Join(g.root, "bk")
	g.ok("backup", "create", "--to", dir, g.name)
	g.waitAck(0, g.waitAck(0, 1).LastAck()+20)
	last1, _ := g.checkpoint("c1")
	g.waitAck(0, last1+40)
	off := g.consoleSize()
	g.ok("snapshot", "revert", "--force", g.name, "c1")
	acks := g.checkResumed(off, last1, 20)
	before := acks[len(acks)-1]
	out := g.ok("backup", "create", "--to", dir, g.name)
	c, err := guest.ReadConsoleLog(g.console, g.run, off)
	if err != nil {
		t.Fatal(err)
	}
	after := c.LastAck()
	var l bkList
	if err := json.Unmarshal([]byte(g.ok("backup", "list", "--output=json", dir)), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Points) != 2 || l.Points[1].Kind != "incremental" || !l.Points[1].Live {
		t.Fatalf("points %+v after the revert, want the second live and incremental (%s)", l.Points, out)
	}
	dest := filepath.Join(g.root, "restore")
	g.ok("backup", "restore", "--point", "2", "--to", dest, dir)
	for _, img := range []string{filepath.Join(dir, "vda.2.qcow2"), filepath.Join(dest, "vda.qcow2")} {
		onDisk, err := guest.CheckRecords(img, g.run, before)
		if err != nil {
			t.Fatalf("%s: %v (checkpoint at record %d, %d acknowledged before the point, %d after)", filepath.Base(img), err, last1, before, after)
		}
		if onDisk > after+1 {
			t.Errorf("%s holds records up to %d, more than the %d acknowledged when the point ended (+1 in flight)", filepath.Base(img), onDisk, after)
		}
		t.Logf("%s: records 1..%d (checkpoint at %d; acknowledged %d before the point, %d after)", filepath.Base(img), onDisk, last1, before, after)
	}
	g.ok("vm", "stop", "--force", g.name)
	g.ok("backup", "verify", dir)
}
