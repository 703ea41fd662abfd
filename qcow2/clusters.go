package qcow2

// ClusterRun is a run of guest bytes with the same owner and kind: which
// layer holds them, where in its file, and how.
type ClusterRun struct {
	Start  uint64 `json:"start"`
	Length uint64 `json:"length"`
	// Depth is the owning layer (0 = top), or -1 when no layer allocates
	// the run (it reads as zeros).
	Depth    int    `json:"depth"`
	Filename string `json:"filename,omitempty"`
	// Type is data, compressed, zero, zero-alloc, unallocated or
	// unallocated-alloc.
	Type             string  `json:"type"`
	HostOffset       *uint64 `json:"host_offset,omitempty"`
	CompressedOffset *uint64 `json:"compressed_offset,omitempty"`
	CompressedSize   *uint64 `json:"compressed_size,omitempty"`
	// SubclusterBitmap is the extended L2 bitmap of the cluster, for runs
	// inside one cluster of an image with subclusters.
	SubclusterBitmap *uint64 `json:"subcluster_bitmap,omitempty"`
}

// Clusters calls fn for each run of [start, start+length) in guest order.
// With layer < 0 each run is attributed to the layer the chain reads it
// from; with layer >= 0 the runs are that layer's own, unallocated ones
// included. fn must not keep the pointer.
func (c *Chain) Clusters(start, length uint64, layer int, fn func(*ClusterRun) error) error {
	size := c.Size()
	if layer >= 0 {
		size = c.Layers[layer].Size()
	}
	if start >= size {
		return nil
	}
	end := size
	if length < size-start {
		end = start + length
	}
	var cur ClusterRun
	flush := func() error {
		if cur.Length == 0 {
			return nil
		}
		err := fn(&cur)
		cur = ClusterRun{}
		return err
	}
	add := func(d int, e Extent, length uint64) error {
		r := c.runOf(d, e, length)
		if cur.Length > 0 && cur.Depth == r.Depth && cur.Type == r.Type && r.CompressedOffset == nil &&
			cur.SubclusterBitmap == nil && r.SubclusterBitmap == nil &&
			(cur.HostOffset == nil) == (r.HostOffset == nil) &&
			(cur.HostOffset == nil || *cur.HostOffset+cur.Length == *r.HostOffset) {
			cur.Length += r.Length
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		cur = r
		return nil
	}
	if layer >= 0 {
		l := c.Layers[layer]
		if err := forEachExtent(l, start, end, func(e Extent) error { return add(layer, e, e.Length) }); err != nil {
			return err
		}
		return flush()
	}
	w := c.NewWalker()
	for pos := start; pos < end; {
		s, err := w.Status(pos, end)
		if err != nil {
			return err
		}
		d := s.Depth
		if !s.Present {
			d = -1
		}
		if err := add(d, s.Extent, s.Length); err != nil {
			return err
		}
		pos += s.Length
	}
	return flush()
}

// runOf describes length bytes of extent e (rebased to its run) of layer d.
func (c *Chain) runOf(d int, e Extent, length uint64) ClusterRun {
	r := ClusterRun{Start: e.Start, Length: length, Depth: d, Type: e.Type.String()}
	if d < 0 {
		r.Type = "unallocated"
		return r
	}
	r.Filename = c.Layers[d].Filename()
	if e.Type.HasHostOffset() {
		r.HostOffset = ptr(e.HostOffset)
	}
	if f, ok := c.Layers[d].(*File); ok {
		if e.Type == Compressed {
			o, s := f.Geo.CompressedRange(e.Entry)
			r.CompressedOffset, r.CompressedSize = &o, &s
		}
		cs := f.ClusterSize()
		if f.Geo.ExtendedL2 && e.Type != Compressed && e.Start/cs == (e.Start+length-1)/cs {
			if ent, err := f.EntryAt(e.Start); err == nil {
				r.SubclusterBitmap = ptr(ent.Bitmap)
			}
		}
	}
	return r
}
