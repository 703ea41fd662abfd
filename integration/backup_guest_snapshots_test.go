package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures/guest"
)

// TestBackupGuestSnapshots backs up a real guest's disk across live
// snapshot operations while the guest writes acknowledged records (issue
// 11): a snapshot create, a delete by active commit, a delete by pull and
// a checkpoint with memory each come before an incremental point, which must be incremental and
// hold every record acknowledged before its backup began, intact and in
// order, as must its restore.
func TestBackupGuestSnapshots(t *testing.T) {
	f := guest.ForTest(t)
	e := &bkEnv{scEnv: newSCEnv(t), vm: "vm1", expect: map[int64]map[string]string{}}
	e.dir = filepath.Join(e.root, "bk")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	disk := filepath.Join(e.img, "vm1-vda.qcow2")
	if err := guest.NewImage(ctx, disk, 64, ""); err != nil {
		t.Fatal(err)
	}
	const run = "bksnap"
	g, err := guest.Start(ctx, guest.Options{Fixture: f, Disks: []guest.Disk{{Path: disk}}, Workload: guest.Workload{Run: run, Delay: 5 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Kill()
	e.ok("vm", "define", "--qmp", g.QMPPath, "--disk", g.DiskName(0)+"="+disk, e.vm)
	if err := g.WaitAcked(ctx, 20); err != nil {
		t.Fatal(err)
	}
	type taken struct {
		point         int64
		before, after uint64
	}
	var points []taken
	steps := [][][]string{
		nil,
		{{"snapshot", "create", e.vm, "s1"}},
		{{"snapshot", "create", e.vm, "s2"}, {"snapshot", "delete", "--merge=commit", e.vm, "s2"}},
		{{"snapshot", "create", e.vm, "s3"}, {"snapshot", "delete", "--merge=pull", e.vm, "s3"}},
		{{"snapshot", "create", "--memory", e.vm, "c1"}},
	}
	for i, ops := range steps {
		for _, op := range ops {
			t.Logf("%v: %s", op, e.ok(op...))
			if err := g.WaitAcked(ctx, g.Acked()+100); err != nil {
				t.Fatal(err)
			}
		}
		before := g.Acked()
		out := e.ok("backup", "create", "--to", e.dir, e.vm)
		after := g.Acked()
		l := e.list()
		p := l.Points[len(l.Points)-1]
		if !p.Live || (i > 0) != (p.Kind == "incremental") {
			t.Errorf("point %d after %v: %+v", p.Point, ops, p)
		}
		points = append(points, taken{p.Point, before, after})
		t.Logf("after %v: %s(records acknowledged: %d before, %d after)", ops, out, before, after)
		if err := g.WaitAcked(ctx, after+100); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	acked := g.Acked()
	e.ok("backup", "create", "--to", e.dir, e.vm)
	l := e.list()
	last := l.Points[len(l.Points)-1]
	if last.Live || last.Kind != "incremental" {
		t.Errorf("point after the guest stopped: %+v", last)
	}
	points = append(points, taken{last.Point, acked, acked})
	for _, p := range points {
		name := filepath.Join(e.dir, fmt.Sprintf("vda.%d.qcow2", p.point))
		onDisk, err := guest.CheckRecords(name, run, p.before)
		if err != nil {
			t.Errorf("point %d: %v", p.point, err)
			continue
		}
		// The guest writes one record at a time and acknowledges it on
		// its console after the flush: one record may be on the disk
		// before its ACK line reached the test, which an incremental of
		// a few hundred KiB can outrun.
		if onDisk > p.after+1 {
			t.Errorf("point %d holds records up to %d, more than the %d acknowledged when its backup ended (+1 in flight)", p.point, onDisk, p.after)
		}
		t.Logf("point %d: records 1..%d (acknowledged: %d before the backup, %d after)", p.point, onDisk, p.before, p.after)
		dest := filepath.Join(e.root, fmt.Sprintf("restore-%d", p.point))
		e.ok("backup", "restore", "--point", fmt.Sprint(p.point), "--to", dest, e.dir)
		if got, err := guest.CheckRecords(filepath.Join(dest, "vda.qcow2"), run, p.before); err != nil || got != onDisk {
			t.Errorf("point %d restored: records up to %d (%v), the point has %d", p.point, got, err, onDisk)
		}
	}
	e.ok("backup", "verify", e.dir)
}
