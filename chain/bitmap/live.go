package bitmap

import (
	"context"
	"fmt"
	"os"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/qchain/qchain/qmp"
)

func applyLive(ctx context.Context, disk string, req Request, opts Options) (*Plan, error) {
	t, err := blockjob.Open(ctx, blockjob.TargetOptions{QMP: opts.QMP, Notes: opts.Notes})
	if err != nil {
		return nil, err
	}
	defer t.Close()
	d, node, err := liveDisk(ctx, t, disk)
	if err != nil {
		return nil, err
	}
	label := t.Label(d)
	all, err := t.Conn().NodeBitmaps(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	planReq := req
	srcNode := d.NodeName
	var sourceStates []State
	if req.SourceFile != "" {
		if srcNode, err = liveSourceNode(ctx, t, req.SourceFile); err != nil {
			return nil, err
		}
		if srcNode == d.NodeName {
			planReq.SourceFile = ""
		} else {
			sourceStates = liveStates(all[srcNode])
		}
	}
	p, err := NewPlan(planReq, liveStates(all[d.NodeName]), sourceStates, DefaultGranularity(uint64(node.Image.ClusterSize)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	p.Request = req
	if done, err := run(ctx, t.Conn(), p, d.NodeName, srcNode); err != nil {
		return nil, partial(label, p, done, err)
	}
	return p, nil
}

// liveDisk finds the disk called name and its active layer's node, which
// must be a qcow2 image to hold persistent bitmaps.
func liveDisk(ctx context.Context, t *blockjob.Target, name string) (blockjob.Disk, qmp.BlockDeviceInfo, error) {
	d, err := t.FindDisk(ctx, name)
	if err != nil {
		return d, qmp.BlockDeviceInfo{}, err
	}
	nodes, err := t.Conn().QueryNamedBlockNodes(ctx)
	if err != nil {
		return d, qmp.BlockDeviceInfo{}, fmt.Errorf("%s: %w", t, err)
	}
	for _, n := range nodes {
		if n.NodeName != d.NodeName {
			continue
		}
		if n.Driver != "qcow2" {
			return d, n, fmt.Errorf("%s: its active layer %s is a %s image: persistent bitmaps are stored only in qcow2 images", t.Label(d), n.File, n.Driver)
		}
		return d, n, nil
	}
	return d, qmp.BlockDeviceInfo{}, fmt.Errorf("%s: node %s of disk %s is not listed by query-named-block-nodes", t, d.NodeName, d.Name())
}

// liveSourceNode resolves a merge's source (-b) in a running QEMU: a
// layer of any disk's chain by node name or file, else a disk by name
// (its active layer).
func liveSourceNode(ctx context.Context, t *blockjob.Target, source string) (string, error) {
	disks, err := t.Disks(ctx)
	if err != nil {
		return "", err
	}
	for _, d := range disks {
		for _, l := range d.Chain {
			if l.NodeName == source {
				return l.NodeName, nil
			}
		}
	}
	if _, err := os.Stat(source); err == nil {
		for _, d := range disks {
			for _, l := range d.Chain {
				if sameFile(source, l.Filename) {
					return l.NodeName, nil
				}
			}
		}
	}
	d, err := t.FindDisk(ctx, source)
	if err != nil {
		return "", fmt.Errorf("-b %s: not a disk of %s, nor a layer of a disk's chain", source, t)
	}
	return d.NodeName, nil
}

// liveStates turns QEMU's list of a node's bitmaps into states.
func liveStates(bms []qmp.DirtyBitmapInfo) []State {
	var out []State
	for _, b := range bms {
		out = append(out, State{Name: b.Name, Granularity: b.Granularity, Enabled: b.Recording,
			Inconsistent: b.Inconsistent, Busy: b.Busy})
	}
	return out
}
