package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
	"github.com/qchain/qchain/qcow2"
)

// The tests of qchain image-snapshot against qemu-img snapshot, on the
// same images, with the qemu-img in PATH (7.2 or 10.0): -l byte for byte
// in that release's layout and as JSON against qemu-img info; -c and -d
// read back by qemu-img and checked clean; -a compared with qemu-img -a on
// a copy (guest content, check and map output); interruptions of -a at
// every write; refusals on images a qemu holds and on bad input, each
// leaving the image's bytes and mtime as they were.

var (
	imgsnapReleaseOnce sync.Once
	imgsnapRelease     string
	imgsnapReleaseErr  error
)

// imgsnapQemuRelease returns "major.minor" of the qemu-img in PATH, which
// is what qchain's --compat takes.
func imgsnapQemuRelease(t *testing.T) string {
	t.Helper()
	imgsnapReleaseOnce.Do(func() {
		res := fixtures.Run(context.Background(), "", "qemu-img", "--version")
		m := regexp.MustCompile(`qemu-img version ([0-9]+\.[0-9]+)`).FindSubmatch(res.Stdout)
		if res.ExitCode != 0 || m == nil {
			imgsnapReleaseErr = fmt.Errorf("qemu-img --version: exit %d: %s%s", res.ExitCode, res.Stdout, res.Stderr)
			return
		}
		imgsnapRelease = string(m[1])
	})
	if imgsnapReleaseErr != nil {
		t.Fatal(imgsnapReleaseErr)
	}
	return imgsnapRelease
}

