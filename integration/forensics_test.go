package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// The forensics tests: layers, clusters, leaks, diff, who-uses, dump and
// the --snapshot flag of map and export. Expected answers come from the
// writes each test makes (computed here, at cluster granularity) or from
// qemu-img; every case also checks that qchain changed no file.

const (
	fxCluster = 64 << 10 // cluster size of every image built here
	fxSize    = 64 << 20 // virtual size of every image built here
	fxSector  = 512      // granularity of diff
)

// fxQchain runs qchain under fixtures.Run and fails the test if it could
// not run or panicked. Exit codes are the caller's business.
func fxQchain(t *testing.T, bin string, args ...string) fixtures.Result {
	t.Helper()
	res := fixtures.Run(context.Background(), "", bin, args...)
	if res.Err != nil {
		t.Fatalf("%v\nstderr: %s", res.Err, res.Stderr)
	}
	if s := string(res.Stderr); strings.Contains(s, "panic:") || strings.Contains(s, "goroutine ") {
		t.Fatalf("%s panicked:\n%s", res.Cmd, s)
	}
	return res
}

// fxJSON runs qchain, demands exit status wantExit and decodes its standard
// output into v, refusing keys v does not know.
func fxJSON(t *testing.T, bin string, wantExit int, v any, args ...string) fixtures.Result {
	t.Helper()
	res := fxQchain(t, bin, args...)
	if res.ExitCode != wantExit {
		t.Fatalf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", res.Cmd, res.ExitCode, wantExit, res.Stdout, res.Stderr)
	}
	dec := json.NewDecoder(bytes.NewReader(res.Stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: decoding output: %v\n%s", res.Cmd, err, res.Stdout)
	}
	return res
}

// fxJSONLoose is fxJSON for outputs (dump) of which the test reads only
// some keys.
func fxJSONLoose(t *testing.T, bin string, v any, args ...string) {
	t.Helper()
	res := fxQchain(t, bin, args...)
	if res.ExitCode != 0 {
		t.Fatalf("%s: exit %d\nstderr: %s", res.Cmd, res.ExitCode, res.Stderr)
	}
	if err := json.Unmarshal(res.Stdout, v); err != nil {
		t.Fatalf("%s: decoding output: %v\n%s", res.Cmd, err, res.Stdout)
	}
}

// fxReadOnly ages the mtimes of every file under root, fingerprints them,
// and checks at the end of the test that nothing under root changed.
func fxReadOnly(t *testing.T, root string) {
	t.Helper()
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		return os.Chtimes(p, old, old)
	})
	if err != nil {
		t.Fatal(err)
	}
	before, err := fingerprint(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		after, err := fingerprint(root)
		if err != nil {
			t.Error(err)
			return
		}
		if d := fingerprintDiff(before, after); d != "" {
			t.Errorf("read-only violated under %s:\n%s", root, d)
		}
	})
}

// fxFieldDiff lists the fields (by JSON name) where two structs of the
// same type differ.
func fxFieldDiff(want, got any) []string {
	wv, gv := reflect.ValueOf(want), reflect.ValueOf(got)
	var out []string
	for i := 0; i < wv.NumField(); i++ {
		name, _, _ := strings.Cut(wv.Type().Field(i).Tag.Get("json"), ",")
		w, g := wv.Field(i).Interface(), gv.Field(i).Interface()
		if !reflect.DeepEqual(w, g) {
			out = append(out, fmt.Sprintf("%s: want %v, got %v", name, w, g))
		}
	}
	return out
}

// fxMapEntry is one entry of qemu-img map --output=json.
type fxMapEntry struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Depth   int   `json:"depth"`
	Present bool  `json:"present"`
	Zero    bool  `json:"zero"`
	Data    bool  `json:"data"`
	// Compressed is in qemu-img 8.2's layout and later (qchain's default).
	Compressed *bool  `json:"compressed"`
	Offset     *int64 `json:"offset"`
}

// fxQemuMap runs qemu-img map --output=json on image.
func fxQemuMap(t *testing.T, q *fixtures.Qemu, image string) []fxMapEntry {
	t.Helper()
	var m []fxMapEntry
	if err := json.Unmarshal(q.Img("map", "--output=json", image), &m); err != nil {
		t.Fatalf("qemu-img map %s: %v", image, err)
	}
	return m
}

// fxHostOffsets maps each cluster index that qemu-img map gives a host
// offset for to that offset.
func fxHostOffsets(m []fxMapEntry) map[int64]int64 {
	out := map[int64]int64{}
	for _, e := range m {
		if e.Offset == nil {
			continue
		}
		for c := (e.Start + fxCluster - 1) / fxCluster; c*fxCluster < e.Start+e.Length; c++ {
			out[c] = *e.Offset + c*fxCluster - e.Start
		}
	}
	return out
}

// fxLayerOnly names image opened without its backing chain, for qemu-img.
func fxLayerOnly(path string) string {
	return fmt.Sprintf(`json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":%q}}`, path)
}

// fxWrite is one qemu-io write of the layers test.
type fxWrite struct {
	Off, Len int64
	Kind     string // data, zero or compressed
	Byte     byte
}

func (w fxWrite) cmd() string {
	p := fixtures.Pattern{Off: w.Off, Len: w.Len, Byte: w.Byte}
	switch w.Kind {
	case "zero":
		return p.Cmd("-z")
	case "compressed":
		return p.Cmd("-c")
	}
	return p.Cmd()
}

// fxLayerModel applies writes to an empty layer at cluster granularity and
// returns the L2 type of each touched cluster: any data write allocates
// the whole cluster; a zero write (cluster-aligned here) keeps the host
// cluster of a data cluster (zero-alloc, qemu-io does not pass MAY_UNMAP)
// and otherwise sets a plain zero cluster.
func fxLayerModel(writes []fxWrite) map[int64]string {
	m := map[int64]string{}
	for _, w := range writes {
		for c := w.Off / fxCluster; c <= (w.Off+w.Len-1)/fxCluster; c++ {
			switch w.Kind {
			case "data", "compressed":
				m[c] = w.Kind
			case "zero":
				if m[c] == "data" || m[c] == "zero-alloc" {
					m[c] = "zero-alloc"
				} else {
					m[c] = "zero"
				}
			}
		}
	}
	return m
}

// fxLayer is one element of qchain layers --output=json.
type fxLayer struct {
	Depth              int    `json:"depth"`
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	ClusterSize        int64  `json:"cluster-size"`
	VirtualSize        int64  `json:"virtual-size"`
	AllocatedBytes     int64  `json:"allocated-bytes"`
	DataBytes          int64  `json:"data-bytes"`
	ZeroBytes          int64  `json:"zero-bytes"`
	CompressedBytes    int64  `json:"compressed-bytes"`
	CompressedClusters int64  `json:"compressed-clusters"`
	VisibleBytes       int64  `json:"visible-bytes"`
	ShadowedBytes      int64  `json:"shadowed-bytes"`
	CommitBytes        int64  `json:"commit-bytes"`
	PullBytes          int64  `json:"pull-bytes"`
}

