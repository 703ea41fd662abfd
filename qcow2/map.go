package qcow2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
)

// MapEntry is one entry of `qemu-img map`: a run of guest bytes with the
// same status, merged exactly as qemu-img 10.0 merges them.
type MapEntry struct {
	Start   uint64
	Length  uint64
	Depth   int
	Present bool
	Zero    bool
	Data    bool
	// Compressed is true for data stored in compressed clusters (which
	// have no host offset).
	Compressed bool
	HasOffset  bool
	Offset     uint64
}

// mergeable is qemu-img 10.0's entry_mergeable. Entries at the same depth
// come from the same file, so comparing depths also compares file names.
func mergeable(cur, next *MapEntry) bool {
	return cur.Compressed == next.Compressed && mergeable72(cur, next)
}

// mergeable72 is qemu-img 7.2's entry_mergeable, blind to compression.
// 10.0's rule only adds a condition, and both merge greedily from the
// left, so merging 10.0's entries again by this rule gives 7.2's entries.
func mergeable72(cur, next *MapEntry) bool {
	if cur.Length == 0 {
		return false
	}
	if cur.Zero != next.Zero || cur.Data != next.Data || cur.Depth != next.Depth ||
		cur.Present != next.Present || cur.HasOffset != next.HasOffset {
		return false
	}
	return !cur.HasOffset || cur.Offset+cur.Length == next.Offset
}

// Map calls fn for each map entry of the guest range [start, start+length)
// (clipped to the chain's size), in order, merged as qemu-img 10.0 merges
// them (WriteMapJSON merges again for 7.2's layout).
// fn must not keep the pointer. Large ranges are walked by several
// goroutines, window by window; the entries reach fn in order all the same.
func (c *Chain) Map(start, length uint64, fn func(*MapEntry) error) error {
	size := c.Size()
	end := size
	if start > size {
		start = size
	}
	if length < size-start {
		end = start + length
	}
	workers := min(runtime.GOMAXPROCS(0), maxMapWorkers)
	win := c.mapWindow()
	if workers < 2 || end-start < 4*win {
		cur := MapEntry{Start: start}
		if err := c.mapRange(c.NewWalker(), start, end, &cur, fn); err != nil {
			return err
		}
		if cur.Length > 0 {
			return fn(&cur)
		}
		return nil
	}
	return c.mapParallel(start, end, win, workers, fn)
}

// maxMapWorkers bounds the goroutines of one Map.
const maxMapWorkers = 4

// mapWindow is the guest span one Map worker walks at a time: 16384
// clusters of the top image (at least 256 MiB), so that a window's entries
// stay few however fragmented the image.
func (c *Chain) mapWindow() uint64 {
	cs := uint64(64 << 10)
	if f, ok := c.Layers[0].(*File); ok {
		cs = f.ClusterSize()
	}
	return max(cs*16384, 256<<20)
}

// mapRange walks [pos, end) with w, merging into cur and passing each
// finished entry to fn.
func (c *Chain) mapRange(w *Walker, pos, end uint64, cur *MapEntry, fn func(*MapEntry) error) error {
	for pos < end {
		s, err := w.Status(pos, end)
		if err != nil {
			return err
		}
		next := MapEntry{Start: pos, Length: s.Length, Depth: s.Depth, Present: s.Present, Zero: s.Zero, Data: s.Data,
			Compressed: s.Present && s.Extent.Type == Compressed, HasOffset: s.HasOffset, Offset: s.Offset}
		pos += s.Length
		if mergeable(cur, &next) {
			cur.Length += next.Length
			continue
		}
		if cur.Length > 0 {
			if err := fn(cur); err != nil {
				return err
			}
		}
		*cur = next
	}
	return nil
}

// mapWindowResult is one window's entries, merged within the window.
type mapWindowResult struct {
	entries []MapEntry
	err     error
}

// mapParallel walks windows on several goroutines (window i on worker
// i mod workers, each with its own Walker) and merges their entries in
// order: qemu-img's merge is greedy and left to right, so merging the
// windows' merged entries at the seams gives exactly its result.
func (c *Chain) mapParallel(start, end, win uint64, workers int, fn func(*MapEntry) error) error {
	n := int((end - start + win - 1) / win)
	done := make(chan struct{})
	defer close(done)
	outs := make([]chan mapWindowResult, workers)
	for k := range outs {
		outs[k] = make(chan mapWindowResult, 2)
		go func(k int, out chan<- mapWindowResult) {
			w := c.NewWalker()
			for i := k; i < n; i += workers {
				lo := start + uint64(i)*win
				hi := min(lo+win, end)
				var r mapWindowResult
				if b, ok := entryBufs.Get().(*[]MapEntry); ok {
					r.entries = (*b)[:0]
				}
				cur := MapEntry{Start: lo}
				r.err = c.mapRange(w, lo, hi, &cur, func(e *MapEntry) error {
					r.entries = append(r.entries, *e)
					return nil
				})
				if cur.Length > 0 {
					r.entries = append(r.entries, cur)
				}
				select {
				case out <- r:
				case <-done:
					return
				}
				if r.err != nil {
					return
				}
			}
		}(k, outs[k])
	}
	cur := MapEntry{Start: start}
	for i := 0; i < n; i++ {
		r := <-outs[i%workers]
		if r.err != nil {
			return r.err
		}
		for j := range r.entries {
			next := &r.entries[j]
			if mergeable(&cur, next) {
				cur.Length += next.Length
				continue
			}
			if cur.Length > 0 {
				if err := fn(&cur); err != nil {
					return err
				}
			}
			cur = *next
		}
		entryBufs.Put(&r.entries)
	}
	if cur.Length > 0 {
		return fn(&cur)
	}
	return nil
}

