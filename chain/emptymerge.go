package chain

import (
	"fmt"
	"path/filepath"

	"github.com/qchain/qchain/qcow2"
)

// emptyMerge runs a pull or commit step natively when the reader shows it
// has nothing to copy: a commit whose top allocates nothing leaves its base
// as it is, and a pull through layers of which the pulled image reads
// nothing is a rewrite of its backing name (qcow2.Rebase, as `qemu-img
// rebase -u`). Starting a qemu-storage-daemon to copy nothing takes longer
// than the rest of such an operation. done is false when the step has data
// to move (or is not plainly such a merge): the caller runs the block job.
//
// It measures again rather than trusting the plan's byte counts, so a step
// run again by Recover (after a block job stopped half way, say) takes the
// job whenever anything is left to copy. Every layer involved must have the
// pulled or committed image's virtual size: past a smaller layer's end QEMU
// reads zeros, which a backing file rewrite would not keep.
func emptyMerge(s Step) (done bool, err error) {
	switch s.Kind {
	case StepCommit:
		return emptyCommit(s)
	case StepPull:
		return emptyPull(s)
	}
	return false, nil
}

func emptyCommit(s Step) (bool, error) {
	c, err := qcow2.OpenChain(s.Top, qcow2.ChainOptions{})
	if err != nil {
		return false, nil
	}
	defer c.Close()
	if len(c.Layers) < 2 || c.Layers[0].Format() != "qcow2" || !sameFile(layerPath(c, 1), s.Base) ||
		c.Layers[1].Size() != c.Layers[0].Size() {
		return false, nil
	}
	stats, err := c.Stats()
	if err != nil {
		return false, err
	}
	// Zero clusters count as allocated: they hide the base's data.
	if stats[0].AllocatedBytes != 0 {
		return false, nil
	}
	// The job would have failed on QEMU's locks of a file a process
	// holds; so does the step that copies nothing.
	for _, f := range []string{s.Top, s.Base} {
		if busy, err := qcow2.InUse(f); err != nil || busy {
			if err == nil {
				err = fmt.Errorf("%s is %w", f, qcow2.ErrInUse)
			}
			return false, err
		}
	}
	return true, nil
}

func emptyPull(s Step) (bool, error) {
	c, err := qcow2.OpenChain(s.File, qcow2.ChainOptions{})
	if err != nil {
		return false, nil
	}
	stop := len(c.Layers) // the layers 1..stop-1 are pulled
	if s.Base != "" {
		stop = -1
		for d := 1; d < len(c.Layers); d++ {
			if sameFile(layerPath(c, d), s.Base) {
				stop = d
				break
			}
		}
	}
	empty := stop >= 1 && c.Layers[0].Format() == "qcow2"
	for d := 1; empty && d < stop; d++ {
		empty = c.Layers[d].Size() == c.Layers[0].Size()
	}
	if empty && stop > 1 {
		stats, err := c.Stats()
		if err != nil {
			c.Close()
			return false, err
		}
		for d := 1; d < stop; d++ {
			empty = empty && stats[d].VisibleBytes == 0
		}
	}
	c.Close()
	if !empty {
		return false, nil
	}
	backing, format := s.Backing, s.BackingFmt
	if s.Base == "" {
		backing, format = "", ""
	}
	return true, qcow2.Rebase(s.File, backing, format)
}

// layerPath is the absolute path of layer d of c.
func layerPath(c *qcow2.Chain, d int) string {
	p, err := filepath.Abs(c.Layers[d].Filename())
	if err != nil {
		return c.Layers[d].Filename()
	}
	return p
}