// fxRun is one element of qchain clusters --output=json.
type fxRun struct {
	Start            int64   `json:"start"`
	Length           int64   `json:"length"`
	Depth            int     `json:"depth"`
	Filename         string  `json:"filename"`
	Type             string  `json:"type"`
	HostOffset       *int64  `json:"host_offset"`
	CompressedOffset *int64  `json:"compressed_offset"`
	CompressedSize   *int64  `json:"compressed_size"`
	SubclusterBitmap *uint64 `json:"subcluster_bitmap"`
}

// fxClusterView is what one cluster of a clusters listing says.
type fxClusterView struct {
	Depth      int
	Filename   string
	Type       string
	HostOffset int64 // -1 when absent
}

// fxPerCluster checks that runs tile [start, end) in order with
// cluster-aligned bounds and returns the view of each cluster.
func fxPerCluster(t *testing.T, what string, runs []fxRun, start, end int64) map[int64]fxClusterView {
	t.Helper()
	out := map[int64]fxClusterView{}
	pos := start
	for i, r := range runs {
		if r.Start != pos || r.Length <= 0 {
			t.Errorf("%s: run %d %+v does not start at %d or is empty", what, i, r, pos)
			return out
		}
		if r.Start%fxCluster != 0 || r.Length%fxCluster != 0 {
			t.Errorf("%s: run %d [%d,+%d) is not cluster-aligned", what, i, r.Start, r.Length)
		}
		switch r.Type {
		case "data":
			if r.HostOffset == nil {
				t.Errorf("%s: data run %d at %d has no host_offset", what, i, r.Start)
			}
		case "compressed":
			if r.CompressedOffset == nil || r.CompressedSize == nil {
				t.Errorf("%s: compressed run %d at %d lacks compressed_offset/size", what, i, r.Start)
			}
		}
		for c := r.Start / fxCluster; c*fxCluster < r.Start+r.Length; c++ {
			v := fxClusterView{Depth: r.Depth, Filename: r.Filename, Type: r.Type, HostOffset: -1}
			if r.HostOffset != nil {
				v.HostOffset = *r.HostOffset + c*fxCluster - r.Start
			}
			out[c] = v
		}
		pos = r.Start + r.Length
	}
	if pos != end {
		t.Errorf("%s: runs end at %d, want %d", what, pos, end)
	}
	return out
}

