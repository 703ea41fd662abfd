package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Job runner defaults.
const (
	// DefaultPollInterval is how often Wait polls query-jobs when no event
	// arrives.
	DefaultPollInterval = 250 * time.Millisecond
	// DefaultAbortTimeout bounds the clean-up (job-cancel, wait, dismiss)
	// that Wait does after its context is cancelled.
	DefaultAbortTimeout = 60 * time.Second
)

// JobStarter is a command that starts a block job: *BlockStream,
// *BlockCommit, *DriveMirror, *BlockdevMirror, *BlockdevCreate or
// *BlockdevBackup (values work too). StartJob forces auto-dismiss off on
// it so that the result can always be read from query-jobs.
type JobStarter interface {
	// jobStart returns the command name, the job id and the arguments
	// with the runner's defaults applied.
	jobStart() (name, id string, args any)
}

// The runner's defaults: auto-dismiss is always off (Invariant 5). A
// stream and an intermediate commit default to auto-finalize off, so that
// the runner, not QEMU, applies their graph change after checking the
// job's state. An active commit (no Top or TopNode) defaults to
// auto-finalize on, as mirrors do: once job-complete (or block-job-cancel)
// is sent nothing is left to decide, and with auto-finalize off the disk
// stays drained and not yet switched until job-finalize, a window in
// which writes that bypass the drain (a block export's new clients) reach
// the old top and are lost.

func (a BlockStream) jobStart() (string, string, any) {
	a.AutoDismiss = Bool(false)
	if a.AutoFinalize == nil {
		a.AutoFinalize = Bool(false)
	}
	return "block-stream", a.JobID, a
}

func (a BlockCommit) jobStart() (string, string, any) {
	a.AutoDismiss = Bool(false)
	if a.AutoFinalize == nil {
		a.AutoFinalize = Bool(a.Active())
	}
	return "block-commit", a.JobID, a
}

func (a DriveMirror) jobStart() (string, string, any) {
	a.AutoDismiss = Bool(false)
	return "drive-mirror", a.JobID, a
}

func (a BlockdevMirror) jobStart() (string, string, any) {
	a.AutoDismiss = Bool(false)
	return "blockdev-mirror", a.JobID, a
}

// blockdev-create jobs never auto-dismiss and take no flags.
func (a BlockdevCreate) jobStart() (string, string, any) {
	return "blockdev-create", a.JobID, a
}

// ReadyAction says what Wait does when a job (mirror, active commit)
// reaches "ready", i.e. source and target are in sync.
type ReadyAction int

const (
	// ReadyPivot sends job-complete: the disk switches to the target (the
	// commit base, the mirror copy) and the job finishes.
	ReadyPivot ReadyAction = iota
	// ReadyReturn returns from Wait with the job left running and ready,
	// so that a later Wait (in this process or another one, through
	// AttachJob) decides.
	ReadyReturn
	// ReadyCancel sends job-cancel: no pivot; Wait returns an error
	// wrapping ErrJobAborted. For an active commit the top image stays in
	// use and holds all data.
	ReadyCancel
	// ReadyFinish sends block-job-cancel without force: a mirror ends
	// without pivoting and leaves its target a consistent copy (virsh
	// blockcopy --finish); an active commit ends leaving the overlay in
	// use (--keep-overlay). Wait returns success.
	ReadyFinish
)

// WaitOptions configure Job.Wait. The zero value pivots on ready and polls
// every DefaultPollInterval.
type WaitOptions struct {
	// OnReady is what to do when the job becomes ready.
	OnReady ReadyAction
	// Progress, if set, is called from Wait's goroutine with query-jobs'
	// current-progress and total-progress whenever they change.
	Progress func(current, total int64)
	// PollInterval is how often query-jobs is polled between events. Zero
	// means DefaultPollInterval.
	PollInterval time.Duration
	// AbortTimeout bounds the clean-up after ctx is cancelled. Zero means
	// DefaultAbortTimeout.
	AbortTimeout time.Duration
}

// JobResult describes how a job ended.
type JobResult struct {
	// ID and Type identify the job.
	ID, Type string
	// Status is the last status seen: "concluded" once dismissed, or
	// "ready" when Wait returned early because of ReadyReturn.
	Status string
	// CurrentProgress and TotalProgress are the last values seen.
	CurrentProgress, TotalProgress int64
	// Dismissed reports that the job was dismissed and is gone.
	Dismissed bool
}

// Job is a handle on a QEMU job, started by StartJob or found by
// AttachJob. Wait drives it to its end. Abort may be called from any
// goroutine.
type Job struct {
	conn *Conn
	id   string
	typ  string

	mu       sync.Mutex
	abortReq bool
	kick     chan struct{}
}

