package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/backup"
	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qmp"
)

// errBKCrash is what the step hook returns to stop a run as a crash would.
var errBKCrash = errors.New("crash (test)")

// crashHook returns a BeforeStep hook that crashes before step i (from
// 0), and where it records the step's name ("" while not reached).
func crashHook(i int) (func(string) error, *string) {
	n, at := 0, new(string)
	return func(step string) error {
		if n == i {
			*at = step
			return errBKCrash
		}
		n++
		return nil
	}, at
}

// crashCreate runs backup create in this process with a crash before step
// i. It returns the step's name, or "" when the run completed (its point
// is recorded as e.backup records it).
func (e *bkEnv) crashCreate(i int) string {
	e.t.Helper()
	var last int64
	if l := e.list().Points; len(l) > 0 {
		last = l[len(l)-1].Point
	}
	hook, at := crashHook(i)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := backup.Create(ctx, &chain.Store{Dir: e.state}, e.vm, e.dir, backup.CreateOptions{BeforeStep: hook})
	switch {
	case *at != "" && !errors.Is(err, errBKCrash):
		e.t.Fatalf("backup create crashed before %q: %v", *at, err)
	case *at == "" && err != nil:
		e.t.Fatalf("backup create (no crash): %v", err)
	}
	// Nothing writes while it runs: a point it stored (it stopped
	// after the index) has the content the disks have now.
	if l := e.list().Points; len(l) > 0 && l[len(l)-1].Point > last {
		e.expect[l[len(l)-1].Point] = map[string]string{"vda": e.content("vda"), "vdb": e.content("vdb")}
	}
	return *at
}

