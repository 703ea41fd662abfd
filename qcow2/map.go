package qcow2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MapEntry is one entry of `qemu-img map`: a run of guest bytes with the
// same status, merged exactly as qemu-img merges them.
type MapEntry struct {
	Start     uint64
	Length    uint64
	Depth     int
	Present   bool
	Zero      bool
	Data      bool
	HasOffset bool
	Offset    uint64
}

// mergeable is qemu-img's entry_mergeable. Entries at the same depth come
// from the same file, so comparing depths also compares file names.
func mergeable(cur, next *MapEntry) bool {
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
// (clipped to the chain's size), in order, merged as qemu-img merges them.
// fn must not keep the pointer.
func (c *Chain) Map(start, length uint64, fn func(*MapEntry) error) error {
	size := c.Size()
	end := size
	if start > size {
		start = size
	}
	if length < size-start {
		end = start + length
	}
	w := c.NewWalker()
	cur := MapEntry{Start: start}
	for pos := start; pos < end; {
		s, err := w.Status(pos, end)
		if err != nil {
			return err
		}
		next := MapEntry{Start: pos, Length: s.Length, Depth: s.Depth, Present: s.Present, Zero: s.Zero, Data: s.Data, HasOffset: s.HasOffset, Offset: s.Offset}
		pos += s.Length
		if mergeable(&cur, &next) {
			cur.Length += next.Length
			continue
		}
		if cur.Length > 0 {
			if err := fn(&cur); err != nil {
				return err
			}
		}
		cur = next
	}
	if cur.Length > 0 {
		return fn(&cur)
	}
	return nil
}

// AppendJSON appends the entry as qemu-img prints it in --output=json.
func (e *MapEntry) AppendJSON(b []byte) []byte {
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
	if e.HasOffset {
		b = append(b, `, "offset": `...)
		b = strconv.AppendUint(b, e.Offset, 10)
	}
	return append(b, '}')
}

// WriteMapJSON writes the map of [start, start+length) as
// `qemu-img map --output=json` does, byte for byte.
func (c *Chain) WriteMapJSON(w io.Writer, start, length uint64) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	buf := make([]byte, 0, 160)
	first := true
	err := c.Map(start, length, func(e *MapEntry) error {
		buf = buf[:0]
		if first {
			buf = append(buf, '[')
			first = false
		} else {
			buf = append(buf, ",\n"...)
		}
		buf = e.AppendJSON(buf)
		_, err := bw.Write(buf)
		return err
	})
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
// only data ranges, with the file that holds them.
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