// TestForensicsLayers builds a four-layer chain with known writes and
// checks layers, clusters (chain mode, --layer N and a sub-range) against
// the statistics computed from the writes, and host offsets against
// qemu-img map.
func TestForensicsLayers(t *testing.T) {
	bin := requireTools(t)
	const K = fxCluster
	d := func(off, n int64, b byte) fxWrite { return fxWrite{off, n, "data", b} }
	z := func(off, n int64) fxWrite { return fxWrite{off, n, "zero", 0} }
	// Bottom up: writes[0] go to the base (depth 3), writes[3] to the top.
	writes := [][]fxWrite{
		{d(0, 8*K, 0x11), d(5*K+512, 1024, 0x14), d(20*K+4096, 1000, 0x12), z(30*K, 2*K),
			d(1000*K, 2*K, 0x13), d(1023*K, K, 0x15)},
		{d(4*K, 6*K, 0x21), {2 * K, 2 * K, "compressed", 0x22}, z(20*K, K), d(50*K+100, 200, 0x23), z(1001*K, K)},
		{d(6*K, 7*K, 0x31), z(3*K, K), d(30*K, K, 0x32), d(1023*K+4096, 4096, 0x33)},
		{d(512, 512, 0x41), d(9*K, 2*K, 0x42), z(1000*K, K), d(500*K, 4*K, 0x43), d(600*K, K, 0x44), z(600*K, K)},
	}
	n := len(writes)
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	names := make([]string, n) // by depth
	for i, ws := range writes {
		depth := n - 1 - i
		names[depth] = fmt.Sprintf("layer%d.qcow2", depth)
		if i == 0 {
			q.Create(names[depth], strconv.Itoa(fxSize), "cluster_size=65536")
		} else {
			q.Overlay(names[depth], names[depth+1], "qcow2", "", "cluster_size=65536")
		}
		cmds := make([]string, len(ws))
		for j, w := range ws {
			cmds[j] = w.cmd()
		}
		q.IO("qcow2", names[depth], cmds...)
	}
	top := q.Path(names[0])

	// The model: each layer's clusters, and the chain's view.
	model := make([]map[int64]string, n) // by depth
	for i, ws := range writes {
		model[n-1-i] = fxLayerModel(ws)
	}
	var info []struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal(q.Img("info", "--backing-chain", "--output=json", top), &info); err != nil || len(info) != n {
		t.Fatalf("qemu-img info --backing-chain: %v (%d layers)", err, len(info))
	}
	want := make([]fxLayer, n)
	owner := map[int64]int{} // cluster -> topmost allocating depth
	for depth := n - 1; depth >= 0; depth-- {
		for c := range model[depth] {
			owner[c] = depth
		}
	}
	for depth := range n {
		w := &want[depth]
		w.Depth, w.Filename, w.Format = depth, info[depth].Filename, "qcow2"
		w.ClusterSize, w.VirtualSize = K, fxSize
		for c, typ := range model[depth] {
			w.AllocatedBytes += K
			switch typ {
			case "data":
				w.DataBytes += K
			case "compressed":
				w.DataBytes += K
				w.CompressedBytes += K
				w.CompressedClusters++
			default:
				w.ZeroBytes += K
			}
			if owner[c] == depth {
				w.VisibleBytes += K
			}
			if depth > 0 {
				if _, ok := model[depth-1][c]; !ok {
					w.PullBytes += K
				}
			}
		}
		w.ShadowedBytes = w.AllocatedBytes - w.VisibleBytes
		if depth < n-1 {
			w.CommitBytes = w.AllocatedBytes
		}
	}
	fxReadOnly(t, dir)

	var layers []fxLayer
	t.Run("layers", func(t *testing.T) {
		res := fxJSON(t, bin, 0, &layers, "layers", "--output=json", top)
		var raw []map[string]any
		if err := json.Unmarshal(res.Stdout, &raw); err != nil {
			t.Fatal(err)
		}
		keys := reflect.TypeOf(fxLayer{})
		for i, obj := range raw {
			for f := range keys.NumField() {
				k, _, _ := strings.Cut(keys.Field(f).Tag.Get("json"), ",")
				if _, ok := obj[k]; !ok {
					t.Errorf("layer %d: key %q missing", i, k)
				}
			}
		}
		if len(layers) != n {
			t.Fatalf("%d layers, want %d:\n%s", len(layers), n, res.Stdout)
		}
		for depth := range n {
			for _, l := range fxFieldDiff(want[depth], layers[depth]) {
				t.Errorf("layer depth %d (%s): %s", depth, names[depth], l)
			}
		}
	})

	t.Run("clusters-chain", func(t *testing.T) {
		var runs []fxRun
		fxJSON(t, bin, 0, &runs, "clusters", "--output=json", top)
		got := fxPerCluster(t, "clusters", runs, 0, fxSize)
		offs := fxHostOffsets(fxQemuMap(t, q, top))
		bad := 0
		for c := int64(0); c < fxSize/K; c++ {
			g, ok := got[c]
			if !ok {
				continue
			}
			wantDepth, wantType, wantFile := -1, "unallocated", ""
			if depth, ok := owner[c]; ok {
				wantDepth, wantType, wantFile = depth, model[depth][c], info[depth].Filename
			}
			if g.Depth != wantDepth || g.Type != wantType || g.Filename != wantFile {
				if bad++; bad <= 20 {
					t.Errorf("cluster %d (guest %#x): got depth %d type %s file %q, want depth %d type %s file %q",
						c, c*K, g.Depth, g.Type, g.Filename, wantDepth, wantType, wantFile)
				}
			}
			if off, ok := offs[c]; ok && wantType == "data" && g.HostOffset != off {
				t.Errorf("cluster %d: host_offset %d, qemu-img map says %d", c, g.HostOffset, off)
			}
		}
	})

	for depth := range n {
		t.Run(fmt.Sprintf("clusters-layer-%d", depth), func(t *testing.T) {
			var runs []fxRun
			fxJSON(t, bin, 0, &runs, "clusters", "--output=json", "--layer", strconv.Itoa(depth), top)
			got := fxPerCluster(t, "clusters --layer", runs, 0, fxSize)
			offs := fxHostOffsets(fxQemuMap(t, q, fxLayerOnly(q.Path(names[depth]))))
			bad := 0
			for c := int64(0); c < fxSize/K; c++ {
				g, ok := got[c]
				if !ok {
					continue
				}
				wantType := "unallocated"
				if typ, ok := model[depth][c]; ok {
					wantType = typ
				}
				if g.Type != wantType || g.Depth != depth {
					if bad++; bad <= 20 {
						t.Errorf("cluster %d (guest %#x): got depth %d type %s, want depth %d type %s",
							c, c*K, g.Depth, g.Type, depth, wantType)
					}
				}
				if off, ok := offs[c]; ok && (wantType == "data" || wantType == "zero-alloc") && g.HostOffset != off {
					t.Errorf("cluster %d (%s): host_offset %d, qemu-img map of the layer says %d", c, wantType, g.HostOffset, off)
				}
			}
		})
	}

	for depth := range n {
		t.Run(fmt.Sprintf("dump-layer-%d", depth), func(t *testing.T) {
			path := q.Path(names[depth])
			var hdr struct {
				Version       int    `json:"version"`
				ClusterBits   int    `json:"cluster_bits"`
				Size          int64  `json:"size"`
				BackingFile   string `json:"backing_file"`
				BackingFormat string `json:"backing_format"`
			}
			fxJSONLoose(t, bin, &hdr, "dump", "--output=json", "--header", path)
			wantBacking, wantFmt := "", ""
			if depth < n-1 {
				wantBacking, wantFmt = names[depth+1], "qcow2"
			}
			if hdr.Version != 3 || hdr.ClusterBits != 16 || hdr.Size != fxSize ||
				hdr.BackingFile != wantBacking || hdr.BackingFormat != wantFmt {
				t.Errorf("dump --header: got %+v, want version 3, cluster_bits 16, size %d, backing %q format %q",
					hdr, fxSize, wantBacking, wantFmt)
			}
			var l2 struct {
				Entries []struct {
					GuestOffset int64  `json:"guest_offset"`
					Type        string `json:"type"`
					HostOffset  *int64 `json:"host_offset"`
				} `json:"entries"`
			}
			fxJSONLoose(t, bin, &l2, "dump", "--output=json", "--l2", "0", path)
			offs := fxHostOffsets(fxQemuMap(t, q, fxLayerOnly(path)))
			got := map[int64]string{}
			for _, e := range l2.Entries {
				c := e.GuestOffset / K
				got[c] = e.Type
				if off, ok := offs[c]; ok && e.Type == "data" && (e.HostOffset == nil || *e.HostOffset != off) {
					t.Errorf("dump --l2 0: cluster %d host_offset %v, qemu-img map says %d", c, e.HostOffset, off)
				}
			}
			if !reflect.DeepEqual(got, model[depth]) {
				t.Errorf("dump --l2 0 entry types by cluster:\n got %v\nwant %v", got, model[depth])
			}
		})
	}

	t.Run("clusters-range", func(t *testing.T) {
		start, length := int64(3*K+100), int64(5*K)
		var runs []fxRun
		fxJSON(t, bin, 0, &runs, "clusters", "--output=json",
			"--start-offset", strconv.FormatInt(start, 10), "--max-length", strconv.FormatInt(length, 10), top)
		pos := start
		for _, r := range runs {
			if r.Start != pos || r.Length <= 0 {
				t.Fatalf("run %+v does not continue at %d", r, pos)
			}
			for c := r.Start / K; c*K < r.Start+r.Length; c++ {
				wantDepth, wantType := -1, "unallocated"
				if depth, ok := owner[c]; ok {
					wantDepth, wantType = depth, model[depth][c]
				}
				if r.Depth != wantDepth || r.Type != wantType {
					t.Errorf("run [%d,+%d) covers cluster %d: depth %d type %s, want %d %s",
						r.Start, r.Length, c, r.Depth, r.Type, wantDepth, wantType)
				}
			}
			pos = r.Start + r.Length
		}
		if pos != start+length {
			t.Errorf("runs end at %d, want %d", pos, start+length)
		}
	})
}

// fxLeak is one element of qchain leaks --output=json.
type fxLeak struct {
	Offset          int64  `json:"offset"`
	Length          int64  `json:"length"`
	Kind            string `json:"kind"`
	Refcount        int64  `json:"refcount"`
	NonZero         bool   `json:"non-zero"`
	NonZeroClusters int64  `json:"non-zero-clusters"`
}

