package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptedJobs is a fake QMP server whose query-jobs walks through a
// script of statuses, one per poll (staying on the last), and which
// records every other command.
type scriptedJobs struct {
	mu       sync.Mutex
	statuses []string
	errMsg   string
	commands []string
}

func (s *scriptedJobs) serve(f *fakeConn) {
	if !f.greet() {
		return
	}
	for {
		c, ok := f.recv()
		if !ok {
			return
		}
		s.mu.Lock()
		if c.Execute == "query-jobs" {
			st := s.statuses[0]
			if len(s.statuses) > 1 {
				s.statuses = s.statuses[1:]
			}
			info := JobInfo{ID: "j", Type: "mirror", Status: st, CurrentProgress: 5, TotalProgress: 10}
			if st == JobConcluded {
				info.Error = s.errMsg
			}
			s.mu.Unlock()
			f.reply(c, []JobInfo{info})
			continue
		}
		s.commands = append(s.commands, c.Execute)
		s.mu.Unlock()
		f.reply(c, map[string]any{})
	}
}

func (s *scriptedJobs) count(cmd string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.commands {
		if c == cmd {
			n++
		}
	}
	return n
}

// TestWaitIgnoresLateReady: after job-complete, QEMU may still report
// "ready" for a while; the runner must not act on it again.
func TestWaitIgnoresLateReady(t *testing.T) {
	s := &scriptedJobs{statuses: []string{JobRunning, JobReady, JobReady, JobReady, JobWaiting, JobPending, JobPending, JobConcluded}}
	c := dialFake(t, startFake(t, s.serve), Options{})
	job, err := AttachJob(testCtx(t, 5*time.Second), c, "j")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := job.Wait(testCtx(t, 10*time.Second), WaitOptions{PollInterval: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for cmd, want := range map[string]int{"job-complete": 1, "job-finalize": 1, "job-dismiss": 1, "job-cancel": 0} {
		if got := s.count(cmd); got != want {
			t.Errorf("%s sent %d times, want %d (%v)", cmd, got, want, s.commands)
		}
	}
}

// TestWaitAbortBeforeReady: a ready arriving after Abort is ignored.
func TestWaitAbortBeforeReady(t *testing.T) {
	s := &scriptedJobs{statuses: []string{JobReady, JobReady, JobAborting, JobConcluded}, errMsg: "Operation canceled"}
	c := dialFake(t, startFake(t, s.serve), Options{})
	job, err := AttachJob(testCtx(t, 5*time.Second), c, "j")
	if err != nil {
		t.Fatal(err)
	}
	job.Abort()
	_, err = job.Wait(testCtx(t, 10*time.Second), WaitOptions{PollInterval: time.Millisecond})
	if !isAborted(err) {
		t.Fatalf("Wait: %v, want ErrJobAborted", err)
	}
	for cmd, want := range map[string]int{"job-complete": 0, "job-cancel": 1, "job-dismiss": 1, "job-finalize": 0} {
		if got := s.count(cmd); got != want {
			t.Errorf("%s sent %d times, want %d (%v)", cmd, got, want, s.commands)
		}
	}
}

// TestWaitJobVanished: a job dismissed by someone else is reported.
func TestWaitJobVanished(t *testing.T) {
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		for {
			c, ok := f.recv()
			if !ok {
				return
			}
			f.reply(c, []JobInfo{})
		}
	})
	c := dialFake(t, path, Options{})
	job := newJob(c, "gone", "commit")
	if _, err := job.Wait(testCtx(t, 5*time.Second), WaitOptions{}); !errors.Is(err, ErrJobNotFound) {
		t.Fatalf("Wait: %v, want ErrJobNotFound", err)
	}
}

// recordArgs is a fake QMP server that answers every command with an
// empty return and records each command's name and arguments.
type recordArgs struct {
	mu   sync.Mutex
	cmds []fakeCmd
}

func (r *recordArgs) serve(f *fakeConn) {
	if !f.greet() {
		return
	}
	for {
		c, ok := f.recv()
		if !ok {
			return
		}
		r.mu.Lock()
		r.cmds = append(r.cmds, c)
		r.mu.Unlock()
		f.reply(c, map[string]any{})
	}
}

