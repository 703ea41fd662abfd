package bitmap

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// Flags of Info.Flags: the image's own in qemu-img info's words, and
// "inconsistent".
const (
	FlagInUse        = "in-use"
	FlagAuto         = "auto"
	FlagInconsistent = "inconsistent"
)

// Info is one persistent bitmap as List reports it: what an incremental
// backup needs to know before it trusts the bitmap.
type Info struct {
	Name        string `json:"name"`
	Granularity uint64 `json:"granularity"`
	// Flags are the bitmap's flags as the image holds them ("in-use",
	// "auto"), and "inconsistent" for an in-use bitmap that no running
	// QEMU holds: it was not stored cleanly, and QEMU will only remove it.
	// Live, a persistent bitmap is "in-use" in its image while QEMU has it
	// open, and "auto" while it records.
	Flags []string `json:"flags"`
	// Recording is true for an enabled bitmap (the "auto" flag).
	Recording bool `json:"recording"`
	// Persistent bitmaps are stored in the image; live, QEMU may also
	// hold bitmaps it will not store.
	Persistent bool `json:"persistent"`
	// Busy is true while a job of a running QEMU uses the bitmap.
	Busy bool `json:"busy"`
	// Count is the number of dirty bytes: set bits times the granularity.
	// Nil when the image's copy cannot be trusted: an in-use bitmap,
	// changing in a running QEMU (ask it with Options.QMP) or
	// inconsistent.
	Count *uint64 `json:"count"`
}

// Inconsistent reports whether the bitmap carries FlagInconsistent.
func (i Info) Inconsistent() bool {
	for _, f := range i.Flags {
		if f == FlagInconsistent {
			return true
		}
	}
	return false
}

// List returns the persistent bitmaps of the image file name, read
// natively (no lock, no write: it works on an image in use), with their
// dirty byte counts; with opts.QMP, the bitmaps of the disk called name of
// a running QEMU as it reports them. An image that is not qcow2 has none.
func List(ctx context.Context, name string, opts Options) ([]Info, error) {
	if opts.QMP != "" {
		return listLive(ctx, name, opts)
	}
	f, err := qcow2.Open(name)
	if errors.Is(err, qcow2.ErrNotQcow2) {
		return []Info{}, nil
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such image (give --qmp SOCKET for a disk of a running VM)", name)
		}
		return nil, err
	}
	defer f.Close()
	bms, err := f.Bitmaps()
	if err != nil {
		return nil, err
	}
	held := false
	if len(bms) > 0 {
		// An error here (no permission to ask) leaves held false: the
		// in-use bitmaps are then called inconsistent, QEMU's view of an
		// image it opens.
		held, _ = qcow2.InUse(name)
	}
	out := []Info{}
	for i := range bms {
		b := &bms[i]
		in := Info{Name: b.Name, Granularity: b.Granularity(), Flags: []string{},
			Recording: b.Flags&qcow2.BitmapAuto != 0, Persistent: true}
		if b.Flags&qcow2.BitmapInUse != 0 {
			in.Flags = append(in.Flags, FlagInUse)
		}
		if in.Recording {
			in.Flags = append(in.Flags, FlagAuto)
		}
		if b.Flags&qcow2.BitmapInUse == 0 {
			n, err := f.BitmapDirtyBytes(b)
			if err != nil {
				return nil, err
			}
			in.Count = &n
		} else if !held {
			in.Flags = append(in.Flags, FlagInconsistent)
		}
		out = append(out, in)
	}
	return out, nil
}

func listLive(ctx context.Context, disk string, opts Options) ([]Info, error) {
	t, err := blockjob.Open(ctx, blockjob.TargetOptions{QMP: opts.QMP, Notes: opts.Notes})
	if err != nil {
		return nil, err
	}
	defer t.Close()
	d, err := t.FindDisk(ctx, disk)
	if err != nil {
		return nil, err
	}
	all, err := t.Conn().NodeBitmaps(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	out := []Info{}
	for _, b := range all[d.NodeName] {
		out = append(out, liveInfo(b))
	}
	return out, nil
}

func liveInfo(b qmp.DirtyBitmapInfo) Info {
	in := Info{Name: b.Name, Granularity: b.Granularity, Flags: []string{}, Recording: b.Recording,
		Persistent: b.Persistent, Busy: b.Busy}
	if b.Persistent {
		in.Flags = append(in.Flags, FlagInUse)
		if b.Recording {
			in.Flags = append(in.Flags, FlagAuto)
		}
	}
	if b.Inconsistent {
		in.Flags = append(in.Flags, FlagInconsistent)
	} else {
		n := b.Count
		in.Count = &n
	}
	return in
}
