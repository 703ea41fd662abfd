package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupSnapshots takes incrementals across snapshot operations,
// offline and live (issue 11): a snapshot create moves the backup bitmaps
// to the new active image, a delete by active commit and by pull merges
// them into the layer that stays, each next point is incremental and
// holds exactly the writes since the previous one (a live pull adds what
// the stream copied), every point restores to the content at its start,
// and after a revert the next point is full and says why.
func TestBackupSnapshots(t *testing.T) {
	for _, live := range []bool{false, true} {
		name := "offline"
		if live {
			name = "live"
		}
		t.Run(name, func(t *testing.T) { testBackupSnapshots(t, live) })
	}
}

func testBackupSnapshots(t *testing.T, live bool) {
	var e *bkEnv
	var q *bkQemu
	if live {
		sockDir, err := os.MkdirTemp("", "qbs-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sockDir) })
		sock := filepath.Join(sockDir, "qmp")
		e = newBKEnv(t, "--qmp", sock)
		q = startBKQemu(t, e, sock)
	} else {
		e = newBKEnv(t)
	}
	// A live job changes qemu's cached metadata of the active image:
	// flushed before anything reads it from outside.
	del := func(args ...string) string {
		t.Helper()
		out := e.ok(append([]string{"snapshot", "delete"}, args...)...)
		if live {
			q.io(t, "vda")
			q.io(t, "vdb")
		}
		return out
	}
	write := func(target, what string) {
		t.Helper()
		if live {
			q.io(t, target, what)
		} else {
			e.q.IO("qcow2", e.active(e.vm, target), strings.Replace(what, "write ", "write -q ", 1))
		}
	}
	incremental := func(what string, vda, vdb int64, vdaMax int64) int64 {
		t.Helper()
		n, msg := e.backup()
		p := e.point(n)
		if p.kind != "incremental" || p.live != live || p.copied["vda"] < vda || p.copied["vda"] > vdaMax || p.copied["vdb"] != vdb {
			t.Errorf("%s: point %d %+v, want incremental copying vda %d..%d, vdb %d bytes (%s)", what, n, p, vda, vdaMax, vdb, msg)
		}
		t.Logf("%s: point %d copied vda %d vdb %d bytes (writes since the last point: vda %d, vdb %d)", what, n, p.copied["vda"], p.copied["vdb"], vda, vdb)
		return n
	}

	if p1, _ := e.backup(); e.point(p1).kind != "full" {
		t.Fatalf("first point: %+v", e.point(p1))
	}
	// Create: writes before and after it are in the next point.
	write("vda", "write -P 0x51 8M 64k")
	e.ok("snapshot", "create", e.vm, "s1")
	write("vda", "write -P 0x52 12M 64k")
	write("vdb", "write -P 0x53 4M 64k")
	incremental("after snapshot s1", 128<<10, 64<<10, 128<<10)
	// Two layers since the point: their union.
	write("vda", "write -P 0x54 16M 64k")
	e.ok("snapshot", "create", e.vm, "s2")
	write("vda", "write -P 0x55 20M 64k")
	e.ok("snapshot", "create", e.vm, "s3")
	write("vda", "write -P 0x56 22M 64k")
	incremental("after snapshots s2 and s3", 192<<10, 0, 192<<10)

	// Delete by active commit: s3's file receives the active image.
	write("vda", "write -P 0x57 24M 64k")
	e.ok("snapshot", "create", e.vm, "s4")
	write("vda", "write -P 0x58 28M 64k")
	out := del("--merge=commit", e.vm, "s4")
	if !strings.Contains(out, "commit") {
		t.Fatalf("delete --merge=commit: %s", out)
	}
	write("vda", "write -P 0x59 30M 64k")
	incremental("after an active commit", 192<<10, 0, 192<<10)

	// Delete by pull: the active image receives s5's file. Live, the
	// stream's copies mark the active image's bitmap (at most what the
	// pulled layers hold, 320 KiB).
	write("vda", "write -P 0x5a 32M 64k")
	e.ok("snapshot", "create", e.vm, "s5")
	write("vda", "write -P 0x5b 36M 64k")
	out = del("--merge=pull", e.vm, "s5")
	if !strings.Contains(out, "pull into") {
		t.Fatalf("delete --merge=pull: %s", out)
	}
	write("vdb", "write -P 0x5c 8M 64k")
	max := int64(128 << 10)
	if live {
		max += 512 << 10
	}
	incremental("after a pull", 128<<10, 64<<10, max)

	// Delete by a commit that is not active (s6's file receives the
	// layer above it, s7's file) and by a pull into a layer that is not
	// active (s9's file receives s8's): the removed layer's bitmaps go
	// into the active image live, into the surviving layer offline.
	write("vda", "write -P 0x5d 40M 64k")
	e.ok("snapshot", "create", e.vm, "s6")
	write("vda", "write -P 0x5e 42M 64k")
	e.ok("snapshot", "create", e.vm, "s7")
	write("vda", "write -P 0x5f 44M 64k")
	if out := del("--merge=commit", e.vm, "s6"); !strings.Contains(out, "commit") {
		t.Fatalf("delete --merge=commit: %s", out)
	}
	incremental("after a commit below the active image", 192<<10, 0, 192<<10)
	write("vda", "write -P 0x60 48M 64k")
	e.ok("snapshot", "create", e.vm, "s8")
	write("vda", "write -P 0x61 50M 64k")
	e.ok("snapshot", "create", e.vm, "s9")
	write("vda", "write -P 0x62 52M 64k")
	if out := del("--merge=pull", e.vm, "s8"); !strings.Contains(out, "pull into") {
		t.Fatalf("delete --merge=pull: %s", out)
	}
	incremental("after a pull below the active image", 192<<10, 0, 192<<10)
	e.restoreAll()
	e.ok("backup", "verify", e.dir)

	// Revert (offline): the discarded branch's writes are in no bitmap
	// that stays: full, and why.
	if live {
		q.quit(t)
	}
	e.ok("snapshot", "create", e.vm, "s10")
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x63 56M 64k")
	pb, _ := e.backup()
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x64 60M 64k")
	e.ok("snapshot", "revert", "--force", e.vm, "s10")
	pr, msg := e.backup()
	if p := e.point(pr); p.kind != "full" || !strings.Contains(p.reason, fmt.Sprintf("snapshot revert to s10 since point %d", pb)) {
		t.Errorf("backup after a revert: %+v %q", p, msg)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)
}
