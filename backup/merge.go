package backup

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qcow2"
)

// MergeOptions configure Merge. The zero value uses the storage daemon
// from PATH.
type MergeOptions struct {
	// StorageDaemon is the qemu-storage-daemon program.
	StorageDaemon string
	// Progress, when set, receives each disk's job progress.
	Progress func(target string, current, total int64)
	// Notes, when set, receives one-line notes: leftovers removed.
	Notes io.Writer
	// BeforeStep is a test hook, as CreateOptions.BeforeStep: called
	// before each step that changes DIR, it stops Merge there as if its
	// process had died when it returns an error.
	BeforeStep func(step string) error
}

func (o *MergeOptions) step(name string) error {
	if o.BeforeStep == nil {
		return nil
	}
	return o.BeforeStep(name)
}

// Merge keeps the keep newest points of dir and drops the older ones:
// the oldest point kept becomes full, by pulling the older points' data
// into its files (block-stream on a storage daemon, which then drops their
// backing file), and the dropped points' files are removed. The numbers of
// the points kept do not change. It returns the point merged into and the
// numbers dropped (none when there are no more than keep points).
//
// Pulling does not change what a point's file reads, so every point stays
// readable if Merge stops half way; the index records the merge first, and
// Merge run again (or any command that finds it) finishes it. Like Create,
// Merge first removes what an interrupted run left (the files of points
// dropped from the index by a merge that stopped there), and says so.
func Merge(ctx context.Context, dir string, keep int, opts MergeOptions) (into int64, dropped []int64, err error) {
	if keep < 1 {
		return 0, nil, fmt.Errorf("merge: --keep must be at least 1")
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return 0, nil, err
	}
	defer unlock()
	x, err := ReadIndex(dir)
	if err != nil {
		return 0, nil, err
	}
	// A merge that stopped after it rewrote the index left the dropped
	// points' files: with nothing more to merge, they would stay until
	// the next backup.
	removed, err := removeLeftovers(dir, x)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: removing what an interrupted run left: %w", dir, err)
	}
	if len(removed) > 0 && opts.Notes != nil {
		fmt.Fprintf(opts.Notes, "%s: an interrupted run left %s: removed\n", dir, strings.Join(removed, ", "))
	}
	m := x.Merging
	redo := m != 0
	if !redo {
		if len(x.Points) <= keep {
			return 0, nil, nil
		}
		m = x.Points[len(x.Points)-keep].Point
		p := x.Point(m)
		for _, d := range p.Disks {
			if _, err := pointChain(dir, x, m, d.Target); err != nil {
				return 0, nil, fmt.Errorf("merge: %w", err)
			}
		}
		x.Merging = m
		if err := opts.step("record the merge into point " + strconv.FormatInt(m, 10)); err != nil {
			return 0, nil, err
		}
		if err := writeIndex(dir, x); err != nil {
			return 0, nil, err
		}
	}
	p := x.Point(m)
	for _, d := range p.Disks {
		name := filepath.Join(dir, d.File)
		c, err := qcow2.OpenChain(name, qcow2.ChainOptions{Root: dir})
		if err != nil {
			return 0, nil, fmt.Errorf("merge: point %d disk %s: %w", m, d.Target, err)
		}
		layers := len(c.Layers)
		c.Close()
		if layers == 1 {
			continue
		}
		ex := &chain.Offline{Ctx: ctx, StorageDaemon: opts.StorageDaemon}
		if opts.Progress != nil {
			target := d.Target
			ex.Progress = func(_ chain.Step, cur, total int64) { opts.Progress(target, cur, total) }
		}
		if err := opts.step("pull into " + d.File); err != nil {
			return 0, nil, err
		}
		if err := ex.Run(chain.Step{Kind: chain.StepPull, File: name}); err != nil {
			return 0, nil, fmt.Errorf("merge: pulling into %s: %w", name, err)
		}
	}
	for _, q := range x.Points {
		if q.Point < m {
			dropped = append(dropped, q.Point)
		}
	}
	for i := range p.Disks {
		d := &p.Disks[i]
		name := filepath.Join(dir, d.File)
		if err := syncFile(name); err != nil {
			return 0, nil, err
		}
		if d.SHA256, err = fileSHA256(context.Background(), name); err != nil {
			return 0, nil, err
		}
		st, err := os.Stat(name)
		if err != nil {
			return 0, nil, err
		}
		d.Bytes = st.Size()
	}
	if p.Kind == Incremental {
		p.Kind = Full
		p.Reason = fmt.Sprintf("merged with points %d to %d", dropped[0], dropped[len(dropped)-1])
	}
	kept := *p
	var points []Point
	for _, q := range x.Points {
		if q.Point == m {
			points = append(points, kept)
		} else if q.Point > m {
			points = append(points, q)
		}
	}
	x.Points, x.Merging = points, 0
	if err := opts.step("write index"); err != nil {
		return 0, nil, err
	}
	if err := writeIndex(dir, x); err != nil {
		return 0, nil, err
	}
	if err := opts.step("remove the dropped points' files"); err != nil {
		return 0, nil, err
	}
	if _, err := removeLeftovers(dir, x); err != nil {
		return m, dropped, fmt.Errorf("merge: removing the files of the dropped points: %w", err)
	}
	return m, dropped, nil
}