// ID returns the job id.
func (j *Job) ID() string { return j.id }

// Type returns the job type as query-jobs reports it, if known.
func (j *Job) Type() string { return j.typ }

// StartJob starts the job described by s with auto-dismiss off (and, for
// a stream and an intermediate commit, auto-finalize off unless set). s must carry a job id;
// JobID makes deterministic ones. If a job with that id still exists (left
// by an earlier process), QEMU refuses with a GenericError "Job ID ...
// already in use": use AttachJob to drive that one.
func StartJob(ctx context.Context, c *Conn, s JobStarter) (*Job, error) {
	name, id, args := s.jobStart()
	if id == "" {
		return nil, fmt.Errorf("qmp: %s: a job id is required", name)
	}
	if err := c.Execute(ctx, name, args, nil); err != nil {
		return nil, err
	}
	return newJob(c, id, jobTypeOf(name)), nil
}

func jobTypeOf(cmd string) string {
	switch cmd {
	case "block-stream":
		return "stream"
	case "block-commit":
		return "commit"
	case "drive-mirror", "blockdev-mirror":
		return "mirror"
	case "blockdev-create":
		return "create"
	case CmdBlockdevBackup:
		return "backup"
	case "snapshot-save", "snapshot-load", "snapshot-delete":
		return cmd
	}
	return ""
}

func newJob(c *Conn, id, typ string) *Job {
	return &Job{conn: c, id: id, typ: typ, kick: make(chan struct{}, 1)}
}

// AttachJob returns a handle on an existing job, for example one started by
// a qchain process that was killed, so that Wait can drive it to the end.
// It fails with ErrJobNotFound when query-jobs does not list id.
func AttachJob(ctx context.Context, c *Conn, id string) (*Job, error) {
	info, err := findJob(ctx, c, id)
	if err != nil {
		return nil, err
	}
	return newJob(c, id, info.Type), nil
}

// FindJob returns the query-jobs entry for id, or an error wrapping
// ErrJobNotFound.
func FindJob(ctx context.Context, c *Conn, id string) (JobInfo, error) {
	return findJob(ctx, c, id)
}

func findJob(ctx context.Context, c *Conn, id string) (JobInfo, error) {
	jobs, err := c.QueryJobs(ctx)
	if err != nil {
		return JobInfo{}, err
	}
	for _, j := range jobs {
		if j.ID == id {
			return j, nil
		}
	}
	return JobInfo{}, fmt.Errorf("%w: %s", ErrJobNotFound, id)
}

// Abort asks a running Wait to cancel the job (job-cancel), wait for it to
// conclude and dismiss it; that Wait then returns an error wrapping
// ErrJobAborted. It does not wait. A "ready" seen after Abort is ignored.
func (j *Job) Abort() {
	j.mu.Lock()
	j.abortReq = true
	j.mu.Unlock()
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

func (j *Job) abortRequested() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.abortReq
}

// jobEvents are the events that hint a job changed state. They are only
// hints: every decision is taken on a fresh query-jobs.
var jobEvents = []string{
	"JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED",
	"BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR", "BLOCK_JOB_PENDING",
}