// fxExpectLeaks merges per-cluster expectations (host cluster index ->
// kind and refcount) into runs split by kind and non-zero state, reading
// the non-zero state from the file's bytes.
func fxExpectLeaks(t *testing.T, path string, clusters map[int64]fxLeak) []fxLeak {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	idx := make([]int64, 0, len(clusters))
	for c := range clusters {
		idx = append(idx, c)
	}
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	var out []fxLeak
	for _, c := range idx {
		l := clusters[c]
		b := data[min(c*fxCluster, int64(len(data))):min((c+1)*fxCluster, int64(len(data)))]
		nz := len(bytes.Trim(b, "\x00")) > 0
		if k := len(out); k > 0 && out[k-1].Offset+out[k-1].Length == c*fxCluster &&
			out[k-1].Kind == l.Kind && out[k-1].NonZero == nz {
			out[k-1].Length += fxCluster
			if nz {
				out[k-1].NonZeroClusters++
			}
			continue
		}
		r := fxLeak{Offset: c * fxCluster, Length: fxCluster, Kind: l.Kind, Refcount: l.Refcount, NonZero: nz}
		if nz {
			r.NonZeroClusters = 1
		}
		out = append(out, r)
	}
	return out
}

// TestForensicsLeaks checks leaks on a crafted leaked cluster, on clusters
// freed by a discard, and on bytes planted in freed space and past the
// end, against the expected runs, qemu-img check and --extract's files.
func TestForensicsLeaks(t *testing.T) {
	bin := requireTools(t)
	const K = fxCluster
	// freed discards guest clusters 2-3 of an 8-cluster image and returns
	// the host clusters they had.
	freed := func(t *testing.T, q *fixtures.Qemu, img string) []int64 {
		q.IO("qcow2", img, fixtures.Pattern{Off: 0, Len: 8 * K, Byte: 0x33}.Cmd())
		offs := fxHostOffsets(fxQemuMap(t, q, img))
		q.IO("qcow2", img, fmt.Sprintf("discard -q %d %d", 2*K, 2*K))
		return []int64{offs[2] / K, offs[3] / K}
	}
	cases := []struct {
		name string
		// build makes img and returns the host clusters leaks must list.
		build func(t *testing.T, q *fixtures.Qemu, img string) map[int64]fxLeak
	}{
		{"crafted-leak", func(t *testing.T, q *fixtures.Qemu, img string) map[int64]fxLeak {
			q.IO("qcow2", img, fixtures.Pattern{Off: 0, Len: 4 * K, Byte: 0x11}.Cmd())
			st, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			fixtures.AddLeakedCluster(t, img)
			return map[int64]fxLeak{(st.Size() + K - 1) / K: {Kind: "leaked", Refcount: 1}}
		}},
		{"discard", func(t *testing.T, q *fixtures.Qemu, img string) map[int64]fxLeak {
			m := map[int64]fxLeak{}
			for _, c := range freed(t, q, img) {
				m[c] = fxLeak{Kind: "unreferenced"}
			}
			return m
		}},
		{"planted", func(t *testing.T, q *fixtures.Qemu, img string) map[int64]fxLeak {
			m := map[int64]fxLeak{}
			cs := freed(t, q, img)
			for _, c := range cs {
				m[c] = fxLeak{Kind: "unreferenced"}
			}
			fixtures.PlantBytes(t, img, cs[1]*K+100, 300, 0xab)
			m[fixtures.AppendCluster(t, img, K, 0xab)/K] = fxLeak{Kind: "unreferenced"}
			return m
		}},
		{"leak-and-planted", func(t *testing.T, q *fixtures.Qemu, img string) map[int64]fxLeak {
			m := map[int64]fxLeak{}
			for _, c := range freed(t, q, img) {
				m[c] = fxLeak{Kind: "unreferenced"}
			}
			st, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			fixtures.AddLeakedCluster(t, img)
			m[(st.Size()+K-1)/K] = fxLeak{Kind: "leaked", Refcount: 1}
			m[fixtures.AppendCluster(t, img, K, 0xcd)/K] = fxLeak{Kind: "unreferenced"}
			return m
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			q := fixtures.NewQemu(t, dir)
			img := q.Create("img.qcow2", strconv.Itoa(fxSize), "cluster_size=65536")
			want := fxExpectLeaks(t, img, c.build(t, q, img))
			fxReadOnly(t, dir)

			var got []fxLeak
			fxJSON(t, bin, 0, &got, "leaks", "--output=json", img)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("leaks:\n got %+v\nwant %+v", got, want)
			}

			// qemu-img check counts leaked clusters (refcount > 0, no
			// reference); unreferenced ones are not its business.
			res := fixtures.Run(context.Background(), dir, "qemu-img", "check", "--output=json", img)
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			var chk struct {
				Leaks int64 `json:"leaks"`
			}
			if err := json.Unmarshal(res.Stdout, &chk); err != nil {
				t.Fatalf("qemu-img check: %v\n%s", err, res.Stdout)
			}
			var leaked int64
			for _, r := range got {
				if r.Kind == "leaked" {
					leaked += r.Length / K
				}
			}
			if leaked != chk.Leaks {
				t.Errorf("leaked clusters: qchain %d, qemu-img check %d (exit %d)", leaked, chk.Leaks, res.ExitCode)
			}

			var refs []struct {
				Offset   int64 `json:"offset"`
				Length   int64 `json:"length"`
				Refcount int64 `json:"refcount"`
			}
			fxJSONLoose(t, bin, &refs, "dump", "--output=json", "--refcounts", img)
			for _, l := range got {
				for off := l.Offset; off < l.Offset+l.Length; off += K {
					for _, r := range refs {
						if off >= r.Offset && off < r.Offset+r.Length && r.Refcount != l.Refcount {
							t.Errorf("dump --refcounts: cluster at %#x has refcount %d, leaks says %d (%s)",
								off, r.Refcount, l.Refcount, l.Kind)
						}
					}
				}
			}

			ex := t.TempDir()
			var got2 []fxLeak
			fxJSON(t, bin, 0, &got2, "leaks", "--output=json", "--extract", ex, img)
			if !reflect.DeepEqual(got2, got) {
				t.Errorf("leaks --extract listed %+v, without %+v", got2, got)
			}
			file, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			wantFiles := map[string]bool{}
			for _, r := range got {
				name := fmt.Sprintf("%#x.bin", r.Offset)
				wantFiles[name] = true
				b, err := os.ReadFile(filepath.Join(ex, name))
				if err != nil {
					t.Errorf("--extract: %v", err)
					continue
				}
				end := min(r.Offset+r.Length, int64(len(file)))
				if !bytes.Equal(b, file[r.Offset:end]) {
					t.Errorf("--extract %s: %d bytes differ from the file's %d bytes at %#x", name, len(b), end-r.Offset, r.Offset)
				}
			}
			ents, err := os.ReadDir(ex)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if !wantFiles[e.Name()] {
					t.Errorf("--extract wrote unexpected %s", e.Name())
				}
			}
		})
	}
}

// fxRange is a guest range of diff.
type fxRange struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
}

