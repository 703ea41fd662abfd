package qmp

import (
	"context"
	"slices"
	"testing"
	"time"
)

// checkTops checks DiskTops against the full chains: each backend it
// lists has the top layer DiskChains gives it. It returns DiskTops' ok.
func checkTops(t testing.TB, ctx context.Context, conn *Conn) bool {
	t.Helper()
	disks, err := DiskChains(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	tops, ok, err := DiskTops(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		blocks, err := conn.QueryBlock(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(blocks, func(b BlockInfo) bool { return b.Inserted != nil && filterDrivers[b.Inserted.Driver] }) {
			t.Fatalf("DiskTops says a filter is on a top; query-block: %+v", blocks)
		}
		return false
	}
	for _, top := range tops {
		i := slices.IndexFunc(disks, func(d Disk) bool { return d.Device == top.Device && d.QDev == top.QDev })
		if i < 0 {
			t.Fatalf("DiskTops lists %+v, DiskChains does not: %+v", top, disks)
		}
		if d := disks[i]; d.NodeName != top.NodeName || len(top.Chain) != 1 || d.Chain[0] != top.Chain[0] {
			t.Fatalf("DiskTops %+v, DiskChains %+v", top, d)
		}
	}
	return true
}

// TestDiskTops reads a -drive disk's top with DiskTops as DiskChains
// does, also while an active commit's mirror_top filter sits on it:
// query-block skips a job's implicit filter, as DiskChains skips filters.
func TestDiskTops(t *testing.T) {
	ctx := testCtx(t, 20*time.Second)
	c := buildChain(t)
	tg := startTarget(t, kindDrive, c)
	if !checkTops(t, ctx, tg.conn) {
		t.Fatal("DiskTops: not ok on a plain -drive disk")
	}
	tops, _, _ := DiskTops(ctx, tg.conn)
	if len(tops) != 1 || tops[0].Device != tg.disk {
		t.Fatalf("DiskTops: %+v, want disk %s", tops, tg.disk)
	}
	job, err := StartJob(ctx, tg.conn, BlockCommit{JobID: "commit", Device: tg.disk, Speed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !checkTops(t, ctx, tg.conn) {
		t.Fatal("DiskTops: not ok while an active commit runs")
	}
	job.Abort()
	if _, err := job.Wait(ctx, WaitOptions{}); err == nil {
		t.Fatal("the aborted commit succeeded")
	}
	if !checkTops(t, ctx, tg.conn) {
		t.Fatal("DiskTops: not ok after the commit ended")
	}
}