// imgsnapMust runs a tool in dir and fails the test unless it exits 0.
func imgsnapMust(t *testing.T, dir, name string, args ...string) fixtures.Result {
	t.Helper()
	r := fixtures.Run(context.Background(), dir, name, args...)
	if r.Err != nil || r.ExitCode != 0 {
		t.Fatalf("%s: exit %d %v\nstdout: %s\nstderr: %s", r.Cmd, r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	return r
}

// imgsnapCompareList compares qchain image-snapshot -l with qemu-img
// snapshot -l (byte for byte, and the exit code), and its JSON with the
// "snapshots" of qemu-img info --output=json. share adds -U to qemu-img,
// for images a qemu holds.
func imgsnapCompareList(t *testing.T, bin, dir, img string, share bool) {
	t.Helper()
	ctx := context.Background()
	u := []string{}
	if share {
		u = []string{"-U"}
	}
	ref := fixtures.Run(ctx, dir, "qemu-img", append(append([]string{"snapshot"}, u...), "-l", img)...)
	got := fixtures.Run(ctx, dir, bin, "image-snapshot", "-l", "--compat="+imgsnapQemuRelease(t), img)
	if ref.Err != nil || got.Err != nil {
		t.Fatalf("%v %v", ref.Err, got.Err)
	}
	if ref.ExitCode != got.ExitCode || !bytes.Equal(ref.Stdout, got.Stdout) {
		t.Errorf("%s: exit %d, qemu-img %d; output differs from qemu-img's:\n--- qemu-img\n%s--- qchain\n%s(stderr %s)",
			img, got.ExitCode, ref.ExitCode, ref.Stdout, got.Stdout, got.Stderr)
	}
	info := fixtures.Run(ctx, dir, "qemu-img", append(append([]string{"info"}, u...), "--output=json", img)...)
	if info.ExitCode != 0 {
		t.Fatalf("%s: %s", info.Cmd, info.Stderr)
	}
	var whole map[string]json.RawMessage
	if err := json.Unmarshal(info.Stdout, &whole); err != nil {
		t.Fatal(err)
	}
	wantJSON := []byte("[]") // qemu-img omits the key when there are none
	if s, ok := whole["snapshots"]; ok {
		wantJSON = s
	}
	gotJSON := fixtures.Run(ctx, dir, bin, "image-snapshot", "-l", "--output=json", img)
	compareJSONRun(t, fixtures.Result{Cmd: info.Cmd + " (snapshots)", Stdout: wantJSON}, gotJSON)
}

// imgsnapSavevm takes a snapshot with VM state (HMP savevm) of img in a
// qemu-system-x86_64 with no guest, as a VM that saves itself would.
func imgsnapSavevm(t *testing.T, img, name string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
		"-drive", "if=none,id=d0,format=qcow2,file="+img, "-qmp", "stdio")
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" +
		`{"execute":"human-monitor-command","arguments":{"command-line":"savevm ` + name + `"}}` + "\n" +
		`{"execute":"quit"}` + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil || bytes.Count(out, []byte(`"return"`)) < 2 {
		t.Fatalf("savevm %s: %v\n%s", name, err, out)
	}
}

// TestImageSnapshotList compares -l with qemu-img on images with no
// snapshots, with snapshots of every maker (qemu-img -c, savevm with VM
// state, qchain -c on a storage daemon), with names qemu-img cuts, repeats
// or leaves empty, and on a raw image; -l must change no file.
func TestImageSnapshotList(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	cases := map[string]func(testing.TB, string) string{}
	for _, c := range fixtures.QemuCases() {
		switch c.Name {
		case "snapshots", "extl2-64k", "compat-0.10", "refcount-bits-64", "data-file", "bitmaps",
			"lazy-refcounts-dirty", "leak-refcount1-snapshot", "empty":
			cases[c.Name] = c.Build
		}
	}
	cases["all-makers"] = func(tb testing.TB, dir string) string {
		q := fixtures.NewQemu(tb, dir)
		img := q.Create("makers.qcow2", "8M")
		q.IO("qcow2", img, "write -q -P 0x11 0 1M")
		q.Img("snapshot", "-c", "plain", img)
		q.Img("snapshot", "-c", "plain", img) // qemu-img takes a second one
		q.Img("snapshot", "-c", "", img)      // and an empty name
		q.Img("snapshot", "-c", strings.Repeat("long", 70), img)
		q.Img("snapshot", "-c", "snäp-ünïcode", img)
		imgsnapSavevm(t, img, "with-vmstate")
		imgsnapMust(t, dir, bin, "image-snapshot", "-c", "by-qchain", img)
		q.Img("snapshot", "-d", "plain", img) // the first of the two
		return img
	}
	cases["raw"] = func(tb testing.TB, dir string) string {
		return fixtures.NewQemu(tb, dir).CreateRaw("disk.raw", "1M")
	}
	for name, build := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			img := build(t, dir)
			before := mustFingerprint(t, dir)
			imgsnapCompareList(t, bin, dir, img, false)
			if d := fingerprintDiff(before, mustFingerprint(t, dir)); d != "" {
				t.Errorf("-l changed files:\n%s", d)
			}
		})
	}
}

// imgsnapSnapshotNames lists the tags qemu-img snapshot -l prints.
func imgsnapSnapshotNames(t *testing.T, dir, img string) []string {
	t.Helper()
	out := imgsnapMust(t, dir, "qemu-img", "snapshot", "-l", img).Stdout
	var names []string
	for i, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); i >= 2 && len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return names
}

// imgsnapCheckJSON returns qemu-img check --output=json of img without
// its filename, and the exit code.
func imgsnapCheckJSON(t *testing.T, dir, img string) (any, int) {
	t.Helper()
	r := fixtures.Run(context.Background(), dir, "qemu-img", "check", "--output=json", img)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	v, err := parseJSON(r.Stdout)
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", r.Cmd, err, r.Stdout, r.Stderr)
	}
	delete(v.(map[string]any), "filename")
	return v, r.ExitCode
}

