package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// storedBitmap is one bitmap as qemu-img info --output=json lists it.
type storedBitmap struct {
	Name        string   `json:"name"`
	Granularity uint64   `json:"granularity"`
	Flags       []string `json:"flags"`
}

// listedBitmap is one bitmap as qchain bitmap --list --output=json
// prints it.
type listedBitmap struct {
	Name        string   `json:"name"`
	Granularity uint64   `json:"granularity"`
	Flags       []string `json:"flags"`
	Recording   bool     `json:"recording"`
	Count       *uint64  `json:"count"`
}

// qemuBitmaps returns the bitmaps qemu-img info reports for img, sorted
// by name (the directory's order is QEMU's business).
func qemuBitmaps(t *testing.T, dir, img string) []storedBitmap {
	t.Helper()
	r := fixtures.Run(context.Background(), dir, "qemu-img", "info", "--output=json", img)
	if r.ExitCode != 0 {
		t.Fatalf("qemu-img info %s: exit %d: %s", img, r.ExitCode, r.Stderr)
	}
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []storedBitmap `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(r.Stdout, &info); err != nil {
		t.Fatal(err)
	}
	bms := info.FormatSpecific.Data.Bitmaps
	for i := range bms {
		sort.Strings(bms[i].Flags)
	}
	sort.Slice(bms, func(i, j int) bool { return bms[i].Name < bms[j].Name })
	return bms
}

// listBitmaps runs qchain bitmap --list --output=json (args may add --qmp).
func listBitmaps(t *testing.T, bin, dir string, args ...string) map[string]listedBitmap {
	t.Helper()
	r := mustQchain(t, bin, dir, append([]string{"bitmap", "--list", "--output=json"}, args...)...)
	var l []listedBitmap
	if err := json.Unmarshal(r.Stdout, &l); err != nil {
		t.Fatalf("bitmap --list: %v\n%s", err, r.Stdout)
	}
	out := map[string]listedBitmap{}
	for _, b := range l {
		out[b.Name] = b
	}
	return out
}

func count(b listedBitmap) string {
	if b.Count == nil {
		return "unknown"
	}
	return fmt.Sprint(*b.Count)
}

// bitmapTwin makes one copy of the test images in a folder of its own:
// img.qcow2 (64 MiB, cluster 64k) with b0 (enabled, 18 clusters dirty)
// and off (disabled, 4k granularity, the same bytes dirty), an overlay top.qcow2 on it
// with t0, and src.qcow2 (64 MiB) with s0 (enabled, 2 clusters dirty at
// other places).
func bitmapTwin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	q.Create("img.qcow2", "64M")
	q.Img("bitmap", "--add", "img.qcow2", "b0")
	q.Img("bitmap", "--add", "-g", "4k", "img.qcow2", "off")
	q.IO("qcow2", "img.qcow2", "write -q 0 64k", "write -q 1M 1M", "write -q 32M 64k")
	q.Img("bitmap", "--disable", "img.qcow2", "off")
	q.Overlay("top.qcow2", "img.qcow2", "qcow2", "")
	q.Img("bitmap", "--add", "top.qcow2", "t0")
	q.Create("src.qcow2", "64M")
	q.Img("bitmap", "--add", "src.qcow2", "s0")
	q.IO("qcow2", "src.qcow2", "write -q 4M 64k", "write -q 1M 64k")
	q.Create("small.qcow2", "32M")
	q.Img("bitmap", "--add", "small.qcow2", "s0")
	return dir
}

// TestBitmapActionsTwins runs each request with qemu-img bitmap on one
// copy of the images and with qchain bitmap on another, and wants the
// same bitmaps (names, granularity, flags, as qemu-img info lists them)
// and the same dirty counts.
func TestBitmapActionsTwins(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	for _, tc := range []struct {
		name        string
		qemu, mine  []string // arguments of qemu-img bitmap and qchain bitmap
		image       string
		wantChanged bool
	}{
		{name: "add", qemu: []string{"--add"}, image: "img.qcow2"},
		{name: "add granularity", qemu: []string{"--add", "-g", "512"}, mine: []string{"--add", "-g", "512"}},
		{name: "add granularity 0 is the default", qemu: []string{"--add", "-g", "0"}},
		{name: "add granularity 2G", qemu: []string{"--add", "-g", "2G"}},
		{name: "add disabled", qemu: []string{"--add", "--disable"}, mine: []string{"--add", "--disabled"}},
		{name: "remove", qemu: []string{"--remove"}, image: "img.qcow2@b0"},
		{name: "clear", qemu: []string{"--clear"}, image: "img.qcow2@b0"},
		{name: "clear disabled", qemu: []string{"--clear"}, image: "img.qcow2@off"},
		{name: "enable", qemu: []string{"--enable"}, image: "img.qcow2@off"},
		{name: "disable", qemu: []string{"--disable"}, image: "img.qcow2@b0"},
		{name: "merge", qemu: []string{"--merge", "b0"}, image: "img.qcow2@off"},
		{name: "merge from a file", qemu: []string{"--merge", "s0", "-b", "src.qcow2"}, image: "img.qcow2@off"},
		{name: "merge from a file with its format", qemu: []string{"--merge", "s0", "-b", "src.qcow2", "-F", "qcow2"}, image: "img.qcow2@b0"},
		{name: "merge from the backing file", qemu: []string{"--merge", "b0", "-b", "img.qcow2"}, image: "top.qcow2@t0"},
		{name: "add then merge twice", qemu: []string{"--add", "--merge", "b0", "--merge", "off"}},
		{name: "add disable merge enable", qemu: []string{"--add", "-g", "8k", "--disable", "--merge", "b0", "--enable"}},
		{name: "clear then disable", qemu: []string{"--clear", "--disable"}, image: "img.qcow2@b0"},
		{name: "remove then add", qemu: []string{"--remove", "--add", "-g", "4k"}, mine: []string{"--remove", "--add", "-g", "4k"}, image: "img.qcow2@b0"},
		{name: "add then remove", qemu: []string{"--add", "--remove"}},
		{name: "overlay add", qemu: []string{"--add"}, image: "top.qcow2@n1"},
		{name: "overlay remove", qemu: []string{"--remove"}, image: "top.qcow2@t0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, name := "img.qcow2", "new"
			if tc.image != "" {
				img, name, _ = strings.Cut(tc.image, "@")
				if name == "" {
					name = "new"
				}
			}
			mine := tc.mine
			if mine == nil {
				mine = tc.qemu
			}
			ref, got := bitmapTwin(t), bitmapTwin(t)
			r := fixtures.Run(context.Background(), ref, "qemu-img", append(append([]string{"bitmap"}, tc.qemu...), img, name)...)
			if r.ExitCode != 0 {
				t.Fatalf("%s: exit %d: %s", r.Cmd, r.ExitCode, r.Stderr)
			}
			mustQchain(t, bin, got, append(append([]string{"bitmap"}, mine...), img, name)...)
			want, have := qemuBitmaps(t, ref, img), qemuBitmaps(t, got, img)
			if js(want) != js(have) {
				t.Errorf("bitmaps differ:\nqemu-img: %s\nqchain:   %s", js(want), js(have))
			}
			// The dirty counts, read natively from both results.
			wl, hl := listBitmaps(t, bin, ref, img), listBitmaps(t, bin, got, img)
			for n, w := range wl {
				if count(w) != count(hl[n]) {
					t.Errorf("bitmap %s: qemu-img left %s dirty bytes, qchain %s", n, count(w), count(hl[n]))
				}
			}
			for _, f := range []string{"img.qcow2", "top.qcow2"} {
				wi := fixtures.Run(context.Background(), ref, "qemu-img", "info", "--output=json", f)
				hi := fixtures.Run(context.Background(), got, "qemu-img", "info", "--output=json", f)
				if backing(t, wi.Stdout) != backing(t, hi.Stdout) {
					t.Errorf("%s: backing %s after qemu-img, %s after qchain", f, backing(t, wi.Stdout), backing(t, hi.Stdout))
				}
			}
			checkClean(t, got, img)
		})
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// backing returns the backing file name and format of qemu-img info's
// JSON.
func backing(t *testing.T, info []byte) string {
	t.Helper()
	var v struct {
		Name   string `json:"backing-filename"`
		Format string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(info, &v); err != nil {
		t.Fatal(err)
	}
	return v.Name + " (" + v.Format + ")"
}

// TestBitmapDirtyCount writes known ranges with qemu-io through enabled
// bitmaps and wants qchain's native count to be what QEMU counts: the
// clusters (granules) touched times the granularity, and QEMU's own count
// (query-named-block-nodes on a read-only storage daemon).
func TestBitmapDirtyCount(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	img := q.Create("img.qcow2", "64M")
	mustQchain(t, bin, dir, "bitmap", "--add", img, "c64k")
	mustQchain(t, bin, dir, "bitmap", "--add", "-g", "4k", img, "c4k")
	mustQchain(t, bin, dir, "bitmap", "--add", "--disabled", img, "off")
	// Three clusters written whole, one write across a cluster boundary
	// (two clusters, 6 4k-granules), and a 512-byte write.
	q.IO("qcow2", img, "write -q 0 64k", "write -q 1M 64k", "write -q 2M 64k",
		"write -q 10238k 20k", "write -q 60M 512")
	want := map[string]uint64{
		"c64k": (3 + 2 + 1) * 65536,
		"c4k":  (3*16 + 6 + 1) * 4096,
		"off":  0,
	}
	got := listBitmaps(t, bin, dir, img)
	for n, w := range want {
		if got[n].Count == nil || *got[n].Count != w {
			t.Errorf("bitmap %s: qchain counts %s dirty bytes, want %d", n, count(got[n]), w)
		}
	}
	// QEMU's own count.
	ctx, cancel := context.WithTimeout(context.Background(), blockTimeout)
	defer cancel()
	d, err := qmp.StartStorageDaemon(ctx, qmp.StorageDaemonOptions{Blockdevs: []any{map[string]any{
		"driver": "qcow2", "node-name": "n", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": img}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	all, err := d.Conn.NodeBitmaps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range all["n"] {
		if b.Count != want[b.Name] {
			t.Errorf("bitmap %s: QEMU counts %d dirty bytes, want %d", b.Name, b.Count, want[b.Name])
		}
	}
	if len(all["n"]) != len(want) {
		t.Errorf("QEMU lists %d bitmaps, want %d", len(all["n"]), len(want))
	}
	// The human listing names each bitmap with its count.
	r := mustQchain(t, bin, dir, "bitmap", "--list", img)
	if !strings.Contains(string(r.Stdout), "c4k") || !strings.Contains(string(r.Stdout), fmt.Sprintf("%d bytes", want["c4k"])) {
		t.Errorf("bitmap --list:\n%s", r.Stdout)
	}
}

// TestBitmapBadInput: each bad request is one line on stderr, exit 1 as
// qemu-img's, and the files keep their bytes and mtimes. qemu-img fails
// each of them too (on a copy), except where noted.
func TestBitmapBadInput(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	dir := bitmapTwin(t)
	q := fixtures.NewQemu(t, dir)
	q.CreateRaw("disk.raw", "1M")
	q.Img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M")
	for _, tc := range []struct {
		name string
		args []string
		want []string
		// qemuDiffers: qemu-img's exit code is not compared (it succeeds
		// or cannot be given the same request).
		qemuDiffers bool
	}{
		{name: "missing bitmap", args: []string{"--clear", "img.qcow2", "nosuch"}, want: []string{"img.qcow2", "--clear: no bitmap nosuch", "b0, off"}},
		{name: "missing bitmap to enable", args: []string{"--enable", "img.qcow2", "nosuch"}, want: []string{"--enable: no bitmap nosuch"}},
		{name: "missing bitmap to remove", args: []string{"--remove", "img.qcow2", "nosuch"}, want: []string{"--remove: no bitmap nosuch"}},
		{name: "duplicate add", args: []string{"--add", "img.qcow2", "b0"}, want: []string{"--add: bitmap b0 already exists"}},
		{name: "second action fails", args: []string{"--clear", "--add", "img.qcow2", "b0"}, want: []string{"--add: bitmap b0 already exists"}},
		{name: "action after remove", args: []string{"--remove", "--clear", "img.qcow2", "b0"}, want: []string{"--clear: no bitmap b0"}},
		{name: "missing merge source", args: []string{"--merge", "nosuch", "img.qcow2", "b0"}, want: []string{"--merge nosuch: no bitmap nosuch"}},
		{name: "missing merge source in file", args: []string{"--merge", "b0", "-b", "src.qcow2", "img.qcow2", "off"}, want: []string{"no bitmap b0 in src.qcow2", "s0"}},
		{name: "merge source of another size", args: []string{"--merge", "s0", "-b", "small.qcow2", "img.qcow2", "off"}, want: []string{"different sizes"}},
		{name: "merge source missing file", args: []string{"--merge", "s0", "-b", "nofile.qcow2", "img.qcow2", "off"}, want: []string{"nofile.qcow2"}},
		{name: "raw image", args: []string{"--add", "disk.raw", "b"}, want: []string{"disk.raw", "not a qcow2 image"}},
		{name: "raw format", args: []string{"-f", "raw", "--add", "img.qcow2", "b"}, want: []string{"-f raw"}, qemuDiffers: true},
		{name: "version 2 image", args: []string{"--add", "v2.qcow2", "b"}, want: []string{"v2.qcow2", "version 2"}},
		{name: "granularity not a power of two", args: []string{"--add", "-g", "1000", "img.qcow2", "b"}, want: []string{"granularity 1000"}},
		{name: "granularity too small", args: []string{"--add", "-g", "256", "img.qcow2", "b"}, want: []string{"granularity 256"}},
		{name: "granularity too large", args: []string{"--add", "-g", "4G", "img.qcow2", "b"}, want: []string{"granularity 4294967296"}},
		{name: "granularity without add", args: []string{"--clear", "-g", "64k", "img.qcow2", "b0"}, want: []string{"-g"}},
		{name: "source file without merge", args: []string{"--clear", "-b", "src.qcow2", "img.qcow2", "b0"}, want: []string{"-b"}},
		{name: "no action", args: []string{"img.qcow2", "b0"}, want: []string{"need at least one of --add"}},
		{name: "empty name", args: []string{"--add", "img.qcow2", ""}, want: []string{"name is empty"}},
		{name: "name too long", args: []string{"--add", "img.qcow2", strings.Repeat("x", 1024)}, want: []string{"at most 1023"}},
		{name: "one argument", args: []string{"--add", "img.qcow2"}, want: []string{"expected IMAGE and BITMAP"}},
		{name: "missing image", args: []string{"--add", "nofile.qcow2", "b"}, want: []string{"nofile.qcow2", "no such image"}},
		{name: "list with an action", args: []string{"--list", "--add", "img.qcow2"}, want: []string{"--list takes no action"}, qemuDiffers: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := mustFingerprint(t, dir)
			r := qchainRun(bin, dir, append([]string{"bitmap"}, tc.args...)...)
			wantOneLineError(t, r, 1, tc.want...)
			if d := fingerprintDiff(before, mustFingerprint(t, dir)); d != "" {
				t.Errorf("qchain bitmap %v changed files:\n%s", tc.args, d)
			}
			if tc.qemuDiffers {
				return
			}
			twin := bitmapTwin(t)
			tq := fixtures.NewQemu(t, twin)
			tq.CreateRaw("disk.raw", "1M")
			tq.Img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M")
			if qr := fixtures.Run(context.Background(), twin, "qemu-img", append([]string{"bitmap"}, tc.args...)...); qr.ExitCode != 1 {
				t.Errorf("qemu-img bitmap %v: exit %d, want 1 as qchain's: %s", tc.args, qr.ExitCode, qr.Stderr)
			}
		})
	}
}

// TestBitmapInUse: an image a running QEMU holds is refused, unchanged;
// the listing still works and reports the bitmap in use by that QEMU.
func TestBitmapInUse(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	dir := bitmapTwin(t)
	img := filepath.Join(dir, "img.qcow2")
	startQemu(t, img)
	before := mustFingerprint(t, dir)
	r := qchainRun(bin, dir, "bitmap", "--add", "img.qcow2", "b1")
	wantOneLineError(t, r, 1, "img.qcow2", "in use by another process", "--qmp")
	r = qchainRun(bin, dir, "bitmap", "--merge", "b0", "-b", "img.qcow2", "src.qcow2", "s0")
	if r.ExitCode != 1 {
		t.Errorf("merging from an image in use: exit %d, want 1; stderr %s", r.ExitCode, r.Stderr)
	}
	l := listBitmaps(t, bin, dir, "img.qcow2")
	if b := l["b0"]; b.Count != nil || strings.Join(b.Flags, ",") != "in-use,auto" {
		t.Errorf("b0 of an image in use: flags %v, count %s; want in-use,auto and no count", b.Flags, count(b))
	}
	if d := fingerprintDiff(before, mustFingerprint(t, dir)); d != "" {
		t.Errorf("files changed:\n%s", d)
	}
}

// TestBitmapInconsistent: a bitmap left in use by a QEMU that was killed
// is listed as inconsistent without a count; only --remove works on it,
// as in QEMU.
func TestBitmapInconsistent(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	c := newBlockChain(t)
	mustQchain(t, bin, c.dir, "bitmap", "--add", c.active, "b0")
	vm := startVM(t, c, vmDrive, "")
	vm.kill(t)
	l := listBitmaps(t, bin, c.dir, c.active)
	if b := l["b0"]; b.Count != nil || strings.Join(b.Flags, ",") != "in-use,auto,inconsistent" {
		t.Fatalf("b0 after a killed QEMU: flags %v, count %s", b.Flags, count(b))
	}
	before := mustFingerprint(t, c.dir)
	r := qchainRun(bin, c.dir, "bitmap", "--clear", c.active, "b0")
	wantOneLineError(t, r, 1, "inconsistent", "--remove")
	if d := fingerprintDiff(before, mustFingerprint(t, c.dir)); d != "" {
		t.Errorf("files changed:\n%s", d)
	}
	mustQchain(t, bin, c.dir, "bitmap", "--remove", "--add", c.active, "b0")
	if bms := qemuBitmaps(t, c.dir, c.active); js(bms) != `[{"name":"b0","granularity":65536,"flags":["auto"]}]` {
		t.Errorf("after --remove --add: %s", js(bms))
	}
}

// TestBitmapLive runs the actions on a running QEMU's disk (a -drive, and
// a -blockdev node behind a virtio-blk device), with guest writes between
// them, then quits QEMU and finds the bitmaps stored in the image.
func TestBitmapLive(t *testing.T) {
	bin := requireTools(t)
	for _, kind := range []struct {
		name string
		kind vmKind
	}{{"drive", vmDrive}, {"device", vmDevice}} {
		t.Run(kind.name, func(t *testing.T) {
			c := newBlockChain(t)
			// A bitmap in a backing layer, to merge from with -b.
			q := fixtures.NewQemu(t, c.dir)
			q.Img("bitmap", "--add", c.snap1, "s1")
			q.IO("qcow2", c.snap1, "write -q -P 0x22 1M 64k")
			q.Img("bitmap", "--disable", c.snap1, "s1")
			vm := startVM(t, c, kind.kind, "")
			live := func(args ...string) []string { return append([]string{"bitmap", "--qmp", vm.sock}, args...) }

			mustQchain(t, bin, c.dir, live("--add", vm.disk, "b0")...)
			mustQchain(t, bin, c.dir, live("--add", "-g", "4k", "--disabled", vm.disk, "b1")...)
			mustQchain(t, bin, c.dir, live("--add", "--clear", "--disable", vm.disk, "gone")...)
			vm.guestWrite(t, c, 0, 3*65536, 0x44)
			l := listBitmaps(t, bin, c.dir, "--qmp", vm.sock, vm.disk)
			if count(l["b0"]) != fmt.Sprint(3*65536) || count(l["b1"]) != "0" || !l["b0"].Recording || l["b1"].Recording {
				t.Fatalf("live bitmaps after a 192 KiB write: %+v", l)
			}
			// Merge b0 and the backing layer's s1 into b1, enable it,
			// remove gone: one call, in one transaction.
			mustQchain(t, bin, c.dir, live("--merge", "b0", "--enable", vm.disk, "b1")...)
			mustQchain(t, bin, c.dir, live("--merge", "s1", "-b", c.snap1, vm.disk, "b1")...)
			mustQchain(t, bin, c.dir, live("--remove", vm.disk, "gone")...)
			vm.guestWrite(t, c, 8<<20, 4096, 0x55)
			l = listBitmaps(t, bin, c.dir, "--qmp", vm.sock, vm.disk)
			// b1 (4k): 48 granules from b0's merge (at 0-192k), 16 from s1
			// (1M-1M+64k), 1 written after it was enabled.
			if count(l["b1"]) != fmt.Sprint((48+16+1)*4096) || count(l["b0"]) != fmt.Sprint(4*65536) || len(l) != 2 {
				t.Fatalf("live bitmaps after merges and a 4k write: %+v", l)
			}
			// Bad input live: one line, nothing changed.
			r := qchainRun(bin, c.dir, live("--add", vm.disk, "b0")...)
			wantOneLineError(t, r, 1, "--add: bitmap b0 already exists")
			r = qchainRun(bin, c.dir, live("--clear", "--merge", "nosuch", vm.disk, "b0")...)
			wantOneLineError(t, r, 1, "no bitmap nosuch")
			r = qchainRun(bin, c.dir, live("--add", "nodisk", "b9")...)
			wantOneLineError(t, r, 1, "nodisk")
			if l2 := listBitmaps(t, bin, c.dir, "--qmp", vm.sock, vm.disk); js(l2) != js(l) {
				t.Errorf("bitmaps changed by refused requests:\nbefore %s\nafter  %s", js(l), js(l2))
			}

			vm.quit()
			want := `[{"name":"b0","granularity":65536,"flags":["auto"]},{"name":"b1","granularity":4096,"flags":["auto"]}]`
			if got := js(qemuBitmaps(t, c.dir, c.active)); got != want {
				t.Errorf("stored bitmaps after quit:\n got %s\nwant %s", got, want)
			}
			stored := listBitmaps(t, bin, c.dir, c.active)
			for _, n := range []string{"b0", "b1"} {
				if count(stored[n]) != count(l[n]) {
					t.Errorf("bitmap %s: %s dirty bytes stored, QEMU counted %s", n, count(stored[n]), count(l[n]))
				}
			}
			checkClean(t, c.dir, c.active)
			c.checkContent(t, bin, c.active)
		})
	}
}

// TestBitmapKill9 kills qchain (SIGKILL) while its offline bitmap action
// has a storage daemon open on the image: the daemon must die with it
// and release the image. The daemon is held up by a wrapper that moves
// its QMP socket where qchain does not look, so qchain waits for it.
func TestBitmapKill9(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	dir := bitmapTwin(t)
	daemon, err := exec.LookPath("qemu-storage-daemon")
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "daemon.pid")
	wrapper := filepath.Join(dir, "qsd-hidden.sh")
	script := "#!/bin/bash\nargs=()\nfor a in \"$@\"; do args+=(\"${a/qmp.sock,/qmp.sock.hidden,}\"); done\n" +
		"echo $$ > " + pidFile + "\nexec " + daemon + " \"${args[@]}\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bitmap", "--storage-daemon", wrapper, "--add", "img.qcow2", "b9")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }() // the qchain this test started
	pid := 0
	for deadline := time.Now().Add(20 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); strings.HasPrefix(string(comm), "qemu-storage") {
				pid = p
			}
		}
	}
	if pid == 0 {
		t.Fatal("the storage daemon did not start")
	}
	// Its image is locked while it runs.
	if err := qcow2.CheckNotInUse(filepath.Join(dir, "img.qcow2")); err == nil {
		t.Errorf("img.qcow2 is not locked while the daemon (pid %d) runs", pid)
	}
	cmd.Process.Kill()
	<-exited
	alive := func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		i := strings.LastIndexByte(string(b), ')')
		return err == nil && i > 0 && !strings.HasPrefix(string(b[i+1:]), " Z")
	}
	for deadline := time.Now().Add(10 * time.Second); alive() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if alive() {
		syscall.Kill(pid, syscall.SIGKILL) // the orphan of the qchain this test started
		t.Fatalf("the storage daemon (pid %d) of the killed qchain bitmap still runs", pid)
	}
	// The leader thread shows as a zombie a moment before the last
	// thread has exited and closed the image.
	err = qcow2.CheckNotInUse(filepath.Join(dir, "img.qcow2"))
	for deadline := time.Now().Add(5 * time.Second); err != nil && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		err = qcow2.CheckNotInUse(filepath.Join(dir, "img.qcow2"))
	}
	if err != nil {
		t.Errorf("after the daemon died: %v", err)
	}
	// It quit cleanly (SIGTERM): the bitmaps it had loaded for writing
	// are stored as they were, consistent, and nothing leaked.
	if out, err := exec.Command("qemu-img", "check", filepath.Join(dir, "img.qcow2")).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check after the kill: %v\n%s", err, out)
	}
	bms := qemuBitmaps(t, dir, "img.qcow2")
	for _, b := range bms {
		if slices.Contains(b.Flags, "in-use") {
			t.Errorf("bitmap %s is left in use (inconsistent) by the killed qchain's daemon: %+v", b.Name, bms)
		}
	}
	if len(bms) != 2 {
		t.Errorf("bitmaps after the kill: %+v, want b0 and off as they were", bms)
	}
}
