package blockjob

import (
	"context"
	"fmt"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/qmp"
)

// jobOps are the operations whose deterministic job ids (qmp.JobID) name
// qchain's jobs on a disk; the snapshot commands use the same ones.
var jobOps = []string{"pull", "commit", "copy"}

// JobStatus is a job as query-jobs reports it, merged with what
// query-block-jobs adds for a block job (its speed limit, whether it is
// ready or paused). The JSON form is what qchain disks and blockjob
// --info print.
type JobStatus struct {
	// ID, Type and Status are query-jobs': "qchain-commit-vda",
	// "commit", "running".
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
	// CurrentProgress and TotalProgress are bytes for block jobs.
	CurrentProgress int64 `json:"current-progress"`
	TotalProgress   int64 `json:"total-progress"`
	// Speed is the job's limit in bytes per second; 0 is none.
	Speed int64 `json:"speed,omitempty"`
	// Ready and Paused are query-block-jobs': in sync, paused by a user.
	Ready  bool `json:"ready,omitempty"`
	Paused bool `json:"paused,omitempty"`
	// Error says why a concluded job failed.
	Error string `json:"error,omitempty"`
}

// String is one line about the job: "qchain-commit-vda: commit running,
// 4.0 MiB of 16 MiB (25%), limit 1.0 MiB/s".
func (j JobStatus) String() string {
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

// jobIDsOf are the ids a job on d may have: qchain's, and the disk's own
// names, which QEMU uses when a job is started without an id.
func jobIDsOf(d qmp.Disk) []string {
	var ids []string
	for _, op := range jobOps {
		ids = append(ids, qmp.JobID(op, d.Name()))
	}
	return append(ids, d.Name(), d.NodeName)
}

// Jobs reads query-jobs and query-block-jobs and attributes each job to
// one of disks (as Disks returned them), keyed by the disk's Name: by the
// block graph, else by its id. Jobs of no disk (a blockdev-create, a job
// on nodes outside every chain) are under "". Errors are QEMU's,
// unwrapped: the caller knows which disk it asked about.
func (t *Target) Jobs(ctx context.Context, disks []qmp.Disk) (map[string][]JobStatus, error) {
	jobs, err := t.conn.QueryJobs(ctx)
	if err != nil {
		return nil, err
	}
	bjobs, err := t.conn.QueryBlockJobs(ctx)
	if err != nil {
		return nil, err
	}
	byGraph, err := qmp.JobsOfDisks(ctx, t.conn, disks)
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
	out := make(map[string][]JobStatus)
	for _, j := range jobs {
		r := JobStatus{ID: j.ID, Type: j.Type, Status: j.Status, CurrentProgress: j.CurrentProgress,
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

// DiskJobs is a disk with the block jobs that run on it, as
// Target.DiskJobs found them; Control acts on them.
type DiskJobs struct {
	// Disk is the disk and its chain.
	Disk qmp.Disk
	// Label names the disk in messages (Target.Label).
	Label string
	// Jobs are the disk's jobs in query-jobs order; none when it is idle.
	Jobs []JobStatus
	// disks are all the target's disks at that moment, to attribute jobs
	// to them again after a change.
	disks []qmp.Disk
}

// DiskJobs finds the disk called name (a backend name, qdev id or QOM
// path, node name, or the path of its active layer; offline the image)
// and reads its jobs.
func (t *Target) DiskJobs(ctx context.Context, name string) (*DiskJobs, error) {
	disks, d, err := t.disk(ctx, name)
	if err != nil {
		return nil, err
	}
	label := t.Label(d)
	byDisk, err := t.Jobs(ctx, disks)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	return &DiskJobs{Disk: d, Label: label, Jobs: byDisk[d.Name()], disks: disks}, nil
}