// imgsnapSameAsQemu demands that two images qchain and qemu-img worked on
// from the same start have the same check and map output, except that
// qemu-img may leak clusters where qchain leaks none.
func imgsnapSameAsQemu(t *testing.T, dir, mine, theirs string) {
	t.Helper()
	c1, e1 := imgsnapCheckJSON(t, dir, mine)
	c2, e2 := imgsnapCheckJSON(t, dir, theirs)
	if e1 == 0 && e2 == 3 {
		t.Logf("qemu-img leaked %v clusters where qchain leaked none", c2.(map[string]any)["leaks"])
		delete(c2.(map[string]any), "leaks")
		e2 = 0
	}
	if e1 != e2 || !reflect.DeepEqual(c1, c2) {
		t.Errorf("qemu-img check after qchain (exit %d) and after qemu-img (exit %d) differ:\n  %s", e1, e2, strings.Join(jsonDiff(c2, c1), "\n  "))
	}
	m1 := imgsnapMust(t, dir, "qemu-img", "map", "--output=json", mine).Stdout
	m2 := imgsnapMust(t, dir, "qemu-img", "map", "--output=json", theirs).Stdout
	j1, _ := parseJSON(m1)
	j2, _ := parseJSON(m2)
	if !reflect.DeepEqual(j1, j2) {
		t.Errorf("qemu-img map after qchain and after qemu-img differ:\n  %s", strings.Join(jsonDiff(j2, j1), "\n  "))
	}
}