// TestStartJobDefaults: auto-dismiss is always off; a stream and an
// intermediate commit run with auto-finalize off, an active commit with
// it on (nothing is left to decide after job-complete, and a pending
// active commit keeps the disk drained and unswitched), a mirror with
// QEMU's default (on); an explicit setting is kept.
func TestStartJobDefaults(t *testing.T) {
	tests := []struct {
		name         string
		job          JobStarter
		cmd          string
		autoFinalize any // nil: absent
	}{
		{"stream", BlockStream{JobID: "j", Device: "vda"}, "block-stream", false},
		{"intermediate-commit", BlockCommit{JobID: "j", Device: "vda", TopNode: "snap1"}, "block-commit", false},
		{"intermediate-commit-by-file", &BlockCommit{JobID: "j", Device: "vda", Top: "snap1.qcow2"}, "block-commit", false},
		{"active-commit", BlockCommit{JobID: "j", Device: "vda", BaseNode: "base"}, "block-commit", true},
		{"active-commit-pointer", &BlockCommit{JobID: "j", Device: "vda"}, "block-commit", true},
		{"active-commit-explicit-off", BlockCommit{JobID: "j", Device: "vda", AutoFinalize: Bool(false)}, "block-commit", false},
		{"commit-explicit-on", BlockCommit{JobID: "j", Device: "vda", TopNode: "top", AutoFinalize: Bool(true)}, "block-commit", true},
		{"drive-mirror", DriveMirror{JobID: "j", Device: "vda", Target: "/x", Sync: SyncFull}, "drive-mirror", nil},
		{"blockdev-mirror", BlockdevMirror{JobID: "j", Device: "vda", Target: "t", Sync: SyncFull}, "blockdev-mirror", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &recordArgs{}
			c := dialFake(t, startFake(t, r.serve), Options{})
			if _, err := StartJob(testCtx(t, 5*time.Second), c, tc.job); err != nil {
				t.Fatal(err)
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			if len(r.cmds) != 1 || r.cmds[0].Execute != tc.cmd {
				t.Fatalf("commands %+v, want one %s", r.cmds, tc.cmd)
			}
			var args map[string]any
			if err := json.Unmarshal(r.cmds[0].Arguments, &args); err != nil {
				t.Fatal(err)
			}
			if args["auto-dismiss"] != false {
				t.Errorf("auto-dismiss %v, want false", args["auto-dismiss"])
			}
			if got := args["auto-finalize"]; got != tc.autoFinalize {
				t.Errorf("auto-finalize %v, want %v (arguments %s)", got, tc.autoFinalize, r.cmds[0].Arguments)
			}
		})
	}
}

// deprecatedJobVerbs are the block-job-* commands QEMU deprecated in
// favour of the generic job-* ones (block-job-cancel stays: job-cancel
// cannot end a ready mirror without a pivot).
var deprecatedJobVerbs = []string{"block-job-pause", "block-job-resume", "block-job-complete",
	"block-job-dismiss", "block-job-finalize"}

// TestJobVerbs drives the runner through every way a job ends, and the
// control commands, and checks that only job-* verbs (and
// block-job-cancel, block-job-set-speed, which have no job-* form) are
// sent.
func TestJobVerbs(t *testing.T) {
	allowed := map[string]bool{"query-jobs": true, "job-complete": true, "job-finalize": true,
		"job-dismiss": true, "job-cancel": true, "job-pause": true, "job-resume": true,
		"block-job-cancel": true, "block-job-set-speed": true}
	runs := []struct {
		name     string
		onReady  ReadyAction
		statuses []string
		errMsg   string
	}{
		// AttachJob's own query-jobs sees the first status.
		{"pivot", ReadyPivot, []string{JobRunning, JobRunning, JobReady, JobWaiting, JobPending, JobConcluded}, ""},
		{"cancel", ReadyCancel, []string{JobRunning, JobReady, JobAborting, JobConcluded}, "Operation canceled"},
		{"finish", ReadyFinish, []string{JobRunning, JobReady, JobConcluded}, ""},
		{"stream", ReadyPivot, []string{JobRunning, JobRunning, JobPending, JobConcluded}, ""},
	}
	var sent []string
	for _, r := range runs {
		s := &scriptedJobs{statuses: r.statuses, errMsg: r.errMsg}
		c := dialFake(t, startFake(t, s.serve), Options{})
		ctx := testCtx(t, 10*time.Second)
		job, err := AttachJob(ctx, c, "j")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := job.Wait(ctx, WaitOptions{OnReady: r.onReady, PollInterval: time.Millisecond}); err != nil && !isAborted(err) {
			t.Fatalf("%s: %v", r.name, err)
		}
		if r.name == "pivot" {
			for _, f := range []func() error{
				func() error { return c.JobPause(ctx, "j") },
				func() error { return c.JobResume(ctx, "j") },
				func() error { return c.BlockJobSetSpeed(ctx, "j", 1) },
			} {
				if err := f(); err != nil {
					t.Fatal(err)
				}
			}
		}
		c.Close()
		s.mu.Lock()
		sent = append(sent, s.commands...)
		s.mu.Unlock()
	}
	for _, cmd := range sent {
		if !allowed[cmd] {
			t.Errorf("the job runner sent %q", cmd)
		}
	}
	for _, want := range []string{"job-complete", "job-finalize", "job-dismiss", "job-cancel", "job-pause", "job-resume", "block-job-cancel"} {
		if !slices.Contains(sent, want) {
			t.Errorf("%s never sent (%v)", want, sent)
		}
	}
}

// TestNoDeprecatedJobVerbsInSource: no Go file of the module names a
// deprecated block-job-* verb (a command sent through Execute or HMP
// would escape TestJobVerbs).
func TestNoDeprecatedJobVerbsInSource(t *testing.T) {
	root := ".."
	files := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for _, v := range deprecatedJobVerbs {
			if bytes.Contains(b, []byte(`"`+v+`"`)) || bytes.Contains(b, []byte(strings.ReplaceAll(v, "-", "_"))) {
				t.Errorf("%s names the deprecated %s", path, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 20 {
		t.Fatalf("only %d Go files under %s: not the module root?", files, root)
	}
}
