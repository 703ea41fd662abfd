package blockjob

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/qchain/qchain/qmp"
)

// Action is what Control does with a disk's job besides a new bandwidth
// limit and waiting.
type Action int

const (
	// NoAction leaves the job as it is: Control only sets the bandwidth,
	// or waits.
	NoAction Action = iota
	// Abort cancels the job (a ready copy or active commit does not
	// pivot) and waits until it is gone.
	Abort
	// Pivot waits until the job is ready, then switches the disk to the
	// job's target, and waits for the end.
	Pivot
	// Pause pauses the job.
	Pause
	// Resume resumes a paused job.
	Resume
)

// ControlOptions configure Control. The zero value does nothing but list
// the disk's jobs again.
type ControlOptions struct {
	// Action is what to do with the job.
	Action Action
	// Bandwidth, if not nil, sets the job's limit in bytes per second
	// (0: unlimited) before the action.
	Bandwidth *int64
	// Wait drives the job to its end (finalizing a finished stream or
	// commit) or until it is ready. Abort and Pivot always wait.
	Wait bool
	// ForceExports pivots a copy or commit although a block export can
	// (or may) write to the disk. By default such a pivot is refused
	// before anything is sent: QEMU loses writes an export's new clients
	// make during the switch (qmp.ExportError).
	ForceExports bool
	// WaitOptions bound and follow the wait.
	WaitOptions
}

// ControlResult is what Control did.
type ControlResult struct {
	// Outcome is Adjusted (no wait), Ready, Completed or Aborted. With
	// Abort, Completed means the job had finished already: too late to
	// abort, its change is in place.
	Outcome Outcome
	// What names the job in messages: "commit job qchain-commit-vda".
	What string
	// JobID is the job's id.
	JobID string
	// Jobs are the disk's jobs after an Adjusted job was changed.
	Jobs []JobStatus
}

// Control acts on the only job of dj (a disk with several jobs is refused:
// it is not clear which one is meant): it sets the bandwidth, pauses,
// resumes, aborts or pivots it, and waits for it if asked to or if the
// action needs it. ctx cancelled while waiting aborts the job cleanly.
func (t *Target) Control(ctx context.Context, dj *DiskJobs, opts ControlOptions) (*ControlResult, error) {
	label := dj.Label
	if len(dj.Jobs) == 0 {
		return nil, fmt.Errorf("%s: no block job to act on in %s", label, t)
	}
	if len(dj.Jobs) > 1 {
		var ids []string
		for _, j := range dj.Jobs {
			ids = append(ids, j.ID)
		}
		return nil, fmt.Errorf("%s: several block jobs (%s): qchain acts on one at a time", label, strings.Join(ids, ", "))
	}
	j := dj.Jobs[0]
	res := &ControlResult{What: fmt.Sprintf("%s job %s", j.Type, j.ID), JobID: j.ID}
	what := res.What

	if opts.Action == Pivot && (j.Type == "mirror" || j.Type == "commit") {
		if err := t.checkExports(ctx, label, "pivot "+what, dj.Disk, opts.ForceExports); err != nil {
			return nil, err
		}
	}
	if opts.Bandwidth != nil {
		if err := t.conn.BlockJobSetSpeed(ctx, j.ID, *opts.Bandwidth); err != nil {
			return nil, fmt.Errorf("%s: setting the bandwidth of %s: %w", label, what, qmpDesc(err))
		}
	}
	switch opts.Action {
	case Pause:
		if err := t.conn.JobPause(ctx, j.ID); err != nil {
			return nil, fmt.Errorf("%s: pausing %s: %w", label, what, qmpDesc(err))
		}
	case Resume:
		if err := t.conn.JobResume(ctx, j.ID); err != nil {
			return nil, fmt.Errorf("%s: resuming %s: %w", label, what, qmpDesc(err))
		}
	}
	if opts.Action != Abort && opts.Action != Pivot && !opts.Wait && opts.Timeout <= 0 {
		again, err := t.Jobs(ctx, dj.disks)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		res.Outcome = Adjusted
		res.Jobs = again[dj.Disk.Name()]
		return res, nil
	}

	job, err := qmp.AttachJob(ctx, t.conn, j.ID)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", label, what, err)
	}
	onReady := qmp.ReadyReturn
	switch opts.Action {
	case Pivot:
		onReady = qmp.ReadyPivot
	case Abort:
		job.Abort()
	}
	jr, err := t.wait(ctx, job, label, what, onReady, opts.WaitOptions)
	if err != nil || jr.Status != qmp.JobReady {
		t.releaseTargets(ctx)
	}
	if opts.Action == Abort {
		switch {
		case errors.Is(err, qmp.ErrJobAborted) && !errors.Is(err, ErrInterrupted):
			res.Outcome = Aborted
			return res, nil
		case err == nil:
			res.Outcome = Completed
			return res, nil
		}
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if jr.Status == qmp.JobReady {
		res.Outcome = Ready
		return res, nil
	}
	res.Outcome = Completed
	return res, nil
}

// qmpDesc keeps QEMU's own description of a refused command.
func qmpDesc(err error) error {
	var qe *qmp.Error
	if errors.As(err, &qe) {
		return errors.New(qe.Desc)
	}
	return err
}