// imgsnapCopy copies a file, holes and all, as cp --sparse=always would.
func imgsnapCopy(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := in.ReadAt(buf, off)
		if n > 0 && !allZeroBytes(buf[:n]) {
			if _, werr := out.WriteAt(buf[:n], off); werr != nil {
				t.Fatal(werr)
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := out.Truncate(off); err != nil {
		t.Fatal(err)
	}
}

func allZeroBytes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TestImageSnapshotCreateDelete takes snapshots with qchain on an overlay,
// reads them with qemu-img, deletes them (by name: -d takes no IDs) and
// compares each delete with qemu-img's on a copy.
func TestImageSnapshotCreateDelete(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	base := q.Create("base.qcow2", "8M")
	q.IO("qcow2", base, "write -q -P 0x01 0 8M")
	img := q.Overlay("top.qcow2", "base.qcow2", "qcow2", "")
	q.IO("qcow2", img, "write -q -P 0x02 1M 2M")
	baseState := mustFingerprint(t, dir)["base.qcow2"]
	infoBefore := imgsnapMust(t, dir, "qemu-img", "info", "--output=json", img).Stdout

	mustQchain(t, bin, dir, "image-snapshot", "-c", "s1", img)
	q.IO("qcow2", img, "write -q -P 0x03 2M 2M")
	mustQchain(t, bin, dir, "image-snapshot", "-c", "s2", img)
	if names := imgsnapSnapshotNames(t, dir, img); !reflect.DeepEqual(names, []string{"s1", "s2"}) {
		t.Fatalf("qemu-img snapshot -l lists %q, want s1 and s2", names)
	}
	checkClean(t, dir, img)
	if _, code := imgsnapCheckJSON(t, dir, img); code != 0 {
		t.Errorf("check exit %d", code)
	}
	if st := mustFingerprint(t, dir)["base.qcow2"]; st != baseState {
		t.Errorf("the backing file changed")
	}
	infoAfter := imgsnapMust(t, dir, "qemu-img", "info", "--output=json", img).Stdout
	for _, key := range []string{"backing-filename", "backing-filename-format", "virtual-size"} {
		var b, a map[string]any
		json.Unmarshal(infoBefore, &b)
		json.Unmarshal(infoAfter, &a)
		if !reflect.DeepEqual(b[key], a[key]) {
			t.Errorf("%s changed: %v -> %v", key, b[key], a[key])
		}
	}
	imgsnapCompareList(t, bin, dir, img, false)

	for i, key := range []string{"s1", "s2"} {
		theirs := filepath.Join(dir, fmt.Sprintf("qemu-%d.qcow2", i))
		imgsnapCopy(t, img, theirs)
		mustQchain(t, bin, dir, "image-snapshot", "-d", key, img)
		imgsnapMust(t, dir, "qemu-img", "snapshot", "-d", key, theirs)
		checkClean(t, dir, img)
		imgsnapSameAsQemu(t, dir, img, theirs)
	}
	if names := imgsnapSnapshotNames(t, dir, img); len(names) != 0 {
		t.Errorf("snapshots left after deleting both: %q", names)
	}
}

// imgsnapApplyImage gives a case image two snapshots and a changed active
// state: qs1 (and a twin), then writes, discards and zero writes, qs2,
// more writes, and the twin deleted. It
// returns raw copies of both snapshots and of the final active state,
// made with qemu-img convert at the time.
func imgsnapApplyImage(t *testing.T, dir, img string, twin bool) (s1, s2, cur string) {
	t.Helper()
	var info struct {
		Size int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(imgsnapMust(t, dir, "qemu-img", "info", "--output=json", img).Stdout, &info); err != nil {
		t.Fatal(err)
	}
	size := info.Size
	al := func(n int64) int64 { return n &^ 511 }
	raw := func(name string) string {
		p := filepath.Join(dir, name)
		imgsnapMust(t, dir, "qemu-img", "convert", "-O", "raw", img, p)
		return p
	}
	q := fixtures.NewQemu(t, dir)
	q.Img("snapshot", "-c", "qs1", img)
	// A twin of qs1, deleted at the end: QEMU then marks the entries
	// only qs1 still uses COPIED, which a revert to qs1 must clear. Two
	// bit refcounts have no room for it.
	if twin {
		q.Img("snapshot", "-c", "twin", img)
	}
	s1 = raw("qs1.raw")
	q.IO("qcow2", img,
		fmt.Sprintf("write -q -P 0xa1 0 %d", al(size/2)),
		fmt.Sprintf("discard -q %d %d", al(size/2), al(size/8)),
		fmt.Sprintf("write -q -z %d %d", al(5*size/8), al(size/16)),
		fmt.Sprintf("write -q -P 0xa2 %d 4096", size-4096))
	q.Img("snapshot", "-c", "qs2", img)
	s2 = raw("qs2.raw")
	q.IO("qcow2", img, fmt.Sprintf("write -q -P 0xa3 %d %d", al(size/4), al(size/4)))
	if twin {
		q.Img("snapshot", "-d", "twin", img)
	}
	cur = raw("cur.raw")
	return s1, s2, cur
}

// imgsnapSameContent demands that img reads as the raw file want, through
// qemu-img convert and through qchain export.
func imgsnapSameContent(t *testing.T, bin, dir, img, want, what string) {
	t.Helper()
	got := filepath.Join(dir, "got.raw")
	os.Remove(got)
	imgsnapMust(t, dir, "qemu-img", "convert", "-O", "raw", img, got)
	if r := fixtures.Run(context.Background(), dir, "cmp", "-s", got, want); r.ExitCode != 0 {
		t.Errorf("%s: qemu-img convert of the image differs from the copy made at snapshot time", what)
	}
	os.Remove(got)
	compareExport(t, bin, dir, want, got, "", "export", "-o", got, img)
	os.Remove(got)
}

// TestImageSnapshotApply reverts images of many layouts to their
// snapshots with qchain and, on a copy, with qemu-img, and compares.
func TestImageSnapshotApply(t *testing.T) {
	bin := requireTools(t)
	for _, c := range fixtures.QemuCases() {
		switch c.Name {
		case "cluster-512", "cluster-2M", "compat-0.10-backing", "extl2-64k", "extl2-backing",
			"compressed-write-zstd", "compressed-convert-zlib", "zero-writes-backing", "discard",
			"refcount-bits-2", "refcount-bits-64", "snapshots", "random-writes", "leak-crafted":
		default:
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			dir := t.TempDir()
			built := c.Build(t, dir)
			s1, s2, _ := imgsnapApplyImage(t, dir, built, c.Name != "refcount-bits-2")
			// Two copies made alike (holes where the file reads zeros),
			// so that map's zero flags compare.
			img, theirs := filepath.Join(dir, "qchain.qcow2"), filepath.Join(dir, "qemu.qcow2")
			imgsnapCopy(t, built, img)
			imgsnapCopy(t, built, theirs)
			for _, step := range []struct{ key, want string }{{"qs1", s1}, {"qs2", s2}, {"qs1", s1}} {
				mustQchain(t, bin, dir, "image-snapshot", "-a", step.key, img)
				imgsnapMust(t, dir, "qemu-img", "snapshot", "-a", step.key, theirs)
				imgsnapSameContent(t, bin, dir, img, step.want, "-a "+step.key)
				imgsnapSameAsQemu(t, dir, img, theirs)
			}
			imgsnapCompareList(t, bin, dir, img, false)
		})
	}
}

// TestImageSnapshotApplyOtherSize reverts to snapshots of another virtual
// size (the image grew since) and with VM state, like qemu-img.
func TestImageSnapshotApplyOtherSize(t *testing.T) {
	bin := requireTools(t)
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	img := q.Create("img.qcow2", "8M")
	q.IO("qcow2", img, "write -q -P 0x11 0 2M")
	q.Img("snapshot", "-c", "small", img)
	small := filepath.Join(dir, "small.raw")
	imgsnapMust(t, dir, "qemu-img", "convert", "-O", "raw", img, small)
	q.Img("resize", img, "+1G")
	q.IO("qcow2", img, "write -q -P 0x22 1M 2M", "write -q -P 0x23 1000M 1M")
	imgsnapSavevm(t, img, "big")
	big := filepath.Join(dir, "big.raw")
	imgsnapMust(t, dir, "qemu-img", "convert", "-O", "raw", img, big)
	q.IO("qcow2", img, "write -q -P 0x24 0 4M")
	mine, theirs := filepath.Join(dir, "qchain.qcow2"), filepath.Join(dir, "qemu.qcow2")
	imgsnapCopy(t, img, mine)
	imgsnapCopy(t, img, theirs)
	img = mine
	for _, step := range []struct{ key, want string }{{"small", small}, {"big", big}, {"1", small}} {
		mustQchain(t, bin, dir, "image-snapshot", "-a", step.key, img)
		imgsnapMust(t, dir, "qemu-img", "snapshot", "-a", step.key, theirs)
		imgsnapSameContent(t, bin, dir, img, step.want, "-a "+step.key)
		imgsnapSameAsQemu(t, dir, img, theirs)
	}
}

// TestImageSnapshotApplyInterrupted stops a revert before each of its
// writes in turn, as a crash would, and demands that qemu-img check finds
// the image free of corruption (leaks allowed), that it reads as before
// the revert until the L1 switch and as the snapshot after, and that
// running the revert again finishes it.
func TestImageSnapshotApplyInterrupted(t *testing.T) {
	bin := requireTools(t)
	for _, c := range fixtures.QemuCases() {
		switch c.Name {
		case "cluster-4k", "extl2-64k", "refcount-bits-2", "compressed-convert-zlib", "random-writes":
		default:
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			dir := t.TempDir()
			img := c.Build(t, dir)
			twin := c.Name != "refcount-bits-2"
			s1, _, cur := imgsnapApplyImage(t, dir, img, twin)
			pristine := filepath.Join(dir, "pristine.qcow2")
			imgsnapCopy(t, img, pristine)

			var writes []qcow2.ApplyWrite
			count := filepath.Join(dir, "count.qcow2")
			imgsnapCopy(t, pristine, count)
			if _, err := qcow2.ApplySnapshot(count, "qs1", qcow2.ApplyOptions{BeforeWrite: func(w qcow2.ApplyWrite) error {
				writes = append(writes, w)
				return nil
			}}); err != nil {
				t.Fatal(err)
			}
			stages := map[qcow2.ApplyStage]bool{}
			for _, w := range writes {
				stages[w.Stage] = true
			}
			for _, s := range []qcow2.ApplyStage{qcow2.StageClearCopied, qcow2.StageIncrement, qcow2.StageSwitchL1, qcow2.StageDecrement} {
				if !stages[s] && (twin || s != qcow2.StageClearCopied) {
					t.Errorf("no %s write in %+v: the case does not test that stage", s, writes)
				}
			}
			errStop := errors.New("interrupted")
			switched := false
			leaky := 0
			defer func() { t.Logf("%d writes; %d of the cuts leave leaks", len(writes), leaky) }()
			for k := 0; k <= len(writes); k++ {
				work := filepath.Join(dir, fmt.Sprintf("cut-%d.qcow2", k))
				imgsnapCopy(t, pristine, work)
				n := 0
				_, err := qcow2.ApplySnapshot(work, "qs1", qcow2.ApplyOptions{BeforeWrite: func(w qcow2.ApplyWrite) error {
					if n == k {
						return errStop
					}
					n++
					return nil
				}})
				if k < len(writes) && !errors.Is(err, errStop) || k == len(writes) && err != nil {
					t.Fatalf("cut before write %d: %v", k, err)
				}
				if k > 0 && writes[k-1].Stage == qcow2.StageSwitchL1 {
					switched = true
				}
				what := fmt.Sprintf("cut before write %d of %d", k, len(writes))
				if k < len(writes) {
					what += fmt.Sprintf(" (%s at %#x)", writes[k].Stage, writes[k].Offset)
				}
				res, code := imgsnapCheckJSON(t, dir, work)
				if code != 0 && code != 3 {
					t.Errorf("%s: qemu-img check exit %d: %v", what, code, res)
				}
				if code == 3 {
					leaky++
				}
				if code == 3 && (k == 0 || k == len(writes)) {
					t.Errorf("%s: leaks where none may be: %v", what, res)
				}
				want := cur
				if switched {
					want = s1
				}
				imgsnapSameContent(t, bin, dir, work, want, what)
				// Running it again finishes the revert. Narrow refcounts
				// may have no room left for the leaks of the first try:
				// then qchain says to give them back first, as qemu-img
				// check -r leaks does.
				if r := qchainRun(bin, dir, "image-snapshot", "-a", "qs1", work); r.ExitCode != 0 {
					if !strings.Contains(string(r.Stderr), "check -r leaks") {
						t.Fatalf("%s, then again: exit %d: %s", what, r.ExitCode, r.Stderr)
					}
					imgsnapMust(t, dir, "qemu-img", "check", "-q", "-r", "leaks", work)
					mustQchain(t, bin, dir, "image-snapshot", "-a", "qs1", work)
				}
				imgsnapSameContent(t, bin, dir, work, s1, what+", then again")
				if res, code := imgsnapCheckJSON(t, dir, work); code != 0 && code != 3 {
					t.Errorf("%s, then again: qemu-img check exit %d: %v", what, code, res)
				}
				os.Remove(work)
			}
		})
	}
}

// TestImageSnapshotEncrypted reverts a LUKS-encrypted image without its
// key (the revert touches only metadata, which is not encrypted) and
// checks the result with qemu-img given the key; -c and -d, which would
// need the key in the storage daemon, are refused.
func TestImageSnapshotEncrypted(t *testing.T) {
	bin := requireTools(t)
	dir := t.TempDir()
	secret := []string{"--object", "secret,id=sec0,data=hunter2"}
	opts := "driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=sec0"
	qemuImg := func(args ...string) fixtures.Result {
		t.Helper()
		return imgsnapMust(t, dir, "qemu-img", append(append(args[:1:1], secret...), args[1:]...)...)
	}
	qemuIO := func(cmd string) {
		t.Helper()
		imgsnapMust(t, dir, "qemu-io", append(secret, "--image-opts", "-c", cmd, opts)...)
	}
	qemuImg("create", "-q", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", "enc.qcow2", "8M")
	qemuIO("write -q -P 0x11 0 1M")
	qemuImg("snapshot", "-c", "s1", "--image-opts", opts)
	qemuImg("convert", "--image-opts", opts, "-O", "raw", "s1.raw")
	qemuIO("write -q -P 0x22 512k 1M")

	before := mustFingerprint(t, dir)
	for _, args := range [][]string{{"-c", "s2"}, {"-d", "s1"}} {
		r := qchainRun(bin, dir, append(append([]string{"image-snapshot"}, args...), "enc.qcow2")...)
		wantOneLineError(t, r, 1, "the image is encrypted", "--object secret")
	}
	if d := fingerprintDiff(before, mustFingerprint(t, dir)); d != "" {
		t.Errorf("refused calls changed files:\n%s", d)
	}
	mustQchain(t, bin, dir, "image-snapshot", "-a", "s1", "enc.qcow2")
	qemuImg("check", "--image-opts", opts)
	qemuImg("convert", "--image-opts", opts, "-O", "raw", "after.raw")
	if r := fixtures.Run(context.Background(), dir, "cmp", "-s", "after.raw", "s1.raw"); r.ExitCode != 0 {
		t.Errorf("after -a the encrypted image does not read as its snapshot")
	}
}

// TestImageSnapshotInUse holds an image in a running qemu: -l still works
// and agrees with qemu-img -U; -c, -a and -d are refused in one line and
// change nothing.
func TestImageSnapshotInUse(t *testing.T) {
	bin := requireTools(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	img := q.Create("held.qcow2", "8M")
	q.IO("qcow2", img, "write -q -P 0x11 0 1M")
	q.Img("snapshot", "-c", "s1", img)
	startQemu(t, img)
	before := mustFingerprint(t, dir)
	imgsnapCompareList(t, bin, dir, img, true)
	for _, args := range [][]string{{"-c", "s2"}, {"-a", "s1"}, {"-d", "s1"}} {
		r := qchainRun(bin, dir, append(append([]string{"image-snapshot"}, args...), img)...)
		wantOneLineError(t, r, 1, "held.qcow2", "in use by another process")
	}
	if d := fingerprintDiff(before, mustFingerprint(t, dir)); d != "" {
		t.Errorf("refused calls changed files:\n%s", d)
	}
}

// TestImageSnapshotBadInput runs each kind of bad input through qchain
// and, where qemu-img refuses it too, through qemu-img on a copy: same
// exit code, a one-line message with the same meaning, no file changed.
// Where qemu-img accepts what qchain refuses, the test says why.
func TestImageSnapshotBadInput(t *testing.T) {
	bin := requireTools(t)
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	img := q.Create("img.qcow2", "8M")
	q.IO("qcow2", img, "write -q -P 0x11 0 1M")
	q.Img("snapshot", "-c", "s1", img)
	raw := q.CreateRaw("disk.raw", "1M")
	withBitmap := q.Create("bitmap.qcow2", "8M")
	q.Img("snapshot", "-c", "s1", withBitmap)
	q.Img("bitmap", "--add", withBitmap, "b0")
	var dirtyImg string
	for _, c := range fixtures.QemuCases() {
		if c.Name == "lazy-refcounts-dirty" {
			dirtyImg = c.Build(t, dir)
		}
	}
	long := strings.Repeat("x", 256)

	for _, tc := range []struct {
		name string
		args []string
		// qemuExit is qemu-img snapshot's exit code for the same
		// arguments, -1 where qemu-img accepts them and qchain refuses.
		qemuExit int
		want     []string // parts of qchain's message
	}{
		{"no-action", []string{img}, -1, []string{"one action is needed"}},
		{"two-actions", []string{"-l", "-c", "x", img}, 1, []string{"cannot mix"}},
		{"missing-name", []string{"-c"}, 1, []string{"needs an argument", "-c"}},
		{"missing-name-apply", []string{"-a"}, 1, []string{"needs an argument", "-a"}},
		{"no-image", []string{"-l"}, 1, []string{"expected one IMAGE"}},
		{"two-images", []string{"-l", img, raw}, 1, []string{"expected one IMAGE"}},
		{"no-such-file", []string{"-l", filepath.Join(dir, "nope.qcow2")}, 1, []string{"nope.qcow2", "no such file"}},
		{"apply-not-found", []string{"-a", "nope", img}, 1, []string{"could not apply snapshot 'nope'", "snapshot not found"}},
		{"delete-not-found", []string{"-d", "nope", img}, 1, []string{"could not delete snapshot 'nope'", "snapshot not found"}},
		{"delete-by-id", []string{"-d", "1", img}, 1, []string{"could not delete snapshot '1'", "snapshot not found"}},
		{"raw-create", []string{"-c", "x", raw}, 1, []string{"could not create snapshot 'x'", "not a qcow2 image"}},
		{"raw-apply", []string{"-a", "x", raw}, 1, []string{"could not apply snapshot 'x'", "not a qcow2 image"}},
		{"raw-delete", []string{"-d", "x", raw}, 1, []string{"could not delete snapshot 'x'", "not a qcow2 image"}},
		{"force-share-write", []string{"-U", "-c", "x", img}, 1, []string{"-U"}},
		{"bitmaps-apply", []string{"-a", "s1", withBitmap}, 1, []string{"could not apply snapshot 's1'", "dirty bitmaps (b0)"}},
		// qemu-img takes these; qchain refuses a name QMP would refuse
		// (empty) or cut (over 255 bytes), and a second snapshot of one
		// name, which -a and -d could not tell apart.
		{"empty-name", []string{"-c", "", img}, -1, []string{"could not create snapshot ''", "empty"}},
		{"long-name", []string{"-c", long, img}, -1, []string{"256 bytes", "255"}},
		{"duplicate-name", []string{"-c", "s1", img}, -1, []string{"could not create snapshot 's1'", "exists already (ID 1)"}},
		// qemu-img repairs the refcounts of a dirty image when it opens
		// it for writing; qchain leaves that to qemu-img check -r.
		{"dirty-apply", []string{"-a", "1", dirtyImg}, -1, []string{"not closed cleanly", "check -r"}},
		{"bad-compat", []string{"-l", "--compat=new", img}, -1, []string{"--compat"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := mustFingerprint(t, dir)
			r := qchainRun(bin, dir, append([]string{"image-snapshot"}, tc.args...)...)
			wantOneLineError(t, r, 1, tc.want...)
			if d := fingerprintDiff(before, mustFingerprint(t, dir)); d != "" {
				t.Errorf("a refused call changed files:\n%s", d)
			}
			if tc.qemuExit < 0 {
				return
			}
			// qemu-img on copies, in a folder of its own.
			qdir := t.TempDir()
			var qargs []string
			for _, a := range tc.args {
				if rel, err := filepath.Rel(dir, a); err == nil && !strings.HasPrefix(rel, "..") && filepath.IsAbs(a) {
					cp := filepath.Join(qdir, rel)
					if _, err := os.Stat(a); err == nil {
						imgsnapCopy(t, a, cp)
					}
					a = cp
				}
				qargs = append(qargs, a)
			}
			qr := fixtures.Run(context.Background(), qdir, "qemu-img", append([]string{"snapshot"}, qargs...)...)
			if qr.ExitCode != tc.qemuExit {
				t.Errorf("qemu-img %v: exit %d, want %d (stderr %s)", qargs, qr.ExitCode, tc.qemuExit, qr.Stderr)
			}
		})
	}
	// A raw image lists no snapshots, as with qemu-img.
	imgsnapCompareList(t, bin, dir, raw, false)
}