// Wait drives the job to its end: it finalizes a pending job, acts on
// "ready" as opts.OnReady says (once: a ready seen after a pivot or abort
// began is ignored), and when the job has concluded reads its error from
// query-jobs and dismisses it. JOB_STATUS_CHANGE events only trigger a
// poll; query-jobs is the truth.
//
// It returns a *JobError when the job failed, an error wrapping
// ErrJobAborted when it was cancelled on request, and an error wrapping
// ErrClosed if the connection closed (the job then goes on in QEMU and can
// be attached to again). When ctx is cancelled, Wait aborts the job
// cleanly within opts.AbortTimeout and returns an error wrapping both
// ErrJobAborted and ctx's error.
func (j *Job) Wait(ctx context.Context, opts WaitOptions) (*JobResult, error) {
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.AbortTimeout <= 0 {
		opts.AbortTimeout = DefaultAbortTimeout
	}
	res := &JobResult{ID: j.id, Type: j.typ}

	subCtx, cancelSub := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSub()
	sub, err := j.conn.Subscribe(subCtx, jobEvents...)
	if err != nil {
		return res, err
	}
	events := sub.C()

	ticker := time.NewTicker(opts.PollInterval)
	defer ticker.Stop()

	var (
		workCtx       = ctx // becomes the clean-up context on abort
		cancelCleanup context.CancelFunc
		aborting      bool  // job-cancel sent (or being sent)
		abortCause    error // why: ctx error or nil for Abort/ReadyCancel
		ending        bool  // job-complete or block-job-cancel sent
		finalizeSent  bool
		lastCur       int64 = -1
		lastTot       int64 = -1
	)
	defer func() {
		if cancelCleanup != nil {
			cancelCleanup()
		}
	}()

	startAbort := func(cause error) {
		if aborting {
			return
		}
		aborting = true
		abortCause = cause
		// The clean-up has its own deadline, whatever happens to ctx.
		workCtx, cancelCleanup = context.WithTimeout(context.WithoutCancel(ctx), opts.AbortTimeout)
		// Ignore the error: the job may already be past the point where
		// it can be cancelled (concluded); the poll below tells.
		_ = j.conn.JobCancel(workCtx, j.id)
	}
	abortedErr := func() error {
		if abortCause != nil {
			return fmt.Errorf("%w: %s: %w", ErrJobAborted, j.id, abortCause)
		}
		return fmt.Errorf("%w: %s", ErrJobAborted, j.id)
	}

	for {
		if !aborting {
			if ctx.Err() != nil {
				startAbort(ctx.Err())
			} else if j.abortRequested() {
				startAbort(nil)
			}
		}

		info, err := findJob(workCtx, j.conn, j.id)
		if err != nil {
			if !aborting && ctx.Err() != nil {
				startAbort(ctx.Err())
				continue
			}
			if aborting && errors.Is(err, ErrJobNotFound) {
				return res, abortedErr()
			}
			return res, fmt.Errorf("qmp: job %s: %w", j.id, err)
		}
		res.Type = info.Type
		res.Status = info.Status
		res.CurrentProgress, res.TotalProgress = info.CurrentProgress, info.TotalProgress
		if opts.Progress != nil && (info.CurrentProgress != lastCur || info.TotalProgress != lastTot) {
			lastCur, lastTot = info.CurrentProgress, info.TotalProgress
			opts.Progress(lastCur, lastTot)
		}

		switch info.Status {
		case JobReady:
			if aborting || ending {
				break // a late ready: the decision is already taken
			}
			switch opts.OnReady {
			case ReadyReturn:
				return res, nil
			case ReadyCancel:
				startAbort(nil)
			case ReadyFinish:
				ending = true
				if err := j.conn.BlockJobCancel(workCtx, j.id, false); err != nil {
					return res, fmt.Errorf("qmp: job %s: %w", j.id, err)
				}
			default:
				ending = true
				if err := j.conn.JobComplete(workCtx, j.id); err != nil {
					return res, fmt.Errorf("qmp: job %s: %w", j.id, err)
				}
			}
			continue
		case JobPending:
			if !aborting && !finalizeSent {
				finalizeSent = true
				if err := j.conn.JobFinalize(workCtx, j.id); err != nil && !IsClass(err, ClassGenericError) {
					return res, fmt.Errorf("qmp: job %s: %w", j.id, err)
				}
				continue
			}
		case JobConcluded:
			if err := j.conn.JobDismiss(workCtx, j.id); err != nil {
				return res, fmt.Errorf("qmp: job %s: %w", j.id, err)
			}
			res.Dismissed = true
			switch {
			case info.Error != "" && aborting:
				return res, abortedErr()
			case info.Error != "":
				return res, &JobError{ID: j.id, Type: res.Type, Msg: info.Error}
			}
			// Success, even if an abort was asked too late to stop it: the
			// job's change is in place and the caller must know.
			return res, nil
		}

		if err := j.waitForTrigger(workCtx, aborting, ticker.C, &events); err != nil {
			return res, err
		}
	}
}

// waitForTrigger blocks until the next poll is due: a tick, an event about
// this job, an Abort, or ctx ending (the caller then starts the abort). It
// returns an error when there is nothing more to wait for.
func (j *Job) waitForTrigger(ctx context.Context, aborting bool, tick <-chan time.Time, events *<-chan Event) error {
	for {
		select {
		case <-ctx.Done():
			if aborting {
				return fmt.Errorf("qmp: job %s: abort did not finish: %w", j.id, ctx.Err())
			}
			return nil
		case <-tick:
			return nil
		case <-j.kick:
			return nil
		case ev, ok := <-*events:
			if !ok {
				*events = nil // connection closed: Done reports it
				continue
			}
			if eventJobID(ev) == j.id {
				return nil
			}
		case <-j.conn.Done():
			return fmt.Errorf("qmp: job %s: %w", j.id, j.conn.Err())
		}
	}
}

// eventJobID returns the job id an event is about ("id" for
// JOB_STATUS_CHANGE, "device" for BLOCK_JOB_*).
func eventJobID(ev Event) string {
	var d struct {
		ID     string `json:"id"`
		Device string `json:"device"`
	}
	if json.Unmarshal(ev.Data, &d) != nil {
		return ""
	}
	if d.ID != "" {
		return d.ID
	}
	return d.Device
}