// fxDiffOut is the output of qchain diff --output=json.
type fxDiffOut struct {
	Ranges    []fxRange `json:"ranges"`
	Shared    int64     `json:"shared-bytes"`
	Compared  int64     `json:"compared-bytes"`
	Different int64     `json:"different-bytes"`
}

// fxRawDiff lists the merged 512-byte-granular ranges where two raw files
// differ; the shorter reads as zeros past its end. It reads in chunks, so
// the test process stays small.
func fxRawDiff(t *testing.T, a, b string) []fxRange {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	sa, err := fa.Stat()
	if err != nil {
		t.Fatal(err)
	}
	sb, err := fb.Stat()
	if err != nil {
		t.Fatal(err)
	}
	n := max(sa.Size(), sb.Size())
	ba, bb := make([]byte, compareChunk), make([]byte, compareChunk)
	out := []fxRange{}
	for off := int64(0); off < n; off += compareChunk {
		m := min(compareChunk, n-off)
		for _, x := range []struct {
			f   *os.File
			buf []byte
		}{{fa, ba}, {fb, bb}} {
			clear(x.buf)
			if _, err := x.f.ReadAt(x.buf[:m], off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
		}
		for i := int64(0); i < m; i += fxSector {
			end := min(i+fxSector, m)
			if bytes.Equal(ba[i:end], bb[i:end]) {
				continue
			}
			if k := len(out); k > 0 && out[k-1].Start+out[k-1].Length == off+i {
				out[k-1].Length += end - i
				continue
			}
			out = append(out, fxRange{off + i, end - i})
		}
	}
	return out
}

// fxCheckDiff runs qchain diff and compares it with the raw difference.
func fxCheckDiff(t *testing.T, bin string, want []fxRange, args ...string) fxDiffOut {
	t.Helper()
	wantExit := 0
	if len(want) > 0 {
		wantExit = 1
	}
	var got fxDiffOut
	fxJSON(t, bin, wantExit, &got, append([]string{"diff", "--output=json"}, args...)...)
	if got.Ranges == nil {
		got.Ranges = []fxRange{}
	}
	if !reflect.DeepEqual(got.Ranges, want) {
		t.Errorf("ranges differ from the raw comparison:\n got %d ranges %v\nwant %d ranges %v",
			len(got.Ranges), got.Ranges, len(want), want)
	}
	var sum int64
	for _, r := range got.Ranges {
		sum += r.Length
	}
	if got.Different != sum {
		t.Errorf("different-bytes %d, ranges add up to %d", got.Different, sum)
	}
	if got.Shared+got.Compared != fxSize {
		t.Errorf("shared-bytes %d + compared-bytes %d = %d, want the virtual size %d",
			got.Shared, got.Compared, got.Shared+got.Compared, fxSize)
	}
	return got
}

// TestForensicsDiff checks diff between images of one external chain,
// against a flattened copy, and between internal snapshots, against a
// 512-byte comparison of qemu-img convert's raw output and the exit status
// of qemu-img compare.
func TestForensicsDiff(t *testing.T) {
	bin := requireTools(t)
	dir := t.TempDir()
	raws := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	names := []string{"base.qcow2", "s1.qcow2", "s2.qcow2", "s3.qcow2"}
	written := map[string][]fixtures.Pattern{}
	for i, name := range names {
		if i == 0 {
			q.Create(name, strconv.Itoa(fxSize), "cluster_size=65536")
		} else {
			q.Overlay(name, names[i-1], "qcow2", "", "cluster_size=65536")
		}
		ps := fixtures.RandomPatterns(uint64(100+i), 50, fxSize, fxCluster, fxSector)
		cmds := fixtures.WriteCmds(ps)
		if i == 3 {
			// Writes that change nothing: s1's own first write again, and
			// zeros over a range no layer writes (they must not show).
			again := written["s1.qcow2"][0]
			ps = append(ps, again)
			cmds = append(cmds, again.Cmd(), fixtures.Pattern{Off: fxSize - 2*fxCluster, Len: fxCluster}.Cmd("-z"))
		}
		written[name] = ps
		q.IO("qcow2", name, cmds...)
	}
	q.Img("convert", "-q", "-O", "qcow2", "s3.qcow2", "flat.qcow2")
	q.Overlay("empty.qcow2", "s1.qcow2", "qcow2", "")
	// Internal snapshots: writes, "one", writes, "two", writes.
	q.Create("snap.qcow2", strconv.Itoa(fxSize), "cluster_size=65536")
	for i, snap := range []string{"one", "two", ""} {
		ps := fixtures.RandomPatterns(uint64(200+i), 30, fxSize, fxCluster, fxSector)
		cmds := fixtures.WriteCmds(ps)
		if i == 1 {
			cmds = append(cmds, fixtures.Pattern{Off: ps[0].Off, Len: fxCluster}.Cmd("-z"))
		}
		q.IO("qcow2", "snap.qcow2", cmds...)
		if snap != "" {
			q.Snapshot("snap.qcow2", snap)
		}
	}
	raw := map[string]string{}
	rawOf := func(name, snap string) string {
		key := name + "@" + snap
		if raw[key] == "" {
			raw[key] = q.ConvertRaw(name, snap, filepath.Join(raws, strings.ReplaceAll(key, "@", "_")+".raw"))
		}
		return raw[key]
	}
	fxReadOnly(t, dir)

	pairs := []struct {
		name       string
		a, b       string
		sharesBase bool
	}{
		{"s1-s3", "s1.qcow2", "s3.qcow2", true},
		{"s3-s1", "s3.qcow2", "s1.qcow2", true},
		{"s1-s2", "s1.qcow2", "s2.qcow2", true},
		{"base-s3", "base.qcow2", "s3.qcow2", true},
		{"s3-flat-identical", "s3.qcow2", "flat.qcow2", false},
		{"s1-empty-overlay-identical", "s1.qcow2", "empty.qcow2", true},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			want := fxRawDiff(t, rawOf(p.a, ""), rawOf(p.b, ""))
			cmp := fixtures.Run(context.Background(), dir, "qemu-img", "compare", "-q", p.a, p.b)
			if cmp.Err != nil {
				t.Fatal(cmp.Err)
			}
			if (cmp.ExitCode == 0) != (len(want) == 0) {
				t.Fatalf("test bug: qemu-img compare exit %d but raw diff has %d ranges", cmp.ExitCode, len(want))
			}
			got := fxCheckDiff(t, bin, want, q.Path(p.a), q.Path(p.b))
			if p.sharesBase && got.Shared == 0 {
				t.Errorf("shared-bytes 0: the metadata shortcut was not used for images sharing layers")
			}
			if p.name == "s1-s3" {
				// Differences can only lie where s2 or s3 wrote.
				var touched [fxSize / fxSector]bool
				for _, n := range []string{"s2.qcow2", "s3.qcow2"} {
					for _, w := range written[n] {
						for s := w.Off / fxSector; s < (w.Off+w.Len)/fxSector; s++ {
							touched[s] = true
						}
					}
				}
				for _, r := range got.Ranges {
					for s := r.Start / fxSector; s < (r.Start+r.Length)/fxSector && s < int64(len(touched)); s++ {
						if !touched[s] {
							t.Errorf("range [%d,+%d) includes sector %d that neither s2 nor s3 wrote", r.Start, r.Length, s)
							break
						}
					}
				}
			}
		})
	}

	snaps := []struct {
		name        string
		snapA, snap string // "" = current state
	}{
		{"one-two", "one", "two"},
		{"two-one", "two", "one"},
		{"one-current", "one", ""},
		{"id1-name-one-identical", "1", "one"},
	}
	img := q.Path("snap.qcow2")
	for _, s := range snaps {
		t.Run("internal-"+s.name, func(t *testing.T) {
			want := fxRawDiff(t, rawOf("snap.qcow2", s.snapA), rawOf("snap.qcow2", s.snap))
			args := []string{"--snapshot", s.snapA}
			if s.snap != "" {
				args = append(args, "--snapshot-b", s.snap)
			}
			got := fxCheckDiff(t, bin, want, append(args, img, img)...)
			if got.Shared == 0 {
				t.Errorf("shared-bytes 0 between two states of one image")
			}
		})
	}
}

