package qmp

import (
	"path/filepath"
	"testing"
	"time"
)

// TestSnapshots takes an external snapshot with a transaction of
// blockdev-snapshot-sync, then another with blockdev-add and
// blockdev-snapshot, and checks the live chain and the files.
func TestSnapshots(t *testing.T) {
	for _, kind := range []string{kindDrive, kindQSD} {
		t.Run(kind, func(t *testing.T) {
			ctx := testCtx(t, 20*time.Second)
			c := buildChain(t)
			tg := startTarget(t, kind, c)
			s1 := filepath.Join(c.dir, "s1.qcow2")
			s2 := filepath.Join(c.dir, "s2.qcow2")

			var action TransactionAction
			if kind == kindDrive {
				action = TransactionAction{Type: "blockdev-snapshot-sync", Data: BlockdevSnapshotSync{
					Device: tg.disk, SnapshotFile: s1, SnapshotNodeName: NodeName("overlay", "s1"),
					Format: "qcow2", Mode: ModeAbsolutePaths}}
			} else {
				// On a root node that nothing uses, the overlay that
				// blockdev-snapshot-sync makes has no parent to hold it and
				// is dropped at once; an overlay added with blockdev-add is
				// held by the monitor.
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", c.top, "-F", "qcow2", s1)
				if err := tg.conn.BlockdevAdd(ctx, map[string]any{
					"driver": "qcow2", "node-name": NodeName("overlay", "s1"), "backing": nil,
					"file": map[string]any{"driver": "file", "filename": s1},
				}); err != nil {
					t.Fatal(err)
				}
				action = TransactionAction{Type: "blockdev-snapshot", Data: BlockdevSnapshot{
					Node: tg.disk, Overlay: NodeName("overlay", "s1")}}
			}
			err := tg.conn.Transaction(ctx, []TransactionAction{action},
				&TransactionProperties{CompletionMode: "individual"})
			if err != nil {
				t.Fatal(err)
			}

			// The overlay's header names its backing, as qchain writes
			// overlays; without it QEMU reports the node's filename as
			// "json:{...}" since its backing differs from the header's.
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", s1, "-F", "qcow2", s2)
			if err := tg.conn.BlockdevAdd(ctx, map[string]any{
				"driver": "qcow2", "node-name": "s2", "backing": nil,
				"file": map[string]any{"driver": "file", "filename": s2},
			}); err != nil {
				t.Fatal(err)
			}
			if err := tg.conn.BlockdevSnapshot(ctx, BlockdevSnapshot{Node: NodeName("overlay", "s1"), Overlay: "s2"}); err != nil {
				t.Fatal(err)
			}

			// A node that nothing uses can be deleted again.
			if err := tg.conn.BlockdevAdd(ctx, map[string]any{
				"driver": "file", "node-name": "spare", "filename": c.expected, "read-only": true,
			}); err != nil {
				t.Fatal(err)
			}
			if err := tg.conn.BlockdevDel(ctx, "spare"); err != nil {
				t.Fatal(err)
			}

			disks, err := DiskChains(ctx, tg.conn)
			if err != nil {
				t.Fatal(err)
			}
			if len(disks) != 1 {
				t.Fatalf("disks %+v, want one", disks)
			}
			want := []string{s2, s1, c.top, c.mid, c.base}
			if got := chainFilenames(disks[0]); len(got) != len(want) || got[0] != s2 || got[1] != s1 {
				t.Fatalf("live chain %q, want %q", got, want)
			}
			if disks[0].NodeName != "s2" || disks[0].Chain[1].NodeName != NodeName("overlay", "s1") {
				t.Fatalf("node names %+v", disks[0].Chain)
			}
			tg.quit()
			assertChain(t, s2, want...)
			assertSameContent(t, s2, c.expected)
		})
	}
}
