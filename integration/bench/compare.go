package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
)

// maxDiffLines bounds the differences one comparison lists.
const maxDiffLines = 20

// Verdict is how the outputs of the two tools compare.
type Verdict struct {
	ByteIdentical bool
	// Equal is true when the outputs parse to the same JSON value and the
	// exit statuses are the same.
	Equal bool
	// Diff lists the differences, "path: qemu-img=X qchain=Y".
	Diff []string
}

// compareRuns compares qchain's run with qemu-img's as DESIGN.md's
// invariant 7 asks: the same JSON once parsed, the same exit status.
func compareRuns(qchain, qemu *Run) Verdict {
	v := Verdict{ByteIdentical: bytes.Equal(qchain.Stdout, qemu.Stdout)}
	if qchain.Exit != qemu.Exit {
		v.Diff = append(v.Diff, fmt.Sprintf("exit status: qemu-img=%d qchain=%d", qemu.Exit, qchain.Exit))
	}
	want, err := parseJSON(qemu.Stdout)
	if err != nil {
		v.Diff = append(v.Diff, fmt.Sprintf("qemu-img output is not JSON: %v", err))
		return v
	}
	got, err := parseJSON(qchain.Stdout)
	if err != nil {
		v.Diff = append(v.Diff, fmt.Sprintf("qchain output is not JSON: %v (stderr: %s)", err, firstLines(string(qchain.Stderr), 3)))
		return v
	}
	diffAt("$", want, got, &v.Diff)
	if len(v.Diff) > maxDiffLines {
		v.Diff = append(v.Diff[:maxDiffLines], "... and more")
	}
	v.Equal = len(v.Diff) == 0
	return v
}

// parseJSON decodes b keeping numbers exact (64-bit offsets).
func parseJSON(b []byte) (any, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON value")
	}
	return v, nil
}

// diffAt appends one line per differing key or element under path.
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
		keys := make([]string, 0, len(w)+len(g))
		for k := range w {
			keys = append(keys, k)
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			wv, wok := w[k]
			gv, gok := g[k]
			switch {
			case !wok:
				*out = append(*out, fmt.Sprintf("%s.%s: qemu-img=<absent> qchain=%s", path, k, show(gv)))
			case !gok:
				*out = append(*out, fmt.Sprintf("%s.%s: qemu-img=%s qchain=<absent>", path, k, show(wv)))
			default:
				diffAt(path+"."+k, wv, gv, out)
			}
		}
		return
	case []any:
		g, ok := got.([]any)
		if !ok {
			break
		}
		if len(w) != len(g) {
			*out = append(*out, fmt.Sprintf("%s: qemu-img has %d elements, qchain %d", path, len(w), len(g)))
		}
		for i := 0; i < min(len(w), len(g)); i++ {
			diffAt(fmt.Sprintf("%s[%d]", path, i), w[i], g[i], out)
		}
		return
	}
	if !reflect.DeepEqual(want, got) {
		*out = append(*out, fmt.Sprintf("%s: qemu-img=%s qchain=%s", path, show(want), show(got)))
	}
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