// fxDependant is one element of qchain who-uses --output=json.
type fxDependant struct {
	Image string   `json:"image"`
	Depth int      `json:"depth"`
	Via   []string `json:"via"`
}

// TestForensicsWhoUses builds a tree of more than 50 images (bases, chains
// of depth 1 to 5 in nested folders with relative and absolute backing
// names, branches, a copy and a hard link of a base, unrelated images and
// non-image files) and checks who-uses against the chains it built.
func TestForensicsWhoUses(t *testing.T) {
	bin := requireTools(t)
	root := t.TempDir()
	outside := t.TempDir()
	q := fixtures.NewQemu(t, root)
	chains := map[string][]string{} // image -> its chain below it, absolute, top first
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	base := func(p string) string {
		mk(p)
		q.Create(p, "1M")
		chains[p] = nil
		return p
	}
	overlay := func(p, backing string, relative bool) string {
		mk(p)
		name := backing
		if relative {
			rel, err := filepath.Rel(filepath.Dir(p), backing)
			if err != nil {
				t.Fatal(err)
			}
			name = rel
		}
		q.Overlay(p, name, "qcow2", "")
		chains[p] = append([]string{backing}, chains[backing]...)
		return p
	}
	gold := filepath.Join(root, "gold")
	baseA := base(filepath.Join(gold, "base-a.qcow2"))
	baseB := base(filepath.Join(gold, "base-b.qcow2"))
	base(filepath.Join(gold, "base-c.qcow2"))
	// A copy of base A is another file; a hard link to it (outside the
	// tree) is the same file.
	copyA := filepath.Join(gold, "old", "base-a-copy.qcow2")
	mk(copyA)
	b, err := os.ReadFile(baseA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyA, b, 0o644); err != nil {
		t.Fatal(err)
	}
	chains[copyA] = nil
	linkA := filepath.Join(outside, "base-a-link.qcow2")
	if err := os.Link(baseA, linkA); err != nil {
		t.Fatal(err)
	}
	chains[linkA] = nil

	var mids []string
	for i := range 12 {
		depth := i%5 + 1
		below := baseA
		for k := 1; k <= depth; k++ {
			p := filepath.Join(root, "vms", fmt.Sprintf("vm%02d", i), strings.Repeat("sub/", k-1), fmt.Sprintf("disk%d.qcow2", k))
			below = overlay(p, below, (i+k)%2 == 0)
			if k == 2 {
				mids = append(mids, below)
			}
		}
	}
	for i, m := range mids[:3] {
		overlay(filepath.Join(root, "branches", fmt.Sprintf("b%d", i), "branch.qcow2"), m, i%2 == 0)
	}
	for i := range 6 {
		below := baseB
		for k := 1; k <= i%3+1; k++ {
			below = overlay(filepath.Join(root, "other", fmt.Sprintf("o%d", i), fmt.Sprintf("l%d.qcow2", k)), below, k%2 == 1)
		}
	}
	overlay(filepath.Join(root, "copies", "on-copy.qcow2"), copyA, true)
	linked := overlay(filepath.Join(root, "copies", "on-link.qcow2"), linkA, false)
	overlay(filepath.Join(root, "copies", "on-link-top.qcow2"), linked, true)
	for i := range 4 {
		base(filepath.Join(root, "misc", strconv.Itoa(i), "standalone.qcow2"))
	}
	q.CreateRaw(filepath.Join(root, "misc", "disk.raw"), "1M")
	junk := map[string][]byte{
		"misc/readme.txt":   []byte("not an image\n"),
		"misc/empty.qcow2":  nil,
		"misc/QFI.bin":      []byte("QFI\xfb\x00\x00\x00\x03truncated"),
		"vms/vm00/notes.md": []byte("# vm00\n"),
	}
	for name, data := range junk {
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(chains) - 1; n < 50 { // the link lives outside the tree
		t.Fatalf("test bug: only %d images in the tree", n)
	}
	fxReadOnly(t, root)

	// expect lists the dependants of target under the folders in dirs.
	expect := func(target string, dirs []string) map[string]int {
		ts, err := os.Stat(target)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for img, chain := range chains {
			in := false
			for _, d := range dirs {
				if strings.HasPrefix(img, d+string(filepath.Separator)) {
					in = true
				}
			}
			if !in {
				continue
			}
			for k, p := range chain {
				if st, err := os.Stat(p); err == nil && os.SameFile(st, ts) {
					out[img] = k + 1
					break
				}
			}
		}
		return out
	}
	vm4 := filepath.Join(root, "vms", "vm04", "sub", "disk2.qcow2")
	cases := []struct {
		name   string
		target string
		dirs   []string
	}{
		{"base-a", baseA, []string{root}},
		{"base-a-unclean-path", filepath.Join(gold, "..", "gold", "base-a.qcow2"), []string{root}},
		{"base-a-two-folders", baseA, []string{filepath.Join(root, "vms"), filepath.Join(root, "copies")}},
		{"base-b", baseB, []string{root}},
		{"unused-base-c", filepath.Join(gold, "base-c.qcow2"), []string{root}},
		{"copy", copyA, []string{root}},
		{"middle-of-chain", vm4, []string{root}},
		{"mid-with-branch", mids[0], []string{root}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := expect(c.target, c.dirs)
			if c.name == "base-a" && len(want) < 35 {
				t.Fatalf("test bug: base-a has only %d dependants", len(want))
			}
			args := []string{"who-uses", "--output=json"}
			for _, d := range c.dirs {
				args = append(args, "--search", d)
			}
			var got []fxDependant
			fxJSON(t, bin, 0, &got, append(args, c.target)...)
			ts, err := os.Stat(c.target)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, d := range got {
				img := filepath.Clean(d.Image)
				if seen[img] {
					t.Errorf("%s listed twice", img)
				}
				seen[img] = true
				wd, ok := want[img]
				switch {
				case !ok:
					t.Errorf("unexpected dependant %s (depth %d, via %v)", d.Image, d.Depth, d.Via)
					continue
				case d.Depth != wd:
					t.Errorf("%s: depth %d, want %d", img, d.Depth, wd)
				}
				if len(d.Via) != d.Depth+1 || filepath.Clean(d.Via[0]) != img {
					t.Errorf("%s: via %v does not run from the image over %d backing files", img, d.Via, d.Depth)
					continue
				}
				if st, err := os.Stat(d.Via[d.Depth]); err != nil || !os.SameFile(st, ts) {
					t.Errorf("%s: via ends at %s, not the target (%v)", img, d.Via[d.Depth], err)
				}
			}
			var missing []string
			for img, depth := range want {
				if !seen[img] {
					missing = append(missing, fmt.Sprintf("%s (depth %d)", img, depth))
				}
			}
			sort.Strings(missing)
			for _, m := range missing {
				t.Errorf("missing dependant %s", m)
			}
		})
	}
}

