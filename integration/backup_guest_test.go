package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures/guest"
)

// guestBackups is a real guest writing acknowledged records on the one
// disk of a VM defined for qchain, and the backup points taken of it with
// the records acknowledged before and after each.
type guestBackups struct {
	*bkEnv
	t      *testing.T
	ctx    context.Context
	g      *guest.Guest
	run    string
	points []guestPoint
}

type guestPoint struct {
	point         int64
	before, after uint64
}

// startGuestBackups starts the guest with the records workload named run
// and waits for its first records.
func startGuestBackups(t *testing.T, run string) *guestBackups {
	f := guest.ForTest(t)
	e := &bkEnv{scEnv: newSCEnv(t), vm: "vm1", expect: map[int64]map[string]string{}}
	e.dir = filepath.Join(e.root, "bk")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	disk := filepath.Join(e.img, "vm1-vda.qcow2")
	if err := guest.NewImage(ctx, disk, 64, ""); err != nil {
		t.Fatal(err)
	}
	g, err := guest.Start(ctx, guest.Options{Fixture: f, Disks: []guest.Disk{{Path: disk}}, Workload: guest.Workload{Run: run, Delay: 5 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Kill)
	e.ok("vm", "define", "--qmp", g.QMPPath, "--disk", g.DiskName(0)+"="+disk, e.vm)
	b := &guestBackups{bkEnv: e, t: t, ctx: ctx, g: g, run: run}
	b.wait(20)
	return b
}

// wait waits for n more acknowledged records.
func (b *guestBackups) wait(n uint64) {
	b.t.Helper()
	if err := b.g.WaitAcked(b.ctx, b.g.Acked()+n); err != nil {
		b.t.Fatal(err)
	}
}

// take takes a live point (qchain backup create with extra flags) and
// returns it.
func (b *guestBackups) take(flags ...string) bkPoint {
	b.t.Helper()
	before := b.g.Acked()
	out := b.ok(append(append([]string{"backup", "create", "--to", b.dir}, flags...), b.vm)...)
	after := b.g.Acked()
	l := b.list()
	p := l.Points[len(l.Points)-1]
	if !p.Live {
		b.t.Fatalf("point %d was not taken live: %s", p.Point, out)
	}
	b.points = append(b.points, guestPoint{p.Point, before, after})
	b.t.Logf("%s(records acknowledged: %d before, %d after)", out, before, after)
	return p
}

// finish stops the guest, takes one more point offline (incremental), and
// checks every point and its restore: each holds every record
// acknowledged before its backup began, intact and in order, and none
// past the ones acknowledged when it ended; then backup verify.
func (b *guestBackups) finish() {
	t := b.t
	if err := b.g.Stop(b.ctx); err != nil {
		t.Fatal(err)
	}
	acked := b.g.Acked()
	b.ok("backup", "create", "--to", b.dir, b.vm)
	l := b.list()
	last := l.Points[len(l.Points)-1]
	if last.Live || last.Kind != "incremental" {
		t.Errorf("point after the guest stopped: %+v", last)
	}
	b.points = append(b.points, guestPoint{last.Point, acked, acked})
	for _, p := range b.points {
		name := filepath.Join(b.dir, fmt.Sprintf("vda.%d.qcow2", p.point))
		onDisk, err := guest.CheckRecords(name, b.run, p.before)
		if err != nil {
			t.Errorf("point %d: %v", p.point, err)
			continue
		}
		// The guest writes one record at a time and acknowledges it on
		// its console after the flush: one record may be on the disk
		// before its ACK line reached the test, which a short backup can
		// outrun.
		if onDisk > p.after+1 {
			t.Errorf("point %d holds records up to %d, more than the %d acknowledged when its backup ended (+1 in flight)", p.point, onDisk, p.after)
		}
		t.Logf("point %d: records 1..%d (acknowledged: %d before the backup, %d after)", p.point, onDisk, p.before, p.after)
		dest := filepath.Join(b.root, fmt.Sprintf("restore-%d", p.point))
		b.ok("backup", "restore", "--point", fmt.Sprint(p.point), "--to", dest, b.dir)
		if got, err := guest.CheckRecords(filepath.Join(dest, "vda.qcow2"), b.run, p.before); err != nil || got != onDisk {
			t.Errorf("point %d restored: records up to %d (%v), the point has %d", p.point, got, err, onDisk)
		}
	}
	b.ok("backup", "verify", b.dir)
}

// TestBackupGuest backs up a real guest's disk while the guest writes
// acknowledged records to it, also during the copies: every point holds
// every record acknowledged before its backup began, intact and in order,
// and the last point, taken once the guest stopped, holds all of them.
func TestBackupGuest(t *testing.T) {
	b := startGuestBackups(t, "backup")
	for i := 0; i < 3; i++ {
		var flags []string
		if i > 0 {
			// Slow, so that the guest writes during the copy.
			flags = []string{"--bandwidth", "1"}
		}
		b.take(flags...)
		b.wait(300)
	}
	b.finish()
}
