package chain

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// Executor runs plan steps.
type Executor interface {
	Run(s Step) error
}

// Offline runs steps on files no process has open: metadata steps natively,
// data moves as block jobs on a private qemu-storage-daemon, merges with
// nothing to copy natively (see emptyMerge).
type Offline struct {
	Ctx context.Context
	// StorageDaemon overrides the qemu-storage-daemon binary.
	StorageDaemon string
	// Progress, when set, receives each data step's progress.
	Progress func(s Step, current, total int64)
	// Live, when set, runs the steps that touch the running VM's chain
	// through its QMP monitor instead (see Live).
	Live *Live

	// carried holds, by disk target, the bitmaps this executor's steps
	// moved to new overlays (see carriedBitmaps).
	carried map[string][]string
}

func (o *Offline) ctx() context.Context {
	if o.Ctx == nil {
		return context.Background()
	}
	return o.Ctx
}

// Run implements Executor.
func (o *Offline) Run(s Step) error {
	if o.Live != nil {
		if handled, err := o.Live.run(o.ctx(), s); handled {
			return err
		}
	}
	switch s.Kind {
	case StepCreateOverlay:
		return createOverlay(s.File, s.Backing, s.BackingFmt)
	case StepCarryBitmaps:
		return o.carryBitmaps(s)
	case StepResumeBitmaps:
		return o.resumeBitmaps(s)
	case StepRebase:
		return qcow2.Rebase(s.File, s.Backing, s.BackingFmt)
	case StepRemove:
		// Under QEMU's lock of the file: one a process opened since the
		// plan was made is refused, not removed from under it.
		if err := qcow2.RemoveUnused(s.File); err != nil {
			return err
		}
		return syncDir(filepath.Dir(s.File))
	case StepPull, StepCommit:
		if !removesBitmaps(s) {
			if done, err := emptyMerge(s); done || err != nil {
				return err
			}
		}
		return o.job(s)
	case StepLiveSnapshot, StepSaveMemory, StepResume, StepInternalSave:
		return fmt.Errorf("the VM is not running: its QMP socket does not answer")
	case StepInternalDelete:
		return o.internalDeleteOffline(s)
	case StepInternalSnapshot:
		return o.internalSnapshotOffline(s)
	case StepInternalApply:
		return internalApply(s)
	}
	return fmt.Errorf("unknown step kind %q", s.Kind)
}

// createOverlay creates file on backing unless it already exists as that
// overlay (a step run again after an interruption).
func createOverlay(file, backing, format string) error {
	if f, err := qcow2.Open(file); err == nil {
		defer f.Close()
		if f.Header.BackingFile == backing {
			return nil
		}
		return fmt.Errorf("%s exists and is not an overlay of %s", file, backing)
	}
	// Made under a temporary name and linked into place, never replacing
	// a file: a qchain killed half-way leaves no partial overlay under
	// the journal's name, only the temporary file, which a rerun of the
	// step replaces.
	tmp := filepath.Join(filepath.Dir(file), "."+filepath.Base(file)+".qchain-new")
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := qcow2.Create(tmp, qcow2.CreateOptions{BackingFile: backing, BackingFormat: format}); err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, file); err != nil {
		return err
	}
	return syncDir(filepath.Dir(file))
}

// graph is the blockdev description of a file's chain, for a storage
// daemon: one node per layer, "l0" the top.
type graph struct {
	blockdevs []any
	nodes     []string
	files     []string
}

// chainGraph describes top's chain; layers deeper than writable are
// opened read-only (a job writes into the top, or the commit base), so
// images other processes share are never locked for writing.
func chainGraph(top string, writable int) (*graph, error) {
	c, err := qcow2.OpenChain(top, qcow2.ChainOptions{})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	g := &graph{}
	n := len(c.Layers)
	for d := n - 1; d >= 0; d-- {
		l := c.Layers[d]
		abs, err := filepath.Abs(l.Filename())
		if err != nil {
			return nil, err
		}
		node := fmt.Sprintf("l%d", d)
		bd := map[string]any{
			"driver":    l.Format(),
			"node-name": node,
			"file":      map[string]any{"driver": "file", "filename": abs},
		}
		if d > writable {
			bd["read-only"] = true
		}
		if l.Format() == "qcow2" {
			if d == n-1 {
				bd["backing"] = nil
			} else {
				bd["backing"] = fmt.Sprintf("l%d", d+1)
			}
		}
		g.blockdevs = append(g.blockdevs, bd)
	}
	for d := 0; d < n; d++ {
		abs, _ := filepath.Abs(c.Layers[d].Filename())
		g.nodes = append(g.nodes, fmt.Sprintf("l%d", d))
		g.files = append(g.files, abs)
	}
	return g, nil
}