// TestForensicsSnapshot checks export, map and clusters with --snapshot on
// an image with three internal snapshots: export against qemu-img convert
// -l, map against qemu-img map of a copy reverted to the snapshot (the
// revert shares the L2 tables, so host offsets match), and clusters and
// the exported bytes against map's ranges.
func TestForensicsSnapshot(t *testing.T) {
	bin := requireTools(t)
	compat := compatFlags(t)
	dir := t.TempDir()
	work := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	img := q.Create("img.qcow2", strconv.Itoa(fxSize), "cluster_size=65536")
	rounds := [][]string{
		fixtures.WriteCmds(fixtures.RandomPatterns(300, 20, fxSize, fxCluster, fxCluster)),
		append(fixtures.WriteCmds(fixtures.RandomPatterns(301, 20, fxSize, 3000, fxSector)),
			fixtures.Pattern{Off: 0, Len: 4 * fxCluster}.Cmd("-z")),
		append(fixtures.WriteCmds(fixtures.RandomPatterns(302, 20, fxSize, fxCluster, fxCluster)),
			fixtures.Pattern{Off: 10 * fxCluster, Len: 2 * fxCluster, Byte: 0x5c}.Cmd("-c"),
			fmt.Sprintf("discard -q %d %d", 0, 64*fxCluster)),
		fixtures.WriteCmds(fixtures.RandomPatterns(303, 20, fxSize, fxCluster, fxCluster)),
	}
	for i, cmds := range rounds {
		q.IO("qcow2", "img.qcow2", cmds...)
		if i < 3 {
			q.Snapshot("img.qcow2", fmt.Sprintf("snap-%c", 'a'+i))
		}
	}
	fxReadOnly(t, dir)

	t.Run("dump-snapshots", func(t *testing.T) {
		type snapInfo struct {
			ID, Name        string
			DateSec, DateNs int64
		}
		var dumped []struct {
			ID       string `json:"id"`
			Name     string `json:"name"`
			DateSec  int64  `json:"date_sec"`
			DateNsec int64  `json:"date_nsec"`
		}
		fxJSONLoose(t, bin, &dumped, "dump", "--output=json", "--snapshots", img)
		var info struct {
			Snapshots []struct {
				ID       string `json:"id"`
				Name     string `json:"name"`
				DateSec  int64  `json:"date-sec"`
				DateNsec int64  `json:"date-nsec"`
			} `json:"snapshots"`
		}
		if err := json.Unmarshal(q.Img("info", "--output=json", img), &info); err != nil {
			t.Fatal(err)
		}
		var want, got []snapInfo
		for _, s := range info.Snapshots {
			want = append(want, snapInfo{s.ID, s.Name, s.DateSec, s.DateNsec})
		}
		for _, s := range dumped {
			got = append(got, snapInfo{s.ID, s.Name, s.DateSec, s.DateNsec})
		}
		if len(want) != 3 || !reflect.DeepEqual(got, want) {
			t.Errorf("dump --snapshots: got %+v, qemu-img info says %+v", got, want)
		}
	})

	for _, snap := range []string{"snap-a", "2", "snap-c", "3"} {
		t.Run(snap, func(t *testing.T) {
			want := q.ConvertRaw(img, snap, filepath.Join(work, "want-"+snap+".raw"))
			got := filepath.Join(work, "got-"+snap+".raw")
			res := fxQchain(t, bin, "export", "--snapshot", snap, "-o", got, img)
			if res.ExitCode != 0 {
				t.Fatalf("%s: exit %d: %s", res.Cmd, res.ExitCode, res.Stderr)
			}
			if d, err := compareRawFiles(want, got); err != nil || d != "" {
				t.Errorf("export --snapshot %s differs from qemu-img convert -l: %s %v", snap, d, err)
			}

			var m []fxMapEntry
			res = fxJSON(t, bin, 0, &m, withFlags([]string{"map", "--output=json", "--snapshot", snap, img}, compat)...)
			gotMap, err := parseJSON(res.Stdout)
			if err != nil {
				t.Fatal(err)
			}
			reverted := filepath.Join(work, "reverted-"+snap+".qcow2")
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(reverted, b, 0o644); err != nil {
				t.Fatal(err)
			}
			q.Img("snapshot", "-q", "-a", snap, reverted)
			wantMap, err := parseJSON(q.Img("map", "--output=json", reverted))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range jsonDiff(wantMap, gotMap) {
				t.Errorf("map --snapshot %s vs qemu-img map after snapshot -a: %s", snap, l)
			}

			// Every non-zero sector of the export lies in a data range.
			content, err := os.Open(want)
			if err != nil {
				t.Fatal(err)
			}
			defer content.Close()
			buf := make([]byte, compareChunk)
			pos := int64(0)
			for _, e := range m {
				if e.Start != pos {
					t.Fatalf("map --snapshot %s: entry at %d, want %d", snap, e.Start, pos)
				}
				pos += e.Length
				if e.Data && !e.Zero {
					continue
				}
				for off := e.Start; off < e.Start+e.Length; off += compareChunk {
					b := buf[:min(compareChunk, e.Start+e.Length-off)]
					if _, err := content.ReadAt(b, off); err != nil {
						t.Fatal(err)
					}
					if len(bytes.Trim(b, "\x00")) > 0 {
						t.Errorf("map --snapshot %s: [%d,+%d) is not data but the export has non-zero bytes at %d..", snap, e.Start, e.Length, off)
						break
					}
				}
			}

			var runs []fxRun
			fxJSON(t, bin, 0, &runs, "clusters", "--output=json", "--snapshot", snap, img)
			got2 := fxPerCluster(t, "clusters --snapshot", runs, 0, fxSize)
			for _, e := range m {
				for c := e.Start / fxCluster; c*fxCluster < e.Start+e.Length; c++ {
					g, ok := got2[c]
					if !ok {
						continue
					}
					var okType bool
					switch {
					case !e.Present:
						okType = g.Type == "unallocated"
					case e.Zero && !e.Data:
						okType = g.Type == "zero" || g.Type == "zero-alloc"
					default:
						okType = g.Type == "data" || g.Type == "compressed"
					}
					if !okType {
						t.Errorf("clusters --snapshot %s: cluster %d is %s, map says present=%v zero=%v data=%v",
							snap, c, g.Type, e.Present, e.Zero, e.Data)
					}
				}
			}
		})
	}
}

