package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
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
		// The earlier points' bitmaps that snapshots left disabled in
		// the layers below go with the point offline; live they stay
		// (read-only nodes), and the run says so.
		if old := e.lowerBackupBitmaps("vda"); !live && len(old) > 0 {
			t.Errorf("%s: offline point %d left bitmaps of earlier points below the active image: %v", what, n, old)
		} else if live && len(old) > 0 && !strings.Contains(msg, "below the active images keep") {
			t.Errorf("%s: live point %d left %v below the active image and did not say so: %q", what, n, old, msg)
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

	// A revert to a snapshot taken since the last point (live, the
	// switch's transaction recorded the bitmap it moved) keeps the
	// point's bitmap: the next point is incremental and copies the writes
	// made before the snapshot and after the revert, none of the
	// discarded branch's (the restores below check the content).
	write("vda", "write -P 0x65 4M 64k")
	e.ok("snapshot", "create", e.vm, "k1")
	write("vda", "write -P 0x66 6M 64k")
	write("vdb", "write -P 0x67 2M 64k")
	if live {
		q.quit(t)
	}
	e.ok("snapshot", "revert", "--force", e.vm, "k1")
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x68 10M 64k")
	if n, msg := e.backup(); e.point(n).kind != "incremental" || e.point(n).copied["vda"] != 128<<10 || e.point(n).copied["vdb"] != 0 {
		t.Errorf("point %d after a revert to a snapshot taken since the last point: %+v, want incremental copying 128 KiB of vda (%s)", n, e.point(n), msg)
	}

	// Revert (offline) to a snapshot older than the last point: the
	// discarded branch's writes are in no bitmap that stays: full, and
	// why.
	e.ok("snapshot", "create", e.vm, "s10")
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x63 56M 64k")
	if live && len(e.lowerBackupBitmaps("vda")) == 0 {
		t.Error("live: no bitmap of an earlier point below the active image: the offline cleanup below tests nothing")
	}
	pb, _ := e.backup()
	// Offline, the point takes every earlier point's bitmap from the
	// layers below (also those a live run had to leave), and every
	// layer checks clean.
	if p := e.point(pb); p.kind != "incremental" {
		t.Errorf("offline point %d after snapshot s10: %+v, want incremental", pb, p)
	}
	for _, target := range []string{"vda", "vdb"} {
		if old := e.lowerBackupBitmaps(target); len(old) > 0 {
			t.Errorf("offline point %d left bitmaps of earlier points below the active image of %s: %v", pb, target, old)
		}
		e.checkLayers(target, false)
	}
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x64 60M 64k")
	e.ok("snapshot", "revert", "--force", e.vm, "s10")
	pr, msg := e.backup()
	if p := e.point(pr); p.kind != "full" || !strings.Contains(p.reason, fmt.Sprintf("snapshot revert to s10 since point %d", pb)) {
		t.Errorf("backup after a revert: %+v %q", p, msg)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)
}

// TestBackupOldBitmapsHeld: a layer below the active image that another
// process holds (here as the backing file of its own image) keeps the
// earlier points' bitmaps through an offline backup, which says so and is
// incremental all the same; once it is free, the next offline point
// removes them.
func TestBackupOldBitmapsHeld(t *testing.T) {
	haveStorageDaemon(t)
	e := newBKEnv(t)
	e.backup()
	e.ok("snapshot", "create", e.vm, "s1")
	below := e.lowerBackupBitmaps("vda")
	if len(below) != 1 {
		t.Fatalf("after a snapshot: bitmaps below the active image of vda %v, want the first point's", below)
	}
	base := filepath.Join(filepath.Dir(e.active(e.vm, "vda")), strings.Split(below[0], ":")[0])
	other := filepath.Join(e.root, "other.qcow2")
	e.q.Img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", other)
	ctx, cancel := context.WithTimeout(context.Background(), blockTimeout)
	defer cancel()
	d, err := qmp.StartStorageDaemon(ctx, qmp.StorageDaemonOptions{Blockdevs: []any{map[string]any{
		"driver": "qcow2", "node-name": "other",
		"file": map[string]any{"driver": "file", "filename": other}}}})
	if err != nil {
		t.Fatal(err)
	}
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x71 8M 64k")
	n, msg := e.backup()
	if p := e.point(n); p.kind != "incremental" || p.copied["vda"] != 64<<10 {
		t.Errorf("point %d with a held layer: %+v, want incremental copying 64 KiB of vda", n, p)
	}
	if !strings.Contains(msg, "1 layer below the active images keeps disabled bitmaps of earlier points (another process has it open") {
		t.Errorf("point %d kept bitmaps below vda's active image without saying why: %q", n, msg)
	}
	if got := e.lowerBackupBitmaps("vda"); len(got) != 1 {
		t.Errorf("with the layer held: bitmaps below vda %v, want the first point's, untouched", got)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x72 9M 64k")
	n, msg = e.backup()
	if p := e.point(n); p.kind != "incremental" || p.copied["vda"] != 64<<10 {
		t.Errorf("point %d: %+v, want incremental copying 64 KiB of vda", n, p)
	}
	if got := e.lowerBackupBitmaps("vda"); len(got) > 0 || strings.Contains(msg, "keep disabled") {
		t.Errorf("with the layer free: bitmaps below vda %v (%q), want none", got, msg)
	}
	e.checkLayers("vda", false)
	e.restoreAll()
	e.ok("backup", "verify", e.dir)
}

// lowerBackupBitmaps returns the backup bitmaps (file:name) that the
// layers below a disk's active image hold, read natively.
func (e *bkEnv) lowerBackupBitmaps(target string) []string {
	e.t.Helper()
	c, err := qcow2.OpenChain(e.active(e.vm, target), qcow2.ChainOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	var out []string
	for _, l := range c.Layers[1:] {
		f, ok := l.(*qcow2.File)
		if !ok {
			continue
		}
		bms, err := f.Bitmaps()
		if err != nil {
			e.t.Fatal(err)
		}
		for _, b := range bms {
			if strings.HasPrefix(b.Name, "qchain-backup-") {
				out = append(out, filepath.Base(l.Filename())+":"+b.Name)
			}
		}
	}
	return out
}

// checkLayers runs qemu-img check on every layer of a disk's chain: no
// corruption, and no leaked cluster unless leaks is set.
func (e *bkEnv) checkLayers(target string, leaks bool) {
	e.t.Helper()
	c, err := qcow2.OpenChain(e.active(e.vm, target), qcow2.ChainOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	var files []string
	for _, l := range c.Layers {
		if l.Format() == "qcow2" {
			files = append(files, l.Filename())
		}
	}
	c.Close()
	for _, f := range files {
		out, err := exec.Command("qemu-img", "check", f).CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !(leaks && errors.As(err, &exit) && exit.ExitCode() == 3) {
			e.t.Errorf("qemu-img check %s: %v\n%s", f, err, out)
		}
	}
}
