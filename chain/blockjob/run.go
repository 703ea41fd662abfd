package blockjob

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// RunOptions configure Run. The zero value starts the job unthrottled and
// returns at once if the plan allows it (live, no pivot, finish or delete
// asked); offline Run always waits.
type RunOptions struct {
	// Bandwidth limits the job, in bytes per second; 0 is unlimited.
	Bandwidth int64
	// Wait drives the job to its end, or until it is ready when the plan
	// leaves a ready job to the caller. Without it a live job keeps
	// running in QEMU; a stream or intermediate commit then waits in
	// "pending" (auto-finalize is off), a copy or active commit in
	// "ready" (QEMU finalizes it once completed), until Control decides.
	Wait bool
	// WaitOptions bound and follow the wait.
	WaitOptions
}

// Outcome is how far Run or Control took a job.
type Outcome int

const (
	// Started means Run started the job and did not wait for it.
	Started Outcome = iota
	// Ready means the job is in sync and waits for a pivot or an abort
	// (Target.ReadyHint says how).
	Ready
	// Completed means the job ended and its change is in place.
	Completed
	// Aborted means Control aborted the job as asked; nothing changed.
	Aborted
	// Adjusted means Control paused, resumed or re-limited the job,
	// which goes on; ControlResult.Jobs lists the disk's jobs afterwards.
	Adjusted
)

// Result is what Run did.
type Result struct {
	// Outcome is Started, Ready or Completed.
	Outcome Outcome
	// JobID is the job's id.
	JobID string
	// Chain is the disk's chain after a completed job, top first: live as
	// QEMU shows it, offline read from the files (nodes l0, l1, ...).
	Chain []qmp.ChainLayer
	// KeptActive is set when a live pivot left the disk on its old
	// active layer, which it names: QEMU 7.2 replaces a node in its
	// parents only, and a -blockdev root that no device uses has none.
	// The data is complete in Plan.NewTop all the same.
	KeptActive string
	// Removed are the files of Plan.Remove that Run deleted.
	Removed []string
}

// Run starts p's job on t after checking that the disk is idle, and
// unless told not to waits for it: until it completes, or is ready when
// p.OnReady says to return then. ctx cancelled (SIGINT in the CLI) aborts
// the job cleanly before Run returns. Offline, Run closes t once the job
// has completed, because only then are the files flushed and closed, and
// reads the new chain from them.
//
// Run returns a nil Result with an error when the job did not start or
// did not end as asked (an *EndError for the ways a job ends), and
// otherwise a Result that says how far the job got. After a completed job
// it returns the Result even when deleting p.Remove failed, with that
// error; Result.Removed lists what was deleted before.
func (t *Target) Run(ctx context.Context, p *Plan, opts RunOptions) (*Result, error) {
	setSpeed(p.starter, opts.Bandwidth)
	job, err := t.start(ctx, p)
	if err != nil {
		if p.created != "" {
			_ = os.Remove(p.created)
		}
		return nil, err
	}
	res := &Result{Outcome: Started, JobID: job.ID()}
	if !opts.Wait && opts.Timeout <= 0 && !p.wait && !t.Offline() {
		return res, nil
	}
	jr, err := t.wait(ctx, job, p.Label, p.What, p.OnReady, opts.WaitOptions)
	if err == nil && jr.Status == qmp.JobReady {
		res.Outcome = Ready
		return res, nil
	}
	t.releaseTargets(ctx)
	if err != nil {
		return nil, err
	}
	if t.Offline() {
		// Quit the daemon first: the files are closed and flushed once
		// it has exited, and only then is the result on disk.
		if err := t.Close(); err != nil {
			return nil, fmt.Errorf("%s: the %s finished but qemu-storage-daemon did not quit cleanly: %w", p.Label, p.What, err)
		}
	}
	chain, inUse, err := t.chainAfter(ctx, p.Disk, p.NewTop)
	if err != nil {
		return nil, fmt.Errorf("%s: the %s finished, but reading the chain again failed: %w", p.Label, p.What, err)
	}
	res.Outcome = Completed
	res.Chain = chain
	if !t.Offline() && p.OnReady == qmp.ReadyPivot && len(chain) > 0 && !sameFile(chain[0].Filename, p.NewTop) {
		res.KeptActive = chain[0].Filename
	}
	if len(p.Remove) > 0 {
		res.Removed, err = removeFiles(p.Label, p.Remove, inUse)
	}
	return res, err
}

func setSpeed(s qmp.JobStarter, speed int64) {
	switch a := s.(type) {
	case *qmp.BlockStream:
		a.Speed = speed
	case *qmp.BlockCommit:
		a.Speed = speed
	case *qmp.DriveMirror:
		a.Speed = speed
	case *qmp.BlockdevMirror:
		a.Speed = speed
	}
}

// start starts p's job, after checking the disk is idle.
func (t *Target) start(ctx context.Context, p *Plan) (*qmp.Job, error) {
	if err := t.checkIdle(ctx, p); err != nil {
		return nil, err
	}
	if p.target != nil {
		if err := t.conn.BlockdevAdd(ctx, p.target); err != nil {
			return nil, fmt.Errorf("%s: cannot open the copy's target %s: %w", p.Label, p.created, qmpDesc(err))
		}
	}
	job, err := qmp.StartJob(ctx, t.conn, p.starter)
	if err != nil {
		if p.target != nil {
			t.releaseTargets(ctx)
		}
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return nil, fmt.Errorf("%s: cannot start the %s: %s", p.Label, p.What, qe.Desc)
		}
		return nil, fmt.Errorf("%s: cannot start the %s: %w", p.Label, p.What, err)
	}
	return job, nil
}

