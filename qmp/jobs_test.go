package qmp

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// throttle is the speed jobs start with, slow enough that a guest write
// lands while the job runs; the test lifts it afterwards.
const throttle = 64 << 10

// jobCase is one block job run on each kind of target.
type jobCase struct {
	name string
	// start builds the job command from the disk's live chain.
	start   func(t *testing.T, tg *target, c chainFiles, d Disk, dest string) JobStarter
	onReady ReadyAction
	// wantAborted: Wait must fail with ErrJobAborted.
	wantAborted bool
	// wantChain is the chain the disk must have afterwards, top first;
	// its top must hold the guest content.
	wantChain func(c chainFiles, dest string) []string
	// liveChain, if set, is the disk's live chain afterwards when it
	// differs from wantChain (a copy that was not pivoted to).
	liveChain func(c chainFiles) []string
	// pivots: the job replaces the disk's top. A pivot moves the users
	// of the old top to the new one; a -blockdev root with no user (no
	// device, no export) has none to move, so there the live graph keeps
	// the old top and only the image files show the result.
	pivots bool
}

var jobCases = []jobCase{
	{
		name: "stream",
		start: func(_ *testing.T, _ *target, c chainFiles, d Disk, _ string) JobStarter {
			return BlockStream{JobID: JobID("stream", d.Name()), Device: d.Name(), Speed: throttle}
		},
		wantChain: func(c chainFiles, _ string) []string { return []string{c.top} },
	},
	{
		name: "commit-intermediate",
		start: func(_ *testing.T, _ *target, c chainFiles, d Disk, _ string) JobStarter {
			return BlockCommit{JobID: JobID("commit", d.Name()), Device: d.Name(),
				TopNode: d.Chain[1].NodeName, BaseNode: d.Chain[2].NodeName, Speed: throttle}
		},
		wantChain: func(c chainFiles, _ string) []string { return []string{c.top, c.base} },
	},
	{
		name: "commit-active-pivot",
		start: func(_ *testing.T, _ *target, c chainFiles, d Disk, _ string) JobStarter {
			return BlockCommit{JobID: JobID("commit", d.Name()), Device: d.Name(), Speed: throttle}
		},
		wantChain: func(c chainFiles, _ string) []string { return []string{c.base} },
		pivots:    true,
	},
	{
		name: "commit-active-abort",
		start: func(_ *testing.T, _ *target, c chainFiles, d Disk, _ string) JobStarter {
			return BlockCommit{JobID: JobID("commit", d.Name()), Device: d.Name(), Speed: throttle}
		},
		onReady:     ReadyCancel,
		wantAborted: true,
		wantChain:   func(c chainFiles, _ string) []string { return []string{c.top, c.mid, c.base} },
	},
	{
		name: "mirror-full-pivot",
		start: func(_ *testing.T, _ *target, c chainFiles, d Disk, dest string) JobStarter {
			return DriveMirror{JobID: JobID("mirror", d.Name()), Device: d.Name(), Target: dest,
				Format: "qcow2", Sync: SyncFull, Mode: ModeAbsolutePaths, Speed: throttle}
		},
		wantChain: func(c chainFiles, dest string) []string { return []string{dest} },
		pivots:    true,
	},
	{
		name: "mirror-top-finish",
		start: func(_ *testing.T, _ *target, c chainFiles, d Disk, dest string) JobStarter {
			// QEMU creates dest with the source's backing (mid).
			return DriveMirror{JobID: JobID("mirror", d.Name()), Device: d.Name(), Target: dest,
				Format: "qcow2", Sync: SyncTop, Mode: ModeAbsolutePaths, Speed: throttle}
		},
		onReady:   ReadyFinish,
		wantChain: func(c chainFiles, dest string) []string { return []string{dest, c.mid, c.base} },
		liveChain: func(c chainFiles) []string { return []string{c.top, c.mid, c.base} },
	},
	{
		name: "blockdev-mirror-full-pivot",
		start: func(t *testing.T, tg *target, c chainFiles, d Disk, dest string) JobStarter {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", dest, "2M")
			err := tg.conn.BlockdevAdd(testCtx(t, 5*time.Second), map[string]any{
				"driver": "qcow2", "node-name": "dest", "backing": nil,
				"file": map[string]any{"driver": "file", "filename": dest},
			})
			if err != nil {
				t.Fatal(err)
			}
			return BlockdevMirror{JobID: JobID("mirror", d.Name()), Device: d.Name(), Target: "dest",
				Sync: SyncFull, Speed: throttle}
		},
		wantChain: func(c chainFiles, dest string) []string { return []string{dest} },
		pivots:    true,
	},
}

func findDisk(t testing.TB, ctx context.Context, conn *Conn, name string) Disk {
	t.Helper()
	disks, err := DiskChains(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.Name() == name {
			return d
		}
	}
	t.Fatalf("disk %s not in %+v", name, disks)
	return Disk{}
}

