package qcow2

import (
	"fmt"
	"io"
)

// BlockStatus is the status of a run of guest bytes through a whole chain,
// as QEMU's bdrv_block_status walk in `qemu-img map` reports it.
type BlockStatus struct {
	Start, Length uint64
	// Depth is the index of the layer that decides the content: the first
	// layer from the top where the run is allocated (data or zero), or the
	// layer where the walk stopped.
	Depth     int
	Present   bool // allocated in layer Depth
	Zero      bool // reads as zeros
	Data      bool // holds data (possibly also zero)
	HasOffset bool // Offset is valid
	Offset    uint64
	// Extent is layer Depth's own extent the run lies in.
	Extent Extent
}

// Walker computes the block status of a chain run after run. It keeps one
// cursor per layer, so walking the image in order reads each L2 table once.
// A Walker is not safe for concurrent use; make one per goroutine.
type Walker struct {
	c   *Chain
	cur []Extent
	// sizes and files cache each layer's size and, for qcow2 layers, its
	// *File, out of the per-run path.
	sizes []uint64
	files []*File
	// tc holds each qcow2 layer's current L2 table privately; nil for
	// walkers made for one random read, which use the shared cache.
	tc []TableCursor
	// MetadataPrealloc per layer: ask the host file about holes (QEMU does
	// this for images it detects as preallocated with metadata only).
	prealloc []int8
}

// NewWalker returns a Walker over the chain.
func (c *Chain) NewWalker() *Walker {
	w := c.newWalker()
	w.tc = make([]TableCursor, len(c.Layers))
	return w
}

func (c *Chain) newWalker() *Walker {
	n := len(c.Layers)
	w := &Walker{c: c, cur: make([]Extent, n), sizes: make([]uint64, n), files: make([]*File, n), prealloc: make([]int8, n)}
	for d, l := range c.Layers {
		w.sizes[d] = l.Size()
		w.files[d], _ = l.(*File)
	}
	return w
}

// fill makes w.cur[d] layer d's extent covering pos, scanning at most to
// end (qcow2 layers with a cursor scan at least to the end of the L2 table
// at hand: a longer run stays cached for the next positions instead of
// being recomputed piece by piece).
func (w *Walker) fill(d int, pos, end uint64) error {
	var e Extent
	var err error
	if f := w.files[d]; f != nil && w.tc != nil {
		span := f.l2Entries() << f.Header.ClusterBits
		scanEnd := max(end, min((pos/span+1)*span, w.sizes[d]))
		e, err = f.extent(pos, scanEnd-pos, &w.tc[d])
	} else {
		e, err = w.c.Layers[d].Extent(pos, end-pos)
	}
	if err != nil {
		return err
	}
	w.cur[d] = e
	return nil
}

// at returns layer d's cached extent rebased to start at pos (which it
// covers).
func (w *Walker) at(d int, pos uint64) Extent {
	e := w.cur[d]
	if e.Type.HasHostOffset() {
		e.HostOffset += pos - e.Start
	}
	e.Length -= pos - e.Start
	e.Start = pos
	return e
}

// Status returns the status of the run that starts at pos and ends at most
// at end (end <= the chain's size).
func (w *Walker) Status(pos, end uint64) (BlockStatus, error) {
	if end > w.sizes[0] || pos >= end {
		return BlockStatus{}, fmt.Errorf("block status of [%#x, %#x) outside the image size %#x", pos, end, w.c.Size())
	}
	limit := end
	above := -1 // the layer above the current one, whose run is unallocated
	for d := range w.cur {
		if d > 0 && pos >= w.sizes[d] {
			// The backing file is shorter: the layer above reads as zeros.
			return w.unallocated(pos, limit, above), nil
		}
		limit = min(limit, w.sizes[d])
		c := &w.cur[d]
		if c.Length == 0 || pos < c.Start || pos-c.Start >= c.Length {
			if err := w.fill(d, pos, limit); err != nil {
				return BlockStatus{}, err
			}
		}
		limit = min(limit, c.Start+c.Length)
		if !c.Type.Allocated() {
			above = d
			continue
		}
		e := w.at(d, pos)
		s := BlockStatus{Start: pos, Length: limit - pos, Depth: d, Present: true, Extent: e}
		switch e.Type {
		case Normal:
			s.Data, s.HasOffset, s.Offset = true, true, e.HostOffset
			if err := w.preallocHoles(d, &s); err != nil {
				return BlockStatus{}, err
			}
		case Compressed:
			s.Data = true
		case ZeroPlain:
			s.Zero = true
		case ZeroAlloc:
			s.Zero, s.HasOffset, s.Offset = true, true, e.HostOffset
		}
		return s, nil
	}
	return w.unallocated(pos, limit, above), nil
}

// unallocated is the status of [pos, limit) when no layer down to and
// including above (or, for a shorter backing file, below it) allocates it:
// zeros, reported at above's depth with its preallocated host offset.
func (w *Walker) unallocated(pos, limit uint64, above int) BlockStatus {
	s := BlockStatus{Start: pos, Length: limit - pos, Depth: max(above, 0), Zero: true}
	if above >= 0 {
		s.Extent = w.at(above, pos)
		if s.Extent.Type == UnallocatedAlloc {
			s.HasOffset, s.Offset = true, s.Extent.HostOffset
		}
	}
	return s
}

// preallocHoles marks data clusters that are holes in the host file as zero
// for images QEMU detects as metadata-preallocated (BDRV_BLOCK_RECURSE).
func (w *Walker) preallocHoles(d int, s *BlockStatus) error {
	f, ok := w.c.Layers[d].(*File)
	if !ok {
		return nil
	}
	if w.prealloc[d] == 0 {
		w.prealloc[d] = -1
		if f.metadataPreallocated() {
			w.prealloc[d] = 1
		}
	}
	if w.prealloc[d] < 0 {
		return nil
	}
	host, ok := f.hostFile()
	if !ok {
		return nil
	}
	e, err := host.Extent(s.Offset, s.Length)
	if err != nil {
		// Past the end of the host file: reads as zeros.
		s.Zero = true
		return nil
	}
	if e.Type == ZeroAlloc {
		s.Zero = true
	}
	if e.End() < host.Size() || e.Type == Normal {
		s.Length = min(s.Length, e.Length)
	}
	return nil
}

// ReadAt reads guest-visible bytes of the chain. Bytes past the chain's size
// are not readable (io.EOF), as for a file.
func (c *Chain) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2: negative offset %d", off)
	}
	size := c.Size()
	if uint64(off) >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := len(p)
	var err error
	if uint64(n) > size-uint64(off) {
		n = int(size - uint64(off))
		err = io.EOF
	}
	w := c.newWalker()
	if rerr := w.Read(p[:n], uint64(off)); rerr != nil {
		return 0, rerr
	}
	return n, err
}

// Read fills p with guest data at pos through the walker's cursors; the
// range must lie inside the chain. Sequential reads through one Walker
// reuse its cursors.
func (w *Walker) Read(p []byte, pos uint64) error {
	end := pos + uint64(len(p))
	for pos < end {
		s, err := w.Status(pos, end)
		if err != nil {
			return err
		}
		buf := p[:s.Length]
		switch {
		case s.Present && s.Data:
			if err := w.c.Layers[s.Depth].ReadExtent(buf, s.Extent, pos); err != nil {
				return err
			}
			if s.Zero {
				clear(buf)
			}
		default:
			clear(buf)
		}
		p = p[s.Length:]
		pos += s.Length
	}
	return nil
}
