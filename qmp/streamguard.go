package qmp

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrConcludedStream reports that DiskChains refused to run because a
// stream job has concluded and is not dismissed yet: QEMU 7.2 (and its
// qemu-storage-daemon) crashes with a segmentation fault on
// query-named-block-nodes in that state, whether the stream succeeded or
// was cancelled (its copy-on-read filter node is gone from the graph but
// still listed). Dismiss the job (Job.Wait does, JobDismiss after reading
// its result) and ask again.
var ErrConcludedStream = errors.New("qmp: a concluded stream job is not dismissed yet (QEMU 7.2 crashes on query-named-block-nodes until it is)")

// ConcludedStreams returns the stream jobs that have concluded and wait to
// be dismissed: while there is one, query-named-block-nodes crashes QEMU
// 7.2.
func ConcludedStreams(ctx context.Context, c *Conn) ([]JobInfo, error) {
	jobs, err := c.QueryJobs(ctx)
	if err != nil {
		return nil, err
	}
	var out []JobInfo
	for _, j := range jobs {
		if j.Type == "stream" && j.Status == JobConcluded {
			out = append(out, j)
		}
	}
	return out, nil
}

// checkNodeQuerySafe fails with ErrConcludedStream, naming the jobs, when
// query-named-block-nodes would crash QEMU.
func checkNodeQuerySafe(ctx context.Context, c *Conn) error {
	js, err := ConcludedStreams(ctx, c)
	if err != nil || len(js) == 0 {
		return err
	}
	ids := make([]string, len(js))
	for i, j := range js {
		ids[i] = j.ID
	}
	return fmt.Errorf("%w: %s", ErrConcludedStream, strings.Join(ids, ", "))
}
