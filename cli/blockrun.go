package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/qmp"
	"github.com/urfave/cli/v2"
)

// jobOps are the operations whose deterministic job ids (qmp.JobID) name
// qchain's jobs on a disk; the snapshot commands use the same ones.
var jobOps = []string{"pull", "commit", "copy"}

// jobReport is a job as disks and blockjob --info show it: query-jobs
// merged with query-block-jobs.
type jobReport struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress int64  `json:"current-progress"`
	TotalProgress   int64  `json:"total-progress"`
	Speed           int64  `json:"speed,omitempty"`
	Ready           bool   `json:"ready,omitempty"`
	Paused          bool   `json:"paused,omitempty"`
	Error           string `json:"error,omitempty"`
}

// jobIDsOf are the ids a job on d may have: qchain's, and the disk's own
// names, which QEMU uses when a job is started without an id.
func jobIDsOf(d qmp.Disk) []string {
	var ids []string
	for _, op := range jobOps {
		ids = append(ids, qmp.JobID(op, d.Name()))
	}
	return append(ids, d.Name(), d.NodeName)
}

// allJobs reads query-jobs and query-block-jobs and attributes each job to
// a disk: by the block graph, else by its id. Jobs of no disk are under "".
func allJobs(ctx context.Context, conn *qmp.Conn, disks []qmp.Disk) (map[string][]jobReport, error) {
	jobs, err := conn.QueryJobs(ctx)
	if err != nil {
		return nil, err
	}
	bjobs, err := conn.QueryBlockJobs(ctx)
	if err != nil {
		return nil, err
	}
	byGraph, err := qmp.JobsOfDisks(ctx, conn, disks)
	if err != nil {
		return nil, err
	}
	owner := make(map[string]string)
	for _, d := range disks {
		for _, id := range jobIDsOf(d) {
			if _, taken := owner[id]; !taken {
				owner[id] = d.Name()
			}
		}
	}
	for disk, ids := range byGraph {
		for _, id := range ids {
			owner[id] = disk
		}
	}
	out := make(map[string][]jobReport)
	for _, j := range jobs {
		r := jobReport{ID: j.ID, Type: j.Type, Status: j.Status, CurrentProgress: j.CurrentProgress,
			TotalProgress: j.TotalProgress, Error: j.Error}
		for _, b := range bjobs {
			if b.Device == j.ID {
				r.Speed, r.Ready, r.Paused = b.Speed, b.Ready, b.Paused
			}
		}
		out[owner[j.ID]] = append(out[owner[j.ID]], r)
	}
	return out, nil
}

// describeJob is one line about a job: "qchain-commit-vda: commit running,
// 4.0 MiB of 16 MiB (25%), limit 1.0 MiB/s".
func describeJob(j jobReport) string {
	s := fmt.Sprintf("%s: %s %s", j.ID, j.Type, j.Status)
	if j.Paused && j.Status != qmp.JobPaused && j.Status != qmp.JobStandby {
		s += " (paused)"
	}
	if j.TotalProgress > 0 {
		s += fmt.Sprintf(", %s of %s (%d%%)", humanize.IBytes(uint64(j.CurrentProgress)),
			humanize.IBytes(uint64(j.TotalProgress)), j.CurrentProgress*100/j.TotalProgress)
	}
	if j.Speed > 0 {
		s += fmt.Sprintf(", limit %s/s", humanize.IBytes(uint64(j.Speed)))
	}
	if j.Error != "" {
		s += ", error: " + j.Error
	}
	return s
}

// jobRequest is a job that blockpull, blockcommit or blockcopy starts.
type jobRequest struct {
	label   string // the disk, for messages
	what    string // "commit of snap1.qcow2 into base.qcow2", for messages
	starter qmp.JobStarter
	id      string
	onReady qmp.ReadyAction
	// readyHint says how to finish a job left ready.
	readyHint string
}

// jobWait holds the waiting options shared by the job commands and
// blockjob.
type jobWait struct {
	wait    bool
	verbose bool
	timeout time.Duration
}

func jobWaitOf(c *cli.Context) (jobWait, error) {
	to, err := timeoutOf(c)
	if err != nil {
		return jobWait{}, err
	}
	return jobWait{wait: c.Bool("wait") || to > 0, verbose: c.Bool("verbose"), timeout: to}, nil
}

// checkIdle refuses a disk that has a job in progress, and dismisses a
// concluded job that holds the id the new job needs (a job started
// without --wait ends concluded until someone dismisses it).
func checkIdle(ctx context.Context, c *cli.Context, t *blockTarget, disks []qmp.Disk, d qmp.Disk, req *jobRequest) error {
	jobs, err := allJobs(ctx, t.conn, disks)
	if err != nil {
		return fmt.Errorf("%s: %w", req.label, err)
	}
	for _, j := range jobs[d.Name()] {
		if j.Status == qmp.JobConcluded {
			if j.ID != req.id {
				continue
			}
			if err := t.conn.JobDismiss(ctx, j.ID); err != nil {
				return fmt.Errorf("%s: dismissing the finished job %s: %w", req.label, j.ID, err)
			}
			outcome := "had succeeded"
			if j.Error != "" {
				outcome = "had failed: " + j.Error
			}
			fmt.Fprintf(c.App.ErrWriter, "qchain: note: dismissed the finished job %s, which %s\n", j.ID, outcome)
			continue
		}
		return fmt.Errorf("%s: busy with block job %s; see qchain blockjob --qmp %s --info %s",
			req.label, describeJob(j), t.socket, d.Name())
	}
	return nil
}