// entryBufs recycles the windows' entry slices between workers and the
// merging loop.
var entryBufs sync.Pool

// AppendJSON appends the entry as qemu-img of the given layout prints it
// in --output=json.
func (e *MapEntry) AppendJSON(b []byte, l Layout) []byte {
	b = append(b, `{ "start": `...)
	b = strconv.AppendUint(b, e.Start, 10)
	b = append(b, `, "length": `...)
	b = strconv.AppendUint(b, e.Length, 10)
	b = append(b, `, "depth": `...)
	b = strconv.AppendInt(b, int64(e.Depth), 10)
	b = append(b, `, "present": `...)
	b = strconv.AppendBool(b, e.Present)
	b = append(b, `, "zero": `...)
	b = strconv.AppendBool(b, e.Zero)
	b = append(b, `, "data": `...)
	b = strconv.AppendBool(b, e.Data)
	if l != LayoutQemu72 {
		b = append(b, `, "compressed": `...)
		b = strconv.AppendBool(b, e.Compressed)
	}
	if e.HasOffset {
		b = append(b, `, "offset": `...)
		b = strconv.AppendUint(b, e.Offset, 10)
	}
	return append(b, '}')
}

// WriteMapJSON writes the map of [start, start+length) as
// `qemu-img map --output=json` of opts.Layout does, byte for byte.
func (c *Chain) WriteMapJSON(w io.Writer, start, length uint64, opts OutputOptions) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	buf := make([]byte, 0, 160)
	first := true
	write := func(e *MapEntry) error {
		buf = buf[:0]
		if first {
			buf = append(buf, '[')
			first = false
		} else {
			buf = append(buf, ",\n"...)
		}
		buf = e.AppendJSON(buf, opts.Layout)
		_, err := bw.Write(buf)
		return err
	}
	var err error
	if opts.Layout == LayoutQemu72 {
		// 7.2 merges compressed and other offset-less data alike.
		var cur MapEntry
		err = c.Map(start, length, func(e *MapEntry) error {
			if mergeable72(&cur, e) {
				cur.Length += e.Length
				return nil
			}
			if cur.Length > 0 {
				if err := write(&cur); err != nil {
					return err
				}
			}
			cur = *e
			return nil
		})
		if err == nil && cur.Length > 0 {
			err = write(&cur)
		}
	} else {
		err = c.Map(start, length, write)
	}
	if err != nil {
		return err
	}
	if first {
		bw.WriteString("[")
	}
	bw.WriteString("]\n")
	return bw.Flush()
}

// ErrMapHuman is returned by WriteMapHuman for images whose data has no
// host offset to print (compressed clusters), as qemu-img refuses them.
var ErrMapHuman = errors.New("file contains external, encrypted or compressed clusters")

// cHex formats like C's "%#x": no prefix for zero.
func cHex(v uint64) string {
	if v == 0 {
		return "0"
	}
	return "0x" + strconv.FormatUint(v, 16)
}

// WriteMapHuman writes the map as `qemu-img map` prints it by default:
// only data ranges, with the file that holds them. At data it cannot
// print it stops with ErrMapHuman, after the lines before it, as qemu-img.
func (c *Chain) WriteMapHuman(w io.Writer, start, length uint64) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	fmt.Fprintf(bw, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	// qemu-img rewrites the flags of entries it does not print so that
	// they merge more; that never changes which data entries it prints, so
	// printing the data entries of the exact map gives the same lines.
	err := c.Map(start, length, func(e *MapEntry) error {
		if e.Data && !e.HasOffset {
			return ErrMapHuman
		}
		if e.Data && !e.Zero {
			_, err := fmt.Fprintf(bw, "%-16s%-16s%-16s%s\n", cHex(e.Start), cHex(e.Length), cHex(e.Offset), c.hostName(e.Depth))
			return err
		}
		return nil
	})
	if errors.Is(err, ErrMapHuman) {
		// qemu-img has printed the lines before the one it refuses.
		bw.Flush()
		return err
	}
	if err != nil {
		return err
	}
	return bw.Flush()
}

// hostName is the file that holds layer d's data clusters.
func (c *Chain) hostName(d int) string {
	if f, ok := c.Layers[d].(*File); ok && f.Header.HasDataFile() {
		return f.Header.DataFile
	}
	return c.Layers[d].Filename()
}
