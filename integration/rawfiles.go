package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
)

// Whence values for the data and hole seeks of Linux lseek(2).
const (
	seekData = 3
	seekHole = 4
)

// compareChunk is the read size of compareRawFiles.
const compareChunk = 1 << 20

type segment struct{ off, end int64 }

// dataSegments lists the ranges of f that may hold data, using SEEK_DATA
// and SEEK_HOLE; where the file system lacks them, the whole file.
func dataSegments(f *os.File, size int64) ([]segment, error) {
	var segs []segment
	for off := int64(0); off < size; {
		start, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if errors.Is(err, syscall.EINVAL) {
			return []segment{{0, size}}, nil
		}
		if err != nil {
			return nil, err
		}
		end, err := f.Seek(start, seekHole)
		if err != nil {
			return nil, err
		}
		segs = append(segs, segment{start, min(end, size)})
		off = end
	}
	return segs, nil
}

// unionSegments merges two sorted lists of segments.
func unionSegments(a, b []segment) []segment {
	all := append(append([]segment{}, a...), b...)
	sort.Slice(all, func(i, j int) bool { return all[i].off < all[j].off })
	var out []segment
	for _, s := range all {
		if n := len(out); n > 0 && s.off <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// compareRawFiles compares two files byte for byte and describes the
// difference ("" when equal): the size, the first differing offset with the
// bytes there, and how many 1 MiB chunks differ. Ranges that are holes in
// both files read as zeros in both and are skipped, so a sparse 1 TiB pair
// compares in moments.
func compareRawFiles(want, got string) (string, error) {
	fw, err := os.Open(want)
	if err != nil {
		return "", err
	}
	defer fw.Close()
	fg, err := os.Open(got)
	if err != nil {
		return "", err
	}
	defer fg.Close()
	sw, err := fw.Stat()
	if err != nil {
		return "", err
	}
	sg, err := fg.Stat()
	if err != nil {
		return "", err
	}
	var msgs []string
	if sw.Size() != sg.Size() {
		msgs = append(msgs, fmt.Sprintf("size: qemu-img %d, qchain %d", sw.Size(), sg.Size()))
	}
	size := min(sw.Size(), sg.Size())
	segW, err := dataSegments(fw, size)
	if err != nil {
		return "", err
	}
	segG, err := dataSegments(fg, size)
	if err != nil {
		return "", err
	}
	bw := make([]byte, compareChunk)
	bg := make([]byte, compareChunk)
	firstDiff := int64(-1)
	diffChunks := 0
	for _, s := range unionSegments(segW, segG) {
		for off := s.off; off < s.end; off += compareChunk {
			n := min(compareChunk, s.end-off)
			if _, err := fw.ReadAt(bw[:n], off); err != nil {
				return "", err
			}
			if _, err := fg.ReadAt(bg[:n], off); err != nil {
				return "", err
			}
			if bytes.Equal(bw[:n], bg[:n]) {
				continue
			}
			diffChunks++
			if firstDiff < 0 {
				for i := int64(0); i < n; i++ {
					if bw[i] != bg[i] {
						firstDiff = off + i
						msgs = append(msgs, fmt.Sprintf("first difference at byte %d: qemu-img 0x%02x, qchain 0x%02x",
							firstDiff, bw[i], bg[i]))
						break
					}
				}
			}
		}
	}
	if diffChunks > 0 {
		msgs = append(msgs, fmt.Sprintf("%d differing 1 MiB chunks", diffChunks))
	}
	return strings.Join(msgs, "; "), nil
}
