package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// maxDiffLines bounds the differences jsonDiff lists.
const maxDiffLines = 40

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
