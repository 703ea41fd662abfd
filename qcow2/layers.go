package qcow2

// LayerStats describes how much of the guest each layer of a chain holds,
// what the top still shows of it, and what merging it would copy. The
// snapshot manager chooses between commit and pull with these numbers.
type LayerStats struct {
	Depth       int    `json:"depth"`
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	ClusterSize uint64 `json:"cluster-size,omitempty"`
	VirtualSize uint64 `json:"virtual-size"`
	// AllocatedBytes are guest bytes this layer decides (data or zero).
	AllocatedBytes  uint64 `json:"allocated-bytes"`
	DataBytes       uint64 `json:"data-bytes"`
	ZeroBytes       uint64 `json:"zero-bytes"`
	CompressedBytes uint64 `json:"compressed-bytes"`
	// CompressedClusters counts compressed clusters (guest-side).
	CompressedClusters uint64 `json:"compressed-clusters"`
	// VisibleBytes are allocated bytes the top of the chain still reads
	// from this layer; ShadowedBytes are hidden by layers above.
	VisibleBytes  uint64 `json:"visible-bytes"`
	ShadowedBytes uint64 `json:"shadowed-bytes"`
	// CommitBytes is what committing this layer into its backing file
	// copies (every byte it allocates); zero for the base.
	CommitBytes uint64 `json:"commit-bytes"`
	// PullBytes is what pulling this layer into its overlay copies (bytes
	// allocated here and not in the overlay); zero for the top.
	PullBytes uint64 `json:"pull-bytes"`
}

// forEachExtent calls fn for each extent of layer l alone in [start, end),
// reading qcow2 tables through a private cursor (one table at a time).
func forEachExtent(l Layer, start, end uint64, fn func(Extent) error) error {
	end = min(end, l.Size())
	var tc TableCursor
	for pos := start; pos < end; {
		e, err := layerExtent(l, pos, end-pos, &tc)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
		pos = e.End()
	}
	return nil
}

// Stats computes LayerStats for every layer, top first. It reads each
// layer's tables about three times and never reads guest data.
func (c *Chain) Stats() ([]LayerStats, error) {
	out := make([]LayerStats, len(c.Layers))
	for d, l := range c.Layers {
		s := &out[d]
		s.Depth, s.Filename, s.Format, s.VirtualSize = d, l.Filename(), l.Format(), l.Size()
		if f, ok := l.(*File); ok {
			s.ClusterSize = f.ClusterSize()
		}
		err := forEachExtent(l, 0, l.Size(), func(e Extent) error {
			switch e.Type {
			case Normal:
				s.DataBytes += e.Length
			case Compressed:
				s.DataBytes += e.Length
				s.CompressedBytes += e.Length
				s.CompressedClusters++
			case ZeroPlain, ZeroAlloc:
				s.ZeroBytes += e.Length
			}
			if e.Type.Allocated() {
				s.AllocatedBytes += e.Length
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if d < len(c.Layers)-1 {
			s.CommitBytes = s.AllocatedBytes
		}
	}
	// Visible bytes: one walk of the whole chain.
	w := c.NewWalker()
	for pos, size := uint64(0), c.Size(); pos < size; {
		st, err := w.Status(pos, size)
		if err != nil {
			return nil, err
		}
		if st.Present {
			out[st.Depth].VisibleBytes += st.Length
		}
		pos += st.Length
	}
	for d := range out {
		out[d].ShadowedBytes = out[d].AllocatedBytes - min(out[d].VisibleBytes, out[d].AllocatedBytes)
	}
	// Pull cost of layer d into d-1: allocated in d and not in d-1.
	for d := 1; d < len(c.Layers); d++ {
		n, err := allocatedNotAbove(c.Layers[d], c.Layers[d-1])
		if err != nil {
			return nil, err
		}
		out[d].PullBytes = n
	}
	return out, nil
}

// allocatedNotAbove counts the bytes allocated in lower that upper does
// not allocate itself (within upper's size).
func allocatedNotAbove(lower, upper Layer) (uint64, error) {
	var n uint64
	end := min(lower.Size(), upper.Size())
	var cur Extent
	var tc TableCursor
	err := forEachExtent(lower, 0, end, func(e Extent) error {
		if !e.Type.Allocated() {
			return nil
		}
		for pos := e.Start; pos < e.End(); {
			if cur.Length == 0 || pos < cur.Start || pos >= cur.End() {
				var err error
				if cur, err = layerExtent(upper, pos, e.End()-pos, &tc); err != nil {
					return err
				}
			}
			next := min(cur.End(), e.End())
			if !cur.Type.Allocated() {
				n += next - pos
			}
			pos = next
		}
		return nil
	})
	return n, err
}

// layerExtent is l.Extent, through tc for qcow2 layers.
func layerExtent(l Layer, off, max uint64, tc *TableCursor) (Extent, error) {
	if f, ok := l.(*File); ok {
		return f.extent(off, max, tc)
	}
	return l.Extent(off, max)
}
