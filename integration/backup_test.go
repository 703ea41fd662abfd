package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// bkList is `backup list --output=json`.
type bkList struct {
	VM     string    `json:"vm"`
	Points []bkPoint `json:"points"`
}

type bkPoint struct {
	Point  int64  `json:"point"`
	Kind   string `json:"kind"`
	Live   bool   `json:"live"`
	Reason string `json:"reason"`
	Disks  []struct {
		Target string `json:"target"`
		File   string `json:"file"`
		Bytes  int64  `json:"bytes"`
		Copied int64  `json:"copied"`
		SHA256 string `json:"sha256"`
	} `json:"disks"`
}

// bkEnv is a VM of the snapshot manager, a backup folder and the content
// every disk had when each point was taken.
type bkEnv struct {
	*scEnv
	vm     string
	dir    string
	expect map[int64]map[string]string // point -> target -> sha256 of the raw guest content
}

func newBKEnv(t *testing.T, extra ...string) *bkEnv {
	return newBKEnvSized(t, 64, extra...)
}

// newBKEnvSized is newBKEnv with disks of mib and mib/2 MiB (mib at
// least 34).
func newBKEnvSized(t *testing.T, mib int, extra ...string) *bkEnv {
	e := &bkEnv{scEnv: newSCEnv(t), vm: "vm1", expect: map[int64]map[string]string{}}
	e.dir = filepath.Join(e.root, "bk")
	e.q.Create("vm1-vda.qcow2", fmt.Sprintf("%dM", mib), "cluster_size=65536")
	e.q.IO("qcow2", "vm1-vda.qcow2", "write -q -P 0x11 0 4M", "write -q -P 0x12 32M 1M")
	e.q.Create("vm1-vdb.qcow2", fmt.Sprintf("%dM", mib/2))
	e.q.IO("qcow2", "vm1-vdb.qcow2", "write -q -P 0x21 1M 1M")
	e.ok(append(append([]string{"vm", "define", "--disk", "vda=vm1-vda.qcow2", "--disk", "vdb=vm1-vdb.qcow2"}, extra...), "vm1")...)
	return e
}

// content returns the sha256 of a disk's guest content now (qemu-img
// convert -U: also while a qemu runs it, after a flush).
func (e *bkEnv) content(target string) string {
	e.t.Helper()
	raw := filepath.Join(e.root, "content.raw")
	defer os.Remove(raw)
	e.q.Img("convert", "-U", "-O", "raw", e.active(e.vm, target), raw)
	return fileSum(e.t, raw)
}

func fileSum(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// backup runs backup create and records the disks' content for the new
// point (the VM is offline, or quiet, while it runs).
func (e *bkEnv) backup(args ...string) (point int64, stderr string) {
	e.t.Helper()
	res := e.run(append(append([]string{"backup", "create", "--to", e.dir}, args...), e.vm)...)
	if res.Err != nil || res.ExitCode != 0 {
		e.t.Fatalf("%s: exit %d, %v\nstdout: %s\nstderr: %s", res.Cmd, res.ExitCode, res.Err, res.Stdout, res.Stderr)
	}
	l := e.list()
	point = l.Points[len(l.Points)-1].Point
	e.expect[point] = map[string]string{"vda": e.content("vda"), "vdb": e.content("vdb")}
	e.t.Logf("%s: %s%s", res.Cmd, res.Stdout, res.Stderr)
	return point, string(res.Stderr)
}

func (e *bkEnv) list() bkList {
	e.t.Helper()
	var l bkList
	out := e.ok("backup", "list", "--output=json", e.dir)
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		e.t.Fatalf("backup list --output=json: %v\n%s", err, out)
	}
	return l
}

func (e *bkEnv) point(n int64) (p struct {
	kind, reason  string
	live          bool
	bytes, copied map[string]int64
}) {
	e.t.Helper()
	for _, q := range e.list().Points {
		if q.Point == n {
			p.kind, p.reason, p.live = q.Kind, q.Reason, q.Live
			p.bytes, p.copied = map[string]int64{}, map[string]int64{}
			for _, d := range q.Disks {
				p.bytes[d.Target], p.copied[d.Target] = d.Bytes, d.Copied
			}
			return p
		}
	}
	e.t.Fatalf("no point %d", n)
	return p
}

// restoreAll restores every listed point as raw and qcow2 and compares
// each disk with the content recorded when the point was taken.
func (e *bkEnv) restoreAll() {
	e.t.Helper()
	for _, p := range e.list().Points {
		point := p.Point
		if e.expect[point] == nil {
			e.t.Fatalf("point %d: no content recorded for it", point)
		}
		for _, format := range []string{"raw", "qcow2"} {
			dest := filepath.Join(e.root, fmt.Sprintf("restore-%d-%s", point, format))
			e.ok("backup", "restore", "--point", fmt.Sprint(point), "--format", format, "--to", dest, e.dir)
			for _, target := range []string{"vda", "vdb"} {
				img := filepath.Join(dest, target+"."+format)
				raw := img
				if format == "qcow2" {
					if info := e.q.Img("info", img); bytes.Contains(info, []byte("backing file")) {
						e.t.Errorf("restored %s has a backing file:\n%s", img, info)
					}
					raw = img + ".raw"
					e.q.Img("convert", "-O", "raw", img, raw)
				}
				if got, want := fileSum(e.t, raw), e.expect[point][target]; got != want {
					e.t.Errorf("point %d disk %s restored as %s: content %s, want %s (as at backup time)", point, target, format, got[:12], want[:12])
				}
			}
			os.RemoveAll(dest)
		}
	}
}

