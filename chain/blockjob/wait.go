package blockjob

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qchain/qchain/qmp"
)

// ErrInterrupted is matched (errors.Is) by the error of a wait that ended
// because its context was cancelled, after the job was aborted cleanly or
// while it was being aborted. The CLI exits 130 on it.
var ErrInterrupted = errors.New("blockjob: interrupted")

// Progress shows a job's progress while Run or Control waits for it. Its
// methods are called from the waiting goroutine only.
type Progress interface {
	// Update takes query-jobs' progress, bytes for block jobs, whenever
	// it changes.
	Update(current, total int64)
	// Finish is called once when the wait ends; ok is false when it ended
	// in an error.
	Finish(ok bool)
}

// WaitOptions say how Run and Control wait for a job. The zero value
// waits as long as the job runs and shows no progress.
type WaitOptions struct {
	// Timeout aborts the job cleanly if it has not ended by then; 0 means
	// no limit. A Timeout implies waiting.
	Timeout time.Duration
	// NewProgress, if set, makes the Progress of a wait; what says what
	// the job does ("pull of the whole chain into active.qcow2", "commit
	// job qchain-commit-vda"), to label it.
	NewProgress func(what string) Progress
}

// EndError tells in one line how a job ended other than as asked: it was
// aborted (on a timeout, an interrupt, or by someone else), it failed, its
// QEMU went away, or another client dismissed it. Unwrap returns the
// cause (qmp.ErrJobAborted, a *qmp.JobError, qmp.ErrClosed,
// qmp.ErrJobNotFound, a context error) for errors.Is and errors.As.
type EndError struct {
	msg         string
	cause       error
	interrupted bool
}

// Error returns the line that tells the job's end.
func (e *EndError) Error() string { return e.msg }

// Unwrap returns the cause of the job's end.
func (e *EndError) Unwrap() error { return e.cause }

// Is matches ErrInterrupted when the wait ended because its context was
// cancelled.
func (e *EndError) Is(target error) bool { return target == ErrInterrupted && e.interrupted }

// wait drives job to its end with a progress display, a timeout and a
// clean abort when ctx is cancelled. It turns the ways a job can end into
// one line naming the disk and the job.
func (t *Target) wait(ctx context.Context, job *qmp.Job, label, what string, onReady qmp.ReadyAction, w WaitOptions) (*qmp.JobResult, error) {
	wctx := ctx
	if w.Timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, w.Timeout)
		defer cancel()
	}
	opts := qmp.WaitOptions{OnReady: onReady}
	var progress Progress
	if w.NewProgress != nil {
		progress = w.NewProgress(what)
		opts.Progress = progress.Update
	}
	res, err := job.Wait(wctx, opts)
	if progress != nil {
		progress.Finish(err == nil)
	}
	if err == nil {
		return res, nil
	}
	var je *qmp.JobError
	switch {
	case errors.Is(err, qmp.ErrJobAborted) && errors.Is(err, context.DeadlineExceeded):
		return res, &EndError{msg: fmt.Sprintf("%s: gave up after --timeout %v: the %s (job %s) was aborted cleanly", label, w.Timeout, what, job.ID()), cause: err}
	case errors.Is(err, qmp.ErrJobAborted) && errors.Is(err, context.Canceled):
		return res, &EndError{msg: fmt.Sprintf("%s: interrupted: the %s (job %s) was aborted cleanly", label, what, job.ID()), cause: err, interrupted: true}
	case errors.Is(err, qmp.ErrJobAborted):
		return res, &EndError{msg: fmt.Sprintf("%s: the %s (job %s) was aborted", label, what, job.ID()), cause: err}
	case errors.As(err, &je):
		return res, &EndError{msg: fmt.Sprintf("%s: the %s failed (job %s): %s", label, what, job.ID(), je.Msg), cause: err}
	case errors.Is(err, qmp.ErrClosed):
		who := "QEMU"
		if t.Offline() {
			who = "qemu-storage-daemon"
		}
		return res, &EndError{msg: fmt.Sprintf("%s: the %s did not finish: %s went away during job %s (%v)", label, what, who, job.ID(), closeCause(err)), cause: err}
	case errors.Is(err, qmp.ErrJobNotFound):
		return res, &EndError{msg: fmt.Sprintf("%s: job %s of the %s disappeared: another client dismissed it (its result is unknown; check the chain with qchain disks)", label, job.ID(), what), cause: err}
	case ctx.Err() != nil || wctx.Err() != nil:
		return res, &EndError{msg: fmt.Sprintf("%s: interrupted while aborting the %s (job %s): %v; see qchain blockjob --info", label, what, job.ID(), err), cause: err, interrupted: true}
	}
	return res, fmt.Errorf("%s: the %s (job %s): %w", label, what, job.ID(), err)
}

// closeCause is the innermost cause of a closed connection (EOF, reset):
// the last error of each multi-error, QEMU's cause after ErrClosed.
func closeCause(err error) error {
	for {
		switch x := err.(type) {
		case interface{ Unwrap() []error }:
			errs := x.Unwrap()
			if len(errs) == 0 {
				return err
			}
			err = errs[len(errs)-1]
		case interface{ Unwrap() error }:
			u := x.Unwrap()
			if u == nil {
				return err
			}
			err = u
		default:
			return err
		}
	}
}