func chainFilenames(d Disk) []string {
	var out []string
	for _, l := range d.Chain {
		out = append(out, l.Filename)
	}
	return out
}

func TestJobs(t *testing.T) {
	for _, kind := range targetKinds {
		for _, jc := range jobCases {
			t.Run(kind+"/"+jc.name, func(t *testing.T) {
				t.Parallel()
				runJobCase(t, kind, jc)
			})
		}
	}
}

func runJobCase(t *testing.T, kind string, jc jobCase) {
	ctx := testCtx(t, 40*time.Second)
	c := buildChain(t)
	dest := filepath.Join(c.dir, "dest.qcow2")
	tg := startTarget(t, kind, c)
	d := findDisk(t, ctx, tg.conn, tg.disk)

	job, err := StartJob(ctx, tg.conn, jc.start(t, tg, c, d, dest))
	if err != nil {
		t.Fatal(err)
	}
	// While the job runs its filter nodes sit in the graph; both ways of
	// reading the chain must see through them.
	for _, useGraph := range []bool{true, false} {
		disks, err := diskChains(ctx, tg.conn, useGraph)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, dd := range disks {
			if dd.Name() == tg.disk {
				got = chainFilenames(dd)
			}
		}
		if want := []string{c.top, c.mid, c.base}; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("chain during the job (graph %v): %q, want %q", useGraph, got, want)
		}
	}
	if tg.hmp != nil && kind == kindDrive {
		// A guest write while the throttled job runs, through the second
		// monitor, must survive whatever the job does.
		info, err := FindJob(ctx, tg.conn, job.ID())
		if err != nil {
			t.Fatal(err)
		}
		if info.Status != JobRunning && info.Status != JobReady {
			t.Fatalf("job status %q before guest write, want running", info.Status)
		}
		tg.hmpQemuIO(t, tg.disk, "write -P 0x55 0 64k")
		rawWrite(t, c.expected, "write -P 0x55 0 64k")
	}
	if err := tg.conn.BlockJobSetSpeed(ctx, job.ID(), 0); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var calls int
	var last [2]int64
	res, err := job.Wait(ctx, WaitOptions{
		OnReady:      jc.onReady,
		PollInterval: 50 * time.Millisecond,
		Progress: func(cur, total int64) {
			mu.Lock()
			calls++
			last = [2]int64{cur, total}
			mu.Unlock()
		},
	})
	if jc.wantAborted {
		if !isAborted(err) {
			t.Fatalf("Wait: %v, want ErrJobAborted", err)
		}
	} else if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if res == nil || !res.Dismissed {
		t.Fatalf("job not dismissed: %+v", res)
	}
	mu.Lock()
	if calls == 0 {
		t.Error("progress callback never called")
	}
	if !jc.wantAborted && last[0] != last[1] {
		t.Errorf("last progress %d/%d, want complete", last[0], last[1])
	}
	mu.Unlock()
	if jobs, err := tg.conn.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Fatalf("query-jobs after Wait: %v %+v, want none", err, jobs)
	}

	want := jc.wantChain(c, dest)
	wantLive := want
	if jc.liveChain != nil {
		wantLive = jc.liveChain(c)
	}
	if jc.pivots && kind != kindDrive {
		wantLive = []string{c.top, c.mid, c.base}
	}
	live := findDisk(t, ctx, tg.conn, tg.disk)
	if got := chainFilenames(live); strings.Join(got, " ") != strings.Join(wantLive, " ") {
		t.Fatalf("live chain %q, want %q", got, wantLive)
	}

	tg.quit()
	assertChain(t, want[0], want...)
	assertSameContent(t, want[0], c.expected)
}