// startJob starts req's job, after checking the disk is idle.
func startJob(ctx context.Context, c *cli.Context, t *blockTarget, disks []qmp.Disk, d qmp.Disk, req *jobRequest) (*qmp.Job, error) {
	if err := checkIdle(ctx, c, t, disks, d, req); err != nil {
		return nil, err
	}
	job, err := qmp.StartJob(ctx, t.conn, req.starter)
	if err != nil {
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return nil, fmt.Errorf("%s: cannot start the %s: %s", req.label, req.what, qe.Desc)
		}
		return nil, fmt.Errorf("%s: cannot start the %s: %w", req.label, req.what, err)
	}
	return job, nil
}

// waitJob drives job to its end with a progress bar, a timeout and a clean
// abort on SIGINT/SIGTERM (ctx comes from signalContext). It turns the
// ways a job can end into one line naming the disk and the job.
func waitJob(ctx context.Context, c *cli.Context, t *blockTarget, job *qmp.Job, label, what string, onReady qmp.ReadyAction, w jobWait) (*qmp.JobResult, error) {
	wctx := ctx
	if w.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, w.timeout)
		defer cancel()
	}
	opts := qmp.WaitOptions{OnReady: onReady}
	var bar *progressBar
	if w.verbose {
		bar = newProgressBar(c.App.ErrWriter, what)
		opts.Progress = bar.update
	}
	res, err := job.Wait(wctx, opts)
	if bar != nil {
		bar.finish(err == nil)
	}
	if err == nil {
		return res, nil
	}
	var je *qmp.JobError
	switch {
	case errors.Is(err, qmp.ErrJobAborted) && errors.Is(err, context.DeadlineExceeded):
		return res, &jobEndError{fmt.Sprintf("%s: gave up after --timeout %v: the %s (job %s) was aborted cleanly", label, w.timeout, what, job.ID()), err}
	case errors.Is(err, qmp.ErrJobAborted) && errors.Is(err, context.Canceled):
		return res, exitCode(exitInterrupted, &jobEndError{fmt.Sprintf("%s: interrupted: the %s (job %s) was aborted cleanly", label, what, job.ID()), err})
	case errors.Is(err, qmp.ErrJobAborted):
		return res, &jobEndError{fmt.Sprintf("%s: the %s (job %s) was aborted", label, what, job.ID()), err}
	case errors.As(err, &je):
		return res, &jobEndError{fmt.Sprintf("%s: the %s failed (job %s): %s", label, what, job.ID(), je.Msg), err}
	case errors.Is(err, qmp.ErrClosed):
		who := "QEMU"
		if t.offline() {
			who = "qemu-storage-daemon"
		}
		return res, &jobEndError{fmt.Sprintf("%s: the %s did not finish: %s went away during job %s (%v)", label, what, who, job.ID(), closeCause(err)), err}
	case errors.Is(err, qmp.ErrJobNotFound):
		return res, &jobEndError{fmt.Sprintf("%s: job %s of the %s disappeared: another client dismissed it (its result is unknown; check the chain with qchain disks)", label, job.ID(), what), err}
	case ctx.Err() != nil || wctx.Err() != nil:
		return res, exitCode(exitInterrupted, fmt.Errorf("%s: interrupted while aborting the %s (job %s): %w; see qchain blockjob --info", label, what, job.ID(), err))
	}
	return res, fmt.Errorf("%s: the %s (job %s): %w", label, what, job.ID(), err)
}

// jobEndError is a job's end told in one line; Unwrap keeps the cause
// (ErrJobAborted, *qmp.JobError, ErrClosed) for errors.Is and errors.As.
type jobEndError struct {
	msg   string
	cause error
}

func (e *jobEndError) Error() string { return e.msg }
func (e *jobEndError) Unwrap() error { return e.cause }

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

// readyMessage is what a job left ready says.
func readyMessage(label, id, hint string) string {
	return fmt.Sprintf("%s: job %s is ready (in sync); %s", label, id, hint)
}

// removeFiles deletes files after a commit, refusing any that a disk's
// chain still uses (inUse).
func removeFiles(c *cli.Context, label string, files []string, inUse []string) error {
	for _, f := range files {
		if slices.ContainsFunc(inUse, func(u string) bool { return sameFile(f, u) }) {
			return fmt.Errorf("%s: not deleting %s: it is still in use in a chain", label, f)
		}
	}
	for _, f := range files {
		if err := removeSynced(f); err != nil {
			return fmt.Errorf("%s: deleting %s: %w", label, f, err)
		}
		fmt.Fprintf(c.App.Writer, "Deleted %s\n", f)
	}
	return nil
}

// removeSynced removes a file and syncs its folder, so that the removal
// is on disk once the command says it is done.
func removeSynced(name string) error {
	if err := os.Remove(name); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