// fxMalformedCommands lists every forensics command run on a malformed
// case: image is the case's image, last the last file of its chain, dir
// its folder, extract a folder outside it.
func fxMalformedCommands(image, last, dir, extract string) [][]string {
	cmds := [][]string{
		{"layers", "--output=json", "-f", "qcow2", image},
		{"clusters", "--output=json", "-f", "qcow2", image},
		{"clusters", "--output=json", "-f", "qcow2", "--layer", "0", image},
		{"leaks", "--output=json", "-f", "qcow2", image},
		{"leaks", "--output=json", "-f", "qcow2", "--extract", extract, image},
		{"diff", "--output=json", "-f", "qcow2", image, image},
		{"who-uses", "--output=json", "--search", dir, image},
	}
	if last != image {
		cmds = append(cmds, []string{"who-uses", "--output=json", "--search", dir, last})
	}
	for _, sel := range [][]string{{"--header"}, {"--extensions"}, {"--l1"}, {"--l2", "0"},
		{"--refcounts"}, {"--snapshots"}, {"--bitmaps"}} {
		cmds = append(cmds, append(append([]string{"dump", "--output=json"}, sel...), image))
	}
	return cmds
}

// fxTimeBin is GNU time, which measures a command's peak RSS from a fresh
// fork. The rusage os/exec reports does not serve: Go starts children with
// vfork (CLONE_VM), so a child's ru_maxrss starts at the test process's own
// peak, which the other forensics tests push past the limit.
const fxTimeBin = "/usr/bin/time"

// fxRunMeasured runs qchain like runMalformed, measuring its peak RSS
// through GNU time when that is installed.
func fxRunMeasured(t *testing.T, bin, dir string, args []string) malformedRun {
	t.Helper()
	if _, err := os.Stat(fxTimeBin); err != nil {
		return runMalformed(bin, dir, args)
	}
	rssFile := filepath.Join(t.TempDir(), "rss")
	ctx, cancel := context.WithTimeout(context.Background(), malformedTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, fxTimeBin, append([]string{"-q", "-f", "%M", "-o", rssFile, bin}, args...)...)
	cmd.Dir = dir
	cmd.WaitDelay = time.Second
	// Kill qchain with its time wrapper.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := malformedRun{stdout: stdout.String(), stderr: stderr.String(), exit: -1, elapsed: time.Since(start)}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.err = ctx.Err()
	case err != nil && !errors.As(err, &exitErr):
		r.err = err
	}
	if ps := cmd.ProcessState; ps != nil {
		r.exit = ps.ExitCode()
		if r.exit >= 128 { // time's report of a death by signal
			r.err = fmt.Errorf("killed by signal %d", r.exit-128)
			r.exit = -1
		}
	}
	if b, err := os.ReadFile(rssFile); err == nil {
		if kib, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			r.maxRSS = kib << 10
		}
	}
	return r
}

// TestForensicsMalformed runs every forensics command on every image of
// the malformed corpus: no panic, under 10 s and 64 MiB, at most a
// one-line error, valid JSON when it succeeds, and no file touched.
func TestForensicsMalformed(t *testing.T) {
	bin := requireTools(t)
	for _, c := range fixtures.MalformedCases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			for _, name := range c.Order {
				if err := os.WriteFile(filepath.Join(dir, name), c.Files[name], 0o644); err != nil {
					t.Fatal(err)
				}
			}
			old := time.Now().Add(-time.Hour).Truncate(time.Second)
			for _, name := range c.Order {
				if err := os.Chtimes(filepath.Join(dir, name), old, old); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshotFolder(t, dir)
			image := filepath.Join(dir, c.Image())
			last := filepath.Join(dir, c.Order[len(c.Order)-1])
			extract := t.TempDir()
			for _, args := range fxMalformedCommands(image, last, dir, extract) {
				r := fxRunMeasured(t, bin, dir, args)
				what := "qchain " + strings.Join(args, " ")
				switch {
				case r.err != nil:
					t.Errorf("%s: %v after %v\nstderr: %s", what, r.err, r.elapsed.Round(time.Millisecond), r.stderr)
					continue
				case r.exit < 0:
					t.Errorf("%s was killed", what)
				}
				if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine ") {
					t.Errorf("%s panicked:\n%s", what, r.stderr)
				}
				if r.elapsed > malformedTimeout {
					t.Errorf("%s took %v", what, r.elapsed)
				}
				if r.maxRSS > malformedMaxRSS {
					t.Errorf("%s: peak RSS %d MiB, limit %d MiB", what, r.maxRSS>>20, malformedMaxRSS>>20)
				}
				if msg := strings.TrimRight(r.stderr, "\n"); strings.Contains(msg, "\n") {
					t.Errorf("%s: exit %d, error is not one line:\n%s", what, r.exit, r.stderr)
				}
				if r.exit == 0 {
					if _, err := parseJSON([]byte(r.stdout)); err != nil {
						t.Errorf("%s: exit 0 but stdout is not JSON (%v):\n%.300s", what, err, r.stdout)
					}
				}
				after := snapshotFolder(t, dir)
				for name, b := range before {
					a, ok := after[name]
					switch {
					case !ok:
						t.Errorf("%s removed %s", what, name)
					case !bytes.Equal(a.data, b.data):
						t.Errorf("%s changed the bytes of %s", what, name)
					case !a.mtime.Equal(b.mtime):
						t.Errorf("%s changed the mtime of %s", what, name)
					}
				}
				for name := range after {
					if _, ok := before[name]; !ok {
						t.Errorf("%s created %s", what, name)
					}
				}
			}
		})
	}
}