// leftovers are the files of DIR no point lists: temporary files, and
// point files of points the index does not have.
func (e *bkEnv) leftovers() []string {
	e.t.Helper()
	listed := map[string]bool{"backup.json": true, backup.LockName: true}
	for _, p := range e.list().Points {
		for _, d := range p.Disks {
			listed[d.File] = true
		}
	}
	ents, err := os.ReadDir(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, d := range ents {
		if !listed[d.Name()] {
			out = append(out, d.Name())
		}
	}
	return out
}

// checkAfterCrash checks the run after a crash before step: it succeeded
// (point), said what it removed (left: the files left in DIR; inQemu:
// what it must say of what a live qemu kept), made an incremental
// point when incremental is set and a full one with a reason otherwise;
// DIR verifies, and nothing is left.
func (e *bkEnv) checkAfterCrash(step string, point int64, msg string, left, inQemu []string, incremental bool) {
	e.t.Helper()
	for _, f := range left {
		if !strings.Contains(msg, "interrupted run left") || !strings.Contains(msg, f) {
			e.t.Errorf("crash before %q left %s; the next run did not say it removed it: %q", step, f, msg)
		}
	}
	for _, s := range inQemu {
		if !strings.Contains(msg, s) {
			e.t.Errorf("crash before %q left jobs, nodes or bitmaps in qemu; the next run did not say %q: %q", step, s, msg)
		}
	}
	p := e.point(point)
	switch {
	case incremental && p.kind != "incremental":
		e.t.Errorf("crash before %q: the next point %d is %s (%s), want incremental", step, point, p.kind, p.reason)
	case !incremental && (p.kind != "full" || p.reason == "" || !strings.Contains(msg, "is full: ")):
		e.t.Errorf("crash before %q: the next point %d is %s (%q), want full with a reason; said %q", step, point, p.kind, p.reason, msg)
	}
	e.ok("backup", "verify", e.dir)
	// Every point is restored once, at the end: a later crash could
	// damage no file verify does not check.
	if l := e.leftovers(); len(l) > 0 {
		e.t.Errorf("crash before %q: after the next run DIR holds %v", step, l)
	}
}

// checkImages runs qemu-img check on the VM's active images: no
// corruption, and no leaked cluster unless leaks is set.
func (e *bkEnv) checkImages(step string, leaks bool) {
	e.t.Helper()
	for _, d := range []string{"vda", "vdb"} {
		img := e.active(e.vm, d)
		out, err := exec.Command("qemu-img", "check", "--output=json", img).Output()
		var r struct {
			Corruptions int `json:"corruptions"`
			Leaks       int `json:"leaks"`
			CheckErrors int `json:"check-errors"`
		}
		if jerr := json.Unmarshal(out, &r); jerr != nil {
			e.t.Fatalf("qemu-img check %s: %v, %v\n%s", img, err, jerr, out)
		}
		switch {
		case r.Corruptions > 0 || r.CheckErrors > 0 || r.Leaks > 0 && !leaks:
			e.t.Errorf("crash before %q: qemu-img check %s: %s", step, img, out)
		case r.Leaks > 0:
			e.t.Logf("crash before %q: qemu-img check %s: %d leaked clusters", step, img, r.Leaks)
		}
	}
}

// TestBackupCrashCreateOffline stops an offline backup create before each
// of its steps, as if qchain died there (its storage daemon killed with
// it), and runs it again: the next run removes what the crashed one left
// and says so, its point is full (the killed daemon never stored the
// bitmaps it had loaded: they are inconsistent) with the reason, DIR
// verifies and every point restores to the disks' content at its start.
// A second round takes a snapshot before each crashed run, so that the
// daemon also has the layer below open for writing (to remove the earlier
// point's bitmap from it): the next run removes that bitmap as well,
// whatever state the crash left it in.
func TestBackupCrashCreateOffline(t *testing.T) {
	e := newBKEnvSized(t, 36)
	e.backup()
	crashEveryStep := func(snapshot bool) {
		for i := 0; ; i++ {
			e.q.IO("qcow2", e.active(e.vm, "vda"), fmt.Sprintf("write -q -P 0x%02x %dM 64k", 0x40+i, 2*i%34))
			if snapshot {
				e.ok("snapshot", "create", e.vm, fmt.Sprintf("s%d", i))
			}
			step := e.crashCreate(i)
			if step == "" {
				if i < 10 {
					t.Fatalf("backup create completed before step %d: it has more", i)
				}
				t.Logf("backup create (snapshot before: %v) has %d steps", snapshot, i)
				return
			}
			e.q.IO("qcow2", e.active(e.vm, "vdb"), fmt.Sprintf("write -q -P 0x%02x %dM 64k", 0x80+i, i%16))
			left := e.leftovers()
			point, msg := e.backup()
			t.Logf("crash before %q: left %v; next run: %s", step, left, strings.ReplaceAll(strings.TrimSpace(msg), "\n", "; "))
			e.checkAfterCrash(step, point, msg, left, nil, false)
			// A killed daemon that had removed a persistent bitmap leaks
			// the clusters it freed (harmless: qemu-img check exits 3).
			e.checkImages(step, true)
			if snapshot {
				for _, target := range []string{"vda", "vdb"} {
					if old := e.lowerBackupBitmaps(target); len(old) > 0 {
						t.Errorf("crash before %q: after the next run the layers below %s hold %v", step, target, old)
					}
					e.checkLayers(target, true)
				}
			}
		}
	}
	crashEveryStep(false)
	crashEveryStep(true)
	// The bitmap of a point made after a crash is trusted again.
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x3f 35M 64k")
	point, _ := e.backup()
	if p := e.point(point); p.kind != "incremental" || p.copied["vda"] != 64<<10 {
		t.Errorf("the point after the last one: %+v", p)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)
}

// TestBackupCrashCreateLive is TestBackupCrashCreateOffline with the VM's
// qemu running: it keeps what the crashed run left in it (nodes, jobs, the
// new point's bitmap), the next run removes them and says so, and its
// point is incremental, the previous point's bitmap having recorded every
// write (also those made after the crash).
func TestBackupCrashCreateLive(t *testing.T) {
	e, q := newLiveBKEnv(t, 36)
	e.backup()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// With snapshot set, a snapshot is taken before each crashed run:
	// the writes since the previous point are then in its bitmap on two
	// layers, and the run gathers them into a temporary bitmap first.
	crashEveryStep := func(snapshot bool) {
		for i := 0; ; i++ {
			q.io(t, "vda", fmt.Sprintf("write -P 0x%02x %dM 64k", 0x40+i, 2*i%34))
			if snapshot {
				e.ok("snapshot", "create", e.vm, fmt.Sprintf("s%d", i))
			}
			step := e.crashCreate(i)
			if step == "" {
				if i < 10 {
					t.Fatalf("backup create completed before step %d: it has more", i)
				}
				t.Logf("backup create (snapshot before: %v) has %d steps", snapshot, i)
				return
			}
			q.io(t, "vdb", fmt.Sprintf("write -P 0x%02x %dM 64k", 0x80+i, i%16))
			left := e.leftovers()
			jobs, err := q.mon.QueryJobs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			nodes, err := q.mon.QueryNamedBlockNodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// What the crashed run left in qemu: its jobs, its target
			// nodes, the bitmap of the point it did not store, the
			// temporary union bitmap.
			var inQemu []string
			if len(jobs) > 0 {
				inQemu = append(inQemu, "in its qemu: removed")
			}
			for _, n := range nodes {
				if n.NodeName == qmp.NodeName("backup", "vda") || n.NodeName == qmp.NodeName("backup", "vdb") {
					inQemu = append(inQemu, "node "+n.NodeName)
				}
			}
			bitmaps, err := q.mon.NodeBitmaps(ctx)
			if err != nil {
				t.Fatal(err)
			}
			l := e.list().Points
			next := fmt.Sprintf("-%d", l[len(l)-1].Point+1)
			for _, bs := range bitmaps {
				for _, b := range bs {
					if strings.HasPrefix(b.Name, "qchain-union-") || strings.HasPrefix(b.Name, "qchain-backup-") && strings.HasSuffix(b.Name, next) {
						inQemu = append(inQemu, "left the bitmap "+b.Name+": removed")
					}
				}
			}
			point, msg := e.backup()
			t.Logf("crash before %q: left %v and in qemu %v (%d jobs); next run: %s", step, left, inQemu, len(jobs), strings.ReplaceAll(strings.TrimSpace(msg), "\n", "; "))
			e.checkAfterCrash(step, point, msg, left, inQemu, true)
			if p := e.point(point); !p.live || p.copied["vdb"] != 64<<10 {
				t.Errorf("crash before %q: the next point: %+v (want live, vdb's 64 KiB write copied)", step, p)
			}
			if jobs, err := q.mon.QueryJobs(ctx); err != nil || len(jobs) > 0 {
				t.Errorf("crash before %q: after the next run qemu has jobs %+v (%v)", step, jobs, err)
			}
		}
	}
	crashEveryStep(false)
	crashEveryStep(true)
	q.quit(t)
	e.checkImages("", false)
	// qemu stored the last point's bitmap when it quit: incremental.
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x3f 35M 64k")
	point, _ := e.backup()
	if p := e.point(point); p.kind != "incremental" || p.copied["vda"] != 64<<10 {
		t.Errorf("the offline point after the live ones: %+v", p)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)
}

// TestBackupCrashMerge stops backup merge --keep 2 before each of its
// steps, as if qchain died there, and runs it again: it finishes the
// merge, the two newest points are kept (the older one full), DIR
// verifies, they restore to their content, and no file is left over.
func TestBackupCrashMerge(t *testing.T) {
	e := newBKEnvSized(t, 36)
	e.backup()
	for i := 0; ; i++ {
		for j := 0; j < 2; j++ {
			e.q.IO("qcow2", e.active(e.vm, "vda"), fmt.Sprintf("write -q -P 0x%02x %dM 64k", 0x40+2*i+j, (4*i+j)%34))
			e.backup()
		}
		var before []int64
		for _, p := range e.list().Points {
			before = append(before, p.Point)
		}
		keep := before[len(before)-2:]
		hook, at := crashHook(i)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		_, dropped, err := backup.Merge(ctx, e.dir, 2, backup.MergeOptions{BeforeStep: hook})
		cancel()
		step := *at
		if step == "" {
			if err != nil || len(dropped) == 0 {
				t.Fatalf("backup merge (no crash): %v, dropped %v", err, dropped)
			}
			if i < 3 {
				t.Fatalf("backup merge completed before step %d: it has more", i)
			}
			t.Logf("backup merge has %d steps", i)
		} else {
			if !errors.Is(err, errBKCrash) {
				t.Fatalf("backup merge crashed before %q: %v", step, err)
			}
			left := e.leftovers()
			res := e.run("backup", "merge", "--keep", "2", e.dir)
			if res.Err != nil || res.ExitCode != 0 {
				t.Fatalf("backup merge after a crash before %q: exit %d, %v\n%s%s", step, res.ExitCode, res.Err, res.Stdout, res.Stderr)
			}
			t.Logf("merge crashed before %q, left %v; the next: %s%s", step, left, res.Stdout, res.Stderr)
			for _, f := range left {
				if !strings.Contains(string(res.Stderr), "interrupted run left") || !strings.Contains(string(res.Stderr), f) {
					t.Errorf("merge crashed before %q left %s; the next merge did not say it removed it: %s", step, f, res.Stderr)
				}
			}
		}
		var after []int64
		for _, p := range e.list().Points {
			after = append(after, p.Point)
		}
		if !slices.Equal(after, keep) || e.point(keep[0]).kind != "full" {
			t.Errorf("merge crashed before %q, then run again: points %v (point %d %s), want %v", step, after, keep[0], e.point(keep[0]).kind, keep)
		}
		e.ok("backup", "verify", e.dir)
		e.restoreAll()
		if l := e.leftovers(); len(l) > 0 {
			t.Errorf("merge crashed before %q, then run again: DIR holds %v", step, l)
		}
		if step == "" {
			break
		}
	}
}
