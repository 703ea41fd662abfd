package qmp

import (
	"errors"
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