// TestJobAttach starts a throttled active commit on one connection, drops
// it as a killed process would, and finishes the job from a new
// connection that only knows the deterministic job id.
func TestJobAttach(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	c := buildChain(t)
	tg := startTarget(t, kindDrive, c)
	id := JobID("commit", "vda")
	if _, err := StartJob(ctx, tg.conn, BlockCommit{JobID: id, Device: "vda", Speed: throttle}); err != nil {
		t.Fatal(err)
	}
	tg.conn.Close()

	conn2, err := Dial(ctx, tg.sock, Options{})
	if err != nil {
		t.Fatal(err)
	}
	tg.conn = conn2 // for quit
	job, err := AttachJob(ctx, conn2, id)
	if err != nil {
		t.Fatal(err)
	}
	if job.Type() != "commit" {
		t.Errorf("attached job type %q, want commit", job.Type())
	}
	// An active commit runs with auto-finalize on: after job-complete
	// QEMU switches the disk at once (a pending active commit keeps the
	// disk drained and unswitched, and writes through a block export's
	// new connections are lost then).
	bjobs, err := conn2.QueryBlockJobs(ctx)
	if err != nil || len(bjobs) != 1 || bjobs[0].Device != id || bjobs[0].Speed != throttle ||
		bjobs[0].AutoDismiss || !bjobs[0].AutoFinalize {
		t.Fatalf("query-block-jobs: %+v %v", bjobs, err)
	}
	if err := conn2.JobPause(ctx, id); err != nil {
		t.Fatal(err)
	}
	// job-pause takes effect at the job's next pause point.
	for {
		info, err := FindJob(ctx, conn2, id)
		if err != nil {
			t.Fatal(err)
		}
		if info.Status == JobPaused || info.Status == JobStandby {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after job-pause: %+v", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := conn2.JobResume(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := conn2.BlockJobSetSpeed(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	// First wait only until ready, as `blockcommit --active` without
	// --pivot does; then attach again and pivot, as `blockjob --pivot`.
	res, err := job.Wait(ctx, WaitOptions{OnReady: ReadyReturn, PollInterval: 50 * time.Millisecond})
	if err != nil || res.Status != JobReady || res.Dismissed {
		t.Fatalf("Wait(ReadyReturn) = %+v, %v", res, err)
	}
	job, err = AttachJob(ctx, conn2, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := job.Wait(ctx, WaitOptions{OnReady: ReadyPivot}); err != nil {
		t.Fatal(err)
	}
	if _, err := AttachJob(ctx, conn2, id); !errors.Is(err, ErrJobNotFound) {
		t.Fatalf("AttachJob after dismiss: %v, want ErrJobNotFound", err)
	}
	live := findDisk(t, ctx, conn2, "vda")
	if got := chainFilenames(live); len(got) != 1 || got[0] != c.base {
		t.Fatalf("live chain %q, want [%s]", got, c.base)
	}
	tg.quit()
	assertChain(t, c.base, c.base)
	assertSameContent(t, c.base, c.expected)
}

// TestJobContextCancel cancels Wait's context while a throttled stream
// runs: the job must be cancelled, dismissed, and the chain left intact.
func TestJobContextCancel(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	c := buildChain(t)
	tg := startTarget(t, kindQSD, c)
	job, err := StartJob(ctx, tg.conn, BlockStream{JobID: JobID("stream", "top"), Device: "top", Speed: throttle})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = job.Wait(wctx, WaitOptions{PollInterval: 50 * time.Millisecond})
	if !isAborted(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait: %v, want ErrJobAborted and DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "aborted") {
		t.Errorf("error %q does not say aborted", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("abort took %v", d)
	}
	if jobs, err := tg.conn.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Fatalf("query-jobs after abort: %v %+v", err, jobs)
	}
	live := findDisk(t, ctx, tg.conn, "top")
	if got := chainFilenames(live); len(got) != 3 {
		t.Fatalf("live chain after abort %q, want 3 layers", got)
	}
	tg.quit()
	assertChain(t, c.top, c.top, c.mid, c.base)
	assertSameContent(t, c.top, c.expected)
}

// TestJobAbortRequest aborts through Job.Abort from another goroutine.
func TestJobAbortRequest(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	c := buildChain(t)
	tg := startTarget(t, kindQSD, c)
	job, err := StartJob(ctx, tg.conn, BlockCommit{JobID: JobID("commit", "top"), Device: "top",
		TopNode: "mid", BaseNode: "base", Speed: throttle})
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, job.Abort)
	_, err = job.Wait(ctx, WaitOptions{PollInterval: 50 * time.Millisecond})
	if !isAborted(err) || errors.Is(err, context.Canceled) {
		t.Fatalf("Wait: %v, want ErrJobAborted only", err)
	}
	tg.quit()
	assertChain(t, c.top, c.top, c.mid, c.base)
	assertSameContent(t, c.top, c.expected)
}

// TestJobFailure reports a job error from query-jobs as *JobError.
func TestJobFailure(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	c := buildChain(t)
	tg := startTarget(t, kindQSD, c)
	// A blockdev-create job with an invalid cluster size fails when it
	// runs, not when it starts.
	img := filepath.Join(c.dir, "new.qcow2")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tg.conn.BlockdevAdd(ctx, map[string]any{"driver": "file", "node-name": "newfile", "filename": img}); err != nil {
		t.Fatal(err)
	}
	job, err := StartJob(ctx, tg.conn, BlockdevCreate{JobID: "qchain-create-x", Options: map[string]any{
		"driver": "qcow2", "file": "newfile", "size": 1 << 20, "cluster-size": 12345,
	}})
	if err != nil {
		t.Skipf("blockdev-create refused at start: %v", err)
	}
	_, err = job.Wait(ctx, WaitOptions{PollInterval: 50 * time.Millisecond})
	var je *JobError
	if !errors.As(err, &je) || je.ID != "qchain-create-x" || je.Msg == "" {
		t.Fatalf("Wait: %v, want *JobError", err)
	}
}