// checkIdle refuses a disk that has a job in progress, and dismisses a
// concluded job that holds the id the new job needs (a job started
// without waiting ends concluded until someone dismisses it).
func (t *Target) checkIdle(ctx context.Context, p *Plan) error {
	jobs, err := t.Jobs(ctx, p.disks)
	if err != nil {
		return fmt.Errorf("%s: %w", p.Label, err)
	}
	for _, j := range jobs[p.Disk.Name()] {
		if j.Status == qmp.JobConcluded {
			if j.ID != p.JobID {
				continue
			}
			if err := t.conn.JobDismiss(ctx, j.ID); err != nil {
				return fmt.Errorf("%s: dismissing the finished job %s: %w", p.Label, j.ID, err)
			}
			outcome := "had succeeded"
			if j.Error != "" {
				outcome = "had failed: " + j.Error
			}
			fmt.Fprintf(t.notes, "qchain: note: dismissed the finished job %s, which %s\n", j.ID, outcome)
			continue
		}
		return fmt.Errorf("%s: busy with block job %s; see qchain blockjob --qmp %s --info %s",
			p.Label, j, t.socket, p.Disk.Name())
	}
	return nil
}

// Chain reads d's chain again, top first, after a job changed it: live
// as QEMU now shows it, offline from the image's files.
func (t *Target) Chain(ctx context.Context, d qmp.Disk) ([]qmp.ChainLayer, error) {
	top := ""
	if t.Offline() {
		top = t.image
	}
	chain, _, err := t.chainAfter(ctx, d, top)
	return chain, err
}

// chainAfter reads the disk's chain after a job and every file a chain
// still uses: live from QEMU, offline from the files (newTop's chain).
func (t *Target) chainAfter(ctx context.Context, d qmp.Disk, newTop string) ([]qmp.ChainLayer, []string, error) {
	if t.Offline() {
		ch, err := qcow2.OpenChain(newTop, qcow2.ChainOptions{})
		if err != nil {
			return nil, nil, err
		}
		defer ch.Close()
		var layers []qmp.ChainLayer
		var files []string
		for i, l := range ch.Layers {
			abs, _ := filepath.Abs(l.Filename())
			layers = append(layers, qmp.ChainLayer{NodeName: fmt.Sprintf("l%d", i), Filename: abs, Format: l.Format()})
			files = append(files, abs)
		}
		return layers, files, nil
	}
	disks, err := t.Disks(ctx)
	if err != nil {
		return nil, nil, err
	}
	var files []string
	var chain []qmp.ChainLayer
	for _, x := range disks {
		for _, l := range x.Chain {
			files = append(files, l.Filename)
		}
	}
	// A disk behind a guest device is found by the device: a pivot moves
	// the device to the new top, while a -blockdev node the user made
	// stays in the graph under its old name with its old chain.
	key := d.Name()
	if d.QDev != "" {
		key = d.QDev
	}
	if nd := matchDisk(disks, key); nd != nil {
		chain = nd.Chain
	} else if nd := matchDisk(disks, newTop); nd != nil {
		chain = nd.Chain
	}
	return chain, files, nil
}

// removeFiles deletes files after a commit, refusing all of them if a
// disk's chain still uses any (inUse), and returns those it deleted.
func removeFiles(label string, files []string, inUse []string) ([]string, error) {
	for _, f := range files {
		if slices.ContainsFunc(inUse, func(u string) bool { return sameFile(f, u) }) {
			return nil, fmt.Errorf("%s: not deleting %s: it is still in use in a chain", label, f)
		}
	}
	var removed []string
	for _, f := range files {
		if err := removeSynced(f); err != nil {
			return removed, fmt.Errorf("%s: deleting %s: %w", label, f, err)
		}
		removed = append(removed, f)
	}
	return removed, nil
}

// removeSynced removes a file and syncs its folder, so that the removal
// is on disk once the caller says it is done.
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

// copyTargetPrefix starts the name of every node a live shallow copy
// mirrors into (copyTargetName).
const copyTargetPrefix = "qchain-target-"

// copyTargetName is the node a live shallow copy with job id jobID mirrors
// into: qchain adds it, on DEST and with the disk's own backing node.
func copyTargetName(jobID string) string { return qmp.NodeName("target", jobID) }

// releaseTimeout bounds releaseTargets, which runs whatever happened to
// the caller's context.
const releaseTimeout = 30 * time.Second

// releaseTargets deletes the copy target nodes qchain added that nothing
// uses any more, after a job ended: the target of a copy that ended
// without a pivot (so DEST is closed, complete), or that failed, and one
// a later job took out of its disk's chain. QEMU refuses to delete a node
// in use (a disk's active layer, a backing file, a running job's target):
// those stay, and the refusal is no error.
func (t *Target) releaseTargets(ctx context.Context) {
	if t.Offline() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	nodes, err := t.conn.QueryNamedBlockNodes(ctx)
	if err != nil {
		return
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, copyTargetPrefix) {
			_ = t.conn.BlockdevDel(ctx, n.NodeName)
		}
	}
}