// DaemonBlockdevs describes top's chain for a qemu-storage-daemon, as the
// offline executor opens it: one format node per layer with its "file"
// child and absolute filenames, node l0 the top, each qcow2 layer's
// backing the next node and the base's backing explicitly none (so QEMU
// opens exactly the files qchain read), layers deeper than writable
// read-only (jobs reopen what they write; a copy can open the same files
// again as its target's backing). Each element is a --blockdev value.
func DaemonBlockdevs(top string, writable int) ([]any, error) {
	g, err := chainGraph(top, writable)
	if err != nil {
		return nil, err
	}
	return g.blockdevs, nil
}

// node returns the node of file in the graph.
func (g *graph) node(file string) (string, error) {
	st, err := os.Stat(file)
	if err != nil {
		return "", err
	}
	for i, f := range g.files {
		if fst, err := os.Stat(f); err == nil && os.SameFile(st, fst) {
			return g.nodes[i], nil
		}
	}
	return "", fmt.Errorf("%s is not in the chain of %s", file, g.files[0])
}

// job runs a pull or a commit on a private storage daemon.
func (o *Offline) job(s Step) error {
	top := s.File
	if s.Kind == StepCommit {
		top = s.Top
	}
	writable := 0
	if s.Kind == StepCommit {
		writable = 1
	}
	g, err := chainGraph(top, writable)
	if err != nil {
		return err
	}
	ctx := o.ctx()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	d, err := qmp.StartStorageDaemon(startCtx, qmp.StorageDaemonOptions{Binary: o.StorageDaemon, Blockdevs: g.blockdevs, DieWithParent: true})
	cancel()
	if err != nil {
		return err
	}
	defer d.Close(context.Background())
	var starter qmp.JobStarter
	var reenable []qmp.TransactionAction
	switch s.Kind {
	case StepPull:
		js := qmp.BlockStream{JobID: "qchain-pull", Device: g.nodes[0]}
		removed := g.nodes[1:]
		if s.Base != "" {
			if js.BaseNode, err = g.node(s.Base); err != nil {
				return err
			}
			js.BackingFile = s.Backing
			removed = g.nodes[1:slices.Index(g.nodes, js.BaseNode)]
		}
		// The bitmaps of the layers that go are merged into File's;
		// File's recording ones pause meanwhile, so that the data the
		// stream copies (no guest writes offline) marks nothing.
		bms, err := d.Conn.NodeBitmaps(ctx)
		if err != nil {
			return err
		}
		var pause []qmp.TransactionAction
		for _, b := range bms[g.nodes[0]] {
			if b.Persistent && b.Recording && !b.Inconsistent {
				bb := qmp.BlockDirtyBitmap{Node: g.nodes[0], Name: b.Name}
				pause = append(pause, qmp.TransactionAction{Type: qmp.CmdBitmapDisable, Data: bb})
				reenable = append(reenable, qmp.TransactionAction{Type: qmp.CmdBitmapEnable, Data: bb})
			}
		}
		if actions := append(pause, mergeActions(removed, bms, g.nodes[0], true, false)...); len(actions) > 0 {
			if err := d.Conn.Transaction(ctx, actions, nil); err != nil {
				return fmt.Errorf("merging the dirty bitmaps of the layers that go into %s: %w", s.File, err)
			}
		}
		starter = js
	case StepCommit:
		base, err := g.node(s.Base)
		if err != nil {
			return err
		}
		if base != "l1" {
			return fmt.Errorf("commit: %s is not the backing file of %s", s.Base, s.Top)
		}
		starter = qmp.BlockCommit{JobID: "qchain-commit", Device: g.nodes[0], BaseNode: base}
	}
	job, err := qmp.StartJob(ctx, d.Conn, starter)
	if err != nil {
		return err
	}
	opts := qmp.WaitOptions{OnReady: qmp.ReadyPivot}
	if o.Progress != nil {
		opts.Progress = func(cur, total int64) { o.Progress(s, cur, total) }
	}
	if s.Kind == StepCommit {
		// Ready: the data is in Base, which is writable under the job;
		// Top's bitmaps are merged into it before Top goes (after the
		// copy, which so marks nothing).
		opts.OnReady = qmp.ReadyReturn
		if _, err := job.Wait(ctx, opts); err != nil {
			return err
		}
		if err := mergeBitmaps(ctx, d.Conn, g.nodes[:1], g.nodes[1], true, true); err != nil {
			// No pivot: Top stays, and so do its bitmaps.
			job.Wait(ctx, qmp.WaitOptions{OnReady: qmp.ReadyCancel})
			return err
		}
		opts.OnReady = qmp.ReadyPivot
	}
	if _, err := job.Wait(ctx, opts); err != nil {
		return err
	}
	if len(reenable) > 0 {
		if err := d.Conn.Transaction(ctx, reenable, nil); err != nil {
			return fmt.Errorf("enabling the dirty bitmaps of %s again: %w", s.File, err)
		}
	}
	return d.Close(ctx)
}
