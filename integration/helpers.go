// Package integration holds the end-to-end tests of the qchain binary
// against the real qemu-img, qemu-io and qemu-system-x86_64: the same image
// goes to both, and the parsed JSON, exit codes and exported bytes must be
// equal. This file has the comparison helpers; the tests are in *_test.go.
package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// findModuleRoot walks up from dir to the folder that holds go.mod.
func findModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test folder")
		}
		dir = parent
	}
}

// parseJSON decodes b into the generic form reflect.DeepEqual compares.
func parseJSON(b []byte) (any, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // keep 64-bit offsets exact
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON value")
	}
	return v, nil
}

// maxDiffLines bounds the differences jsonDiff lists.
const maxDiffLines = 40

// jsonDiff lists where want (qemu-img) and got (qchain) differ, one line per
// key or element, as "path: qemu-img=X qchain=Y". Absent keys show as
// <absent>. It stops after maxDiffLines lines.
func jsonDiff(want, got any) []string {
	var out []string
	diffAt("$", want, got, &out)
	if len(out) > maxDiffLines {
		n := len(out) - maxDiffLines
		out = append(out[:maxDiffLines], fmt.Sprintf("... and %d more", n))
	}
	return out
}

func diffAt(path string, want, got any, out *[]string) {
	if len(*out) > maxDiffLines {
		return
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			wv, wok := w[k]
			gv, gok := g[k]
			p := path + "." + k
			switch {
			case !wok:
				*out = append(*out, fmt.Sprintf("%s: qemu-img=<absent> qchain=%s", p, compact(gv)))
			case !gok:
				*out = append(*out, fmt.Sprintf("%s: qemu-img=%s qchain=<absent>", p, compact(wv)))
			default:
				diffAt(p, wv, gv, out)
			}
		}
		return
	case []any:
		g, ok := got.([]any)
		if !ok {
			break
		}
		if isExtentList(w) && isExtentList(g) {
			diffExtents(path, w, g, out)
			return
		}
		if len(w) != len(g) {
			*out = append(*out, fmt.Sprintf("%s: qemu-img has %d elements, qchain %d", path, len(w), len(g)))
		}
		for i := 0; i < len(w) && i < len(g); i++ {
			diffAt(fmt.Sprintf("%s[%d]", path, i), w[i], g[i], out)
		}
		return
	default:
		if fmt.Sprintf("%T %v", want, want) == fmt.Sprintf("%T %v", got, got) {
			return
		}
	}
	*out = append(*out, fmt.Sprintf("%s: qemu-img=%s qchain=%s", path, compact(want), compact(got)))
}

// isExtentList reports whether l looks like map output: objects with a
// "start" key.
func isExtentList(l []any) bool {
	for _, e := range l {
		m, ok := e.(map[string]any)
		if !ok {
			return false
		}
		if _, ok := m["start"]; !ok {
			return false
		}
	}
	return len(l) > 0
}

// diffExtents lists the map entries found in only one of the two lists,
// so one split or merged extent does not show as every later index
// differing.
func diffExtents(path string, want, got []any, out *[]string) {
	count := map[string]int{}
	for _, e := range got {
		count[compact(e)]++
	}
	var onlyWant []string
	for _, e := range want {
		k := compact(e)
		if count[k] > 0 {
			count[k]--
			continue
		}
		onlyWant = append(onlyWant, k)
	}
	for _, k := range onlyWant {
		*out = append(*out, fmt.Sprintf("%s: only qemu-img has %s", path, k))
	}
	for _, e := range got {
		k := compact(e)
		if count[k] > 0 {
			count[k]--
			*out = append(*out, fmt.Sprintf("%s: only qchain has %s", path, k))
		}
	}
}

func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

// chainFileState is what inspection must leave unchanged in a file.
type chainFileState struct {
	Size    int64
	ModTime int64 // ns
	SHA256  string
}

// fingerprint records every regular file under root (the image, its
// backing files and data files), keyed by path relative to root.
func fingerprint(root string) (map[string]chainFileState, error) {
	states := map[string]chainFileState{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		states[rel] = chainFileState{info.Size(), info.ModTime().UnixNano(), hex.EncodeToString(h.Sum(nil))}
		return nil
	})
	return states, err
}

// fingerprintDiff describes how after differs from before, "" if not.
func fingerprintDiff(before, after map[string]chainFileState) string {
	var lines []string
	for name, b := range before {
		a, ok := after[name]
		switch {
		case !ok:
			lines = append(lines, name+": removed")
		case a != b:
			lines = append(lines, fmt.Sprintf("%s: before %+v, after %+v", name, b, a))
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			lines = append(lines, name+": created")
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// Whence values for the data and hole seeks of Linux lseek(2).
const (
	seekData = 3
	seekHole = 4
)

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

// compareChunk is the read size of compareRawFiles.
const compareChunk = 1 << 20

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