// TestBackupOffline takes full and incremental points of a VM that does
// not run, across a snapshot, restores every point, verifies, merges and
// feeds the commands bad folders.
func TestBackupOffline(t *testing.T) {
	e := newBKEnv(t)
	p1, msg := e.backup()
	if p := e.point(p1); p1 != 1 || p.kind != "full" || !strings.Contains(msg, "first point") {
		t.Fatalf("first backup: point %d %s (%s)", p1, p.kind, msg)
	}
	// A 64 KiB change makes a small incremental.
	e.q.IO("qcow2", e.active("vm1", "vda"), "write -q -P 0x13 8M 64k")
	p2, _ := e.backup()
	p := e.point(p2)
	if p.kind != "incremental" || p.copied["vda"] != 64<<10 || p.copied["vdb"] != 0 || p.bytes["vda"] > 1<<20 {
		t.Errorf("incremental after a 64 KiB write: %+v", p)
	}
	t.Logf("full: vda %d bytes; incremental after 64 KiB: vda %d bytes (copied %d), vdb %d bytes", e.point(p1).bytes["vda"], p.bytes["vda"], p.copied["vda"], p.bytes["vdb"])
	e.q.IO("qcow2", e.active("vm1", "vdb"), "write -q -P 0x22 0 128k", "write -q -z 1M 64k")
	e.q.IO("qcow2", e.active("vm1", "vda"), "write -q -P 0x14 8M 4k")
	p3, _ := e.backup()
	if p := e.point(p3); p.kind != "incremental" || p.copied["vdb"] != 192<<10 || p.copied["vda"] != 64<<10 {
		t.Errorf("point 3: %+v", p)
	}
	p4, msg := e.backup("--full")
	if p := e.point(p4); p.kind != "full" || !strings.Contains(msg, "--full") {
		t.Errorf("backup --full: %+v %s", p, msg)
	}
	// A snapshot moves the bitmap to the new active image: incremental.
	e.ok("snapshot", "create", "vm1", "s1")
	e.q.IO("qcow2", e.active("vm1", "vda"), "write -q -P 0x15 16M 64k")
	p5, msg := e.backup()
	if p := e.point(p5); p.kind != "incremental" || p.copied["vda"] != 64<<10 {
		t.Errorf("backup after a snapshot: %+v %q", p, msg)
	}
	e.q.IO("qcow2", e.active("vm1", "vda"), "write -q -P 0x16 20M 64k")
	p6, _ := e.backup()
	if p := e.point(p6); p.kind != "incremental" || p.copied["vda"] != 64<<10 {
		t.Errorf("incremental on the new active image: %+v", p)
	}
	e.q.IO("qcow2", e.active("vm1", "vda"), "write -q -P 0x17 24M 64k")
	p7, _ := e.backup()
	e.restoreAll()
	e.ok("backup", "verify", e.dir)

	// An interrupted run's leftovers are removed, and said so; a lost
	// bitmap makes the next point full.
	os.WriteFile(filepath.Join(e.dir, ".vda.8.qcow2.tmp"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(e.dir, "vdb.8.qcow2"), []byte("x"), 0o600)
	e.q.IO("qcow2", e.active("vm1", "vdb"), "write -q -P 0x23 2M 64k")
	p8, msg := e.backup()
	if p := e.point(p8); p.kind != "incremental" || !strings.Contains(msg, "interrupted run left .vda.8.qcow2.tmp, vdb.8.qcow2: removed") {
		t.Errorf("backup after an interrupted one: %+v %q", p, msg)
	}
	var id string
	for _, b := range strings.Fields(string(e.q.Img("info", e.active("vm1", "vdb")))) {
		if strings.HasPrefix(b, "qchain-backup-") {
			id = b
		}
	}
	e.q.Img("bitmap", "--remove", e.active("vm1", "vdb"), id)
	p9, msg := e.backup()
	if p := e.point(p9); p.kind != "full" || !strings.Contains(msg, "disk vdb") {
		t.Errorf("backup after the bitmap was lost: %+v %q", p, msg)
	}

	// verify catches a flipped byte in a data cluster (the last cluster
	// of a small incremental is its data).
	f := filepath.Join(e.dir, fmt.Sprintf("vda.%d.qcow2", p2))
	orig, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(orig)
	bad[len(bad)-100] ^= 0xff
	os.WriteFile(f, bad, 0o644)
	res := e.run("backup", "verify", e.dir)
	if res.ExitCode != 1 || !strings.Contains(string(res.Stdout), fmt.Sprintf("point %d disk vda: vda.%d.qcow2: sha256", p2, p2)) {
		t.Errorf("verify of a flipped byte: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	// restore sums the files while it copies: it fails, and leaves no
	// image in DEST (a DEST it made is removed, one that was there is
	// left empty), in both formats.
	for _, format := range []string{"qcow2", "raw"} {
		made := filepath.Join(e.root, "r-"+format)
		e.fails([]string{fmt.Sprintf("vda.%d.qcow2", p2), "sha256", "output is removed"}, "backup", "restore", "--format", format, "--point", fmt.Sprint(p3), "--to", made, e.dir)
		if _, err := os.Lstat(made); err == nil {
			t.Errorf("restore --format %s of a point with a flipped byte left %s", format, made)
		}
		there := filepath.Join(e.root, "there-"+format)
		os.Mkdir(there, 0o700)
		e.fails([]string{fmt.Sprintf("vda.%d.qcow2", p2), "sha256"}, "backup", "restore", "--format", format, "--point", fmt.Sprint(p3), "--to", there, e.dir)
		if ents, err := os.ReadDir(there); err != nil || len(ents) != 0 {
			t.Errorf("restore --format %s of a point with a flipped byte into an existing folder left %v (%v)", format, ents, err)
		}
	}
	os.WriteFile(f, orig, 0o644)

	// merge keeps the 4 newest points, with their numbers and content.
	out := e.ok("backup", "merge", "--keep", "4", e.dir)
	t.Logf("merge: %s", out)
	var nums []int64
	for _, q := range e.list().Points {
		nums = append(nums, q.Point)
	}
	if fmt.Sprint(nums) != fmt.Sprint([]int64{p6, p7, p8, p9}) || e.point(p6).kind != "full" {
		t.Errorf("after merge --keep 4: points %v (point %d %s)", nums, p6, e.point(p6).kind)
	}
	if ents, _ := filepath.Glob(filepath.Join(e.dir, "*.qcow2")); len(ents) != 8 {
		t.Errorf("after merge: files %v", ents)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)

	// A merge stopped after it recorded itself is finished by the next
	// merge, and blocks new points until then.
	idx := filepath.Join(e.dir, "backup.json")
	good, _ := os.ReadFile(idx)
	os.WriteFile(idx, bytes.Replace(good, []byte(`"points": [`), []byte(fmt.Sprintf(`"merging": %d, "points": [`, p8)), 1), 0o600)
	e.fails([]string{fmt.Sprintf("a merge into point %d was interrupted", p8), "backup merge"}, "backup", "create", "--to", e.dir, "vm1")
	if res := e.run("backup", "verify", e.dir); res.ExitCode != 1 {
		t.Errorf("verify during a merge: exit %d\n%s", res.ExitCode, res.Stdout)
	}
	out = e.ok("backup", "merge", "--keep", "4", e.dir)
	nums = nil
	for _, q := range e.list().Points {
		nums = append(nums, q.Point)
	}
	if fmt.Sprint(nums) != fmt.Sprint([]int64{p8, p9}) || e.point(p8).kind != "full" || !strings.Contains(out, fmt.Sprintf("merged into point %d", p8)) {
		t.Errorf("finishing a merge into %d: points %v, %s", p8, nums, out)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)

	// Bad input: one-line errors, nothing changed.
	e.q.Create("vm2-vda.qcow2", "1M")
	e.ok("vm", "define", "--disk", "vda=vm2-vda.qcow2", "vm2")
	e.ok("backup", "create", "--to", filepath.Join(e.root, "bk2"), "vm2")
	e.fails([]string{e.dir, "holds backups of VM vm1, not of VM vm2"}, "backup", "create", "--to", e.dir, "vm2")
	e.fails([]string{"no point 1 ", "points: 8, 9"}, "backup", "restore", "--point", "1", "--to", filepath.Join(e.root, "r"), e.dir)
	e.fails([]string{"not a backup folder"}, "backup", "list", e.img)
	os.Rename(filepath.Join(e.dir, "vdb.8.qcow2"), filepath.Join(e.root, "vdb.8.qcow2"))
	e.fails([]string{"point 8 disk vdb", "missing"}, "backup", "restore", "--point", "8", "--to", filepath.Join(e.root, "r"), e.dir)
	res = e.run("backup", "verify", e.dir)
	if res.ExitCode != 1 || !strings.Contains(string(res.Stdout), "point 8 disk vdb: vdb.8.qcow2: missing") {
		t.Errorf("verify of a missing file: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	os.Rename(filepath.Join(e.root, "vdb.8.qcow2"), filepath.Join(e.dir, "vdb.8.qcow2"))
	good, _ = os.ReadFile(idx)
	os.WriteFile(idx, bytes.Replace(good, []byte(`"vdb.8.qcow2"`), []byte(`"../vm1-vdb.qcow2"`), 1), 0o600)
	e.fails([]string{"corrupt backup.json", "point 8 disk vdb", "../vm1-vdb.qcow2"}, "backup", "list", e.dir)
	os.WriteFile(idx, good, 0o600)
	e.ok("backup", "verify", e.dir)
}
