package qcow2

import (
	"container/list"
	"fmt"
)

// SnapshotView returns a read-only view of the image as it was when the
// internal snapshot key (an ID or a name, IDs first, as qemu-img -l looks
// them up) was taken: the snapshot's L1 table and disk size. The view reads
// the same file; unallocated clusters still read through the backing file,
// as `qemu-img convert -l` reads them.
func (f *File) SnapshotView(key string) (*File, error) {
	s, err := f.SnapshotByIDOrName(key)
	if err != nil {
		return nil, err
	}
	cs := f.ClusterSize()
	if s.L1TableOffset%cs != 0 {
		return nil, withFile(f.Name, formatErr(s.Offset, "snapshot %s: L1 table offset %#x is not cluster aligned", s.ID, s.L1TableOffset))
	}
	if uint64(s.L1Size) > MaxL1Bytes/8 {
		return nil, withFile(f.Name, formatErr(s.Offset, "snapshot %s: L1 table too large (%d entries)", s.ID, s.L1Size))
	}
	h := *f.Header
	h.Size = s.DiskSize
	h.L1Size = s.L1Size
	h.L1TableOffset = s.L1TableOffset
	if need := divRoundUp(h.Size, cs*(cs/h.l2EntrySize())); need > uint64(h.L1Size) {
		return nil, withFile(f.Name, formatErr(s.Offset, "snapshot %s: L1 table too small for its disk size %d", s.ID, h.Size))
	}
	v := &File{
		Name:             f.Name,
		Header:           &h,
		Geo:              f.Geo,
		r:                f.r,
		size:             f.size,
		DataFileResolver: f.DataFileResolver,
		l2:               make(map[uint64]*list.Element),
	}
	if _, err := v.L1(); err != nil {
		return nil, err
	}
	return v, nil
}

// WithSnapshot returns a chain whose top layer reads the internal snapshot
// key of the top image instead of its current state.
func (c *Chain) WithSnapshot(key string) (*Chain, error) {
	top, ok := c.Layers[0].(*File)
	if !ok {
		return nil, fmt.Errorf("%s: %s images have no internal snapshots", c.Layers[0].Filename(), c.Layers[0].Format())
	}
	v, err := top.SnapshotView(key)
	if err != nil {
		return nil, err
	}
	layers := append([]Layer{v}, c.Layers[1:]...)
	return &Chain{Layers: layers, Probed: c.Probed}, nil
}
