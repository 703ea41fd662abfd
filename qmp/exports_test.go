package qmp

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// graphBuilder makes BlockGraph replies for diskExports' table tests.
type graphBuilder struct {
	g     BlockGraph
	ids   map[string]int64
	next  int64
	nodes map[string]string // node name -> driver
}

func newGraphBuilder() *graphBuilder {
	return &graphBuilder{ids: make(map[string]int64), nodes: make(map[string]string)}
}

// node adds a block-driver node with its driver.
func (b *graphBuilder) node(name, driver string) *graphBuilder {
	b.next++
	b.ids[name] = b.next
	b.nodes[name] = driver
	b.g.Nodes = append(b.g.Nodes, BlockGraphNode{ID: b.next, Type: "block-driver", Name: name})
	return b
}

// edge adds an edge from parent to child node with role and permissions.
func (b *graphBuilder) edge(parent, child, role string, perm ...string) *graphBuilder {
	b.g.Edges = append(b.g.Edges, BlockGraphEdge{Parent: b.ids[parent], Child: b.ids[child], Name: role,
		Perm: perm, SharedPerm: []string{"write-unchanged", "write", "consistent-read"}})
	return b
}

// backend adds a block backend (name "" for an anonymous one) with a root
// edge to node; write says whether it holds the write permission.
func (b *graphBuilder) backend(name, node string, write bool) *graphBuilder {
	b.next++
	b.g.Nodes = append(b.g.Nodes, BlockGraphNode{ID: b.next, Type: "block-backend", Name: name})
	perm := []string{"consistent-read"}
	if write {
		perm = append(perm, "write")
	}
	b.g.Edges = append(b.g.Edges, BlockGraphEdge{Parent: b.next, Child: b.ids[node], Name: "root", Perm: perm})
	return b
}

// chain adds the qcow2 layers of testDisk with their file nodes: top
// (file top-file) backed by base (file base-file).
func (b *graphBuilder) chain() *graphBuilder {
	return b.node("top", "qcow2").node("top-file", "file").node("base", "qcow2").node("base-file", "file").
		edge("top", "top-file", "file", "write", "consistent-read").
		edge("top", "base", "backing", "consistent-read").
		edge("base", "base-file", "file", "consistent-read")
}

var testDisk = Disk{Device: "vda", NodeName: "top", Chain: []ChainLayer{
	{NodeName: "top", Filename: "/images/active.qcow2", Format: "qcow2"},
	{NodeName: "base", Filename: "/images/base.qcow2", Format: "qcow2"},
}}

// TestDiskExports: exports on a disk's nodes are found (on a layer, on a
// layer's file, on a job's filter above the top) with their access read
// from the anonymous backends' permissions; exports elsewhere are not.
func TestDiskExports(t *testing.T) {
	exp := func(id, node string) BlockExport { return BlockExport{ID: id, Type: "nbd", NodeName: node} }
	tests := []struct {
		name  string
		graph *graphBuilder // nil: no x-debug-query-block-graph
		exps  []BlockExport
		want  []string // "id layer access"
	}{
		{"writable-on-top", newGraphBuilder().chain().backend("vda", "top", false).backend("", "top", true),
			[]BlockExport{exp("e", "top")}, []string{"e active.qcow2 writable"}},
		{"read-only-on-top", newGraphBuilder().chain().backend("vda", "top", false).backend("", "top", false),
			[]BlockExport{exp("e", "top")}, []string{"e active.qcow2 read-only"}},
		{"device-writes-read-only-export", newGraphBuilder().chain().
			backend("/machine/peripheral/vd0/virtio-backend", "top", true).backend("", "top", false),
			[]BlockExport{exp("e", "top")}, []string{"e active.qcow2 read-only"}},
		{"device-and-writable-export", newGraphBuilder().chain().
			backend("/machine/peripheral/vd0/virtio-backend", "top", true).backend("", "top", true),
			[]BlockExport{exp("e", "top")}, []string{"e active.qcow2 writable"}},
		{"two-writable", newGraphBuilder().chain().backend("", "top", true).backend("", "top", true),
			[]BlockExport{exp("a", "top"), exp("b", "top")}, []string{"a active.qcow2 writable", "b active.qcow2 writable"}},
		{"one-of-two-writable", newGraphBuilder().chain().backend("", "top", false).backend("", "top", true),
			[]BlockExport{exp("a", "top"), exp("b", "top")},
			[]string{"a active.qcow2 writability unknown", "b active.qcow2 writability unknown"}},
		{"on-base", newGraphBuilder().chain().backend("", "base", false),
			[]BlockExport{exp("e", "base")}, []string{"e base.qcow2 read-only"}},
		{"on-file-node", newGraphBuilder().chain().backend("", "top-file", true),
			[]BlockExport{exp("e", "top-file")}, []string{"e active.qcow2 writable"}},
		{"on-job-filter", newGraphBuilder().chain().node("mt", "mirror_top").
			edge("mt", "top", "backing", "write").backend("vda", "mt", false).backend("", "mt", true).
			backend("", "base", true), // the commit's own backend on its base
			[]BlockExport{exp("e", "mt")}, []string{"e active.qcow2 writable"}},
		{"job-backend-beside-export", newGraphBuilder().chain().backend("", "base", true).backend("", "base", false),
			[]BlockExport{exp("e", "base")}, []string{"e base.qcow2 writability unknown"}},
		{"other-disk", newGraphBuilder().chain().node("other", "qcow2").backend("", "other", true),
			[]BlockExport{exp("e", "other")}, nil},
		{"other-disk-on-our-base", newGraphBuilder().chain().node("other", "qcow2").
			edge("other", "base", "backing", "consistent-read").backend("", "other", true),
			[]BlockExport{exp("e", "other")}, nil},
		{"no-graph-on-layer", nil, []BlockExport{exp("e", "top"), exp("f", "mt")},
			[]string{"e active.qcow2 writability unknown"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var g *BlockGraph
			var drivers map[string]string
			if tc.graph != nil {
				g, drivers = &tc.graph.g, tc.graph.nodes
			}
			var got []string
			for _, e := range diskExports(testDisk, tc.exps, g, drivers) {
				got = append(got, e.ID+" "+filepath.Base(e.Layer.Filename)+" "+e.Access.String())
				if e.Access == ExportAccessUnknown && e.Why == "" {
					t.Errorf("%s: unknown access without a reason", e.ID)
				}
				if e.MayWrite() != (e.Access != ExportReadOnly) {
					t.Errorf("%s: MayWrite %t with access %s", e.ID, e.MayWrite(), e.Access)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDiskExportString(t *testing.T) {
	e := DiskExport{BlockExport: BlockExport{ID: "exp0", Type: "nbd", NodeName: "#block123"},
		Layer: testDisk.Chain[0], Access: ExportWritable}
	if got, want := e.String(), `block export "exp0" (nbd, writable) on node #block123 (active.qcow2)`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
	// A -blockdev layer's json: filename is named by its file.
	e.Layer.Filename = `json:{"backing": "base", "driver": "qcow2", "file": {"driver": "file", "filename": "/images/top.qcow2"}}`
	if got, want := e.String(), `block export "exp0" (nbd, writable) on node #block123 (top.qcow2)`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
}

// TestDiskExportsQemu: a real QEMU's writable and read-only NBD exports on
// a -drive disk's top node, and a read-only one on its base, are found
// with their access; the access of the two on the top, where one writes,
// is unknown, since QEMU does not say which. While an active commit runs,
// the exports sit on its filter and are still the disk's.
func TestDiskExportsQemu(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	c := buildChain(t)
	tg := startTarget(t, kindDrive, c)
	disks, err := DiskChains(ctx, tg.conn)
	if err != nil || len(disks) != 1 {
		t.Fatalf("DiskChains: %+v %v", disks, err)
	}
	d := disks[0]
	sock := filepath.Join(t.TempDir(), "nbd")
	if err := tg.conn.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}}, nil); err != nil {
		t.Fatal(err)
	}
	add := func(id, node string, writable bool) {
		t.Helper()
		if err := tg.conn.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": id, "name": id, "node-name": node, "writable": writable}, nil); err != nil {
			t.Fatal(err)
		}
	}
	del := func(id string) {
		t.Helper()
		if err := tg.conn.Execute(ctx, "block-export-del", map[string]any{"id": id}, nil); err != nil {
			t.Fatal(err)
		}
		// The export goes once its clients have (it has none).
		for {
			exps, err := tg.conn.QueryBlockExports(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(exps, func(e BlockExport) bool { return e.ID == id }) {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("export %s not gone: %+v", id, exps)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	check := func(what string, want ...string) {
		t.Helper()
		exps, err := DiskExports(ctx, tg.conn, d)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range exps {
			got = append(got, e.ID+" "+filepath.Base(e.Layer.Filename)+" "+e.Access.String())
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
	}
	check("no exports")
	add("ro", d.Chain[0].NodeName, false)
	add("base", d.Chain[2].NodeName, false)
	check("read-only", "base base.qcow2 read-only", "ro top.qcow2 read-only")
	add("rw", d.Chain[0].NodeName, true)
	check("one of two writes", "base base.qcow2 read-only", "ro top.qcow2 writability unknown", "rw top.qcow2 writability unknown")
	del("ro")
	check("writable", "base base.qcow2 read-only", "rw top.qcow2 writable")

	if _, err := StartJob(ctx, tg.conn, BlockCommit{JobID: "j", Device: d.Name(), Speed: throttle}); err != nil {
		t.Fatal(err)
	}
	exps, err := tg.conn.QueryBlockExports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exps {
		if e.ID == "rw" && e.NodeName == d.Chain[0].NodeName {
			t.Errorf("during the commit the export is still on the top node %s, not on the job's filter", e.NodeName)
		}
	}
	check("during an active commit", "base base.qcow2 writability unknown", "rw top.qcow2 writable")
	if err := tg.conn.JobCancel(ctx, "j"); err != nil {
		t.Fatal(err)
	}
	if _, err := newJob(tg.conn, "j", "commit").Wait(ctx, WaitOptions{PollInterval: 10 * time.Millisecond}); err != nil && !strings.Contains(err.Error(), "cancel") {
		t.Fatalf("waiting for the cancelled commit: %v", err)
	}
}

// TestExportError: the error names each export, says why an unknown one
// counts, and wraps ErrWritableExport.
func TestExportError(t *testing.T) {
	err := error(&ExportError{Exports: []DiskExport{
		{BlockExport: BlockExport{ID: "a", Type: "nbd", NodeName: "top"}, Layer: testDisk.Chain[0], Access: ExportWritable},
		{BlockExport: BlockExport{ID: "b", Type: "fuse", NodeName: "top"}, Layer: testDisk.Chain[0], Why: "no graph"},
	}})
	want := `block export "a" (nbd, writable) on node top (active.qcow2) can write to the disk; ` +
		`block export "b" (fuse, writability unknown) on node top (active.qcow2) may write to the disk (qchain cannot tell: no graph)`
	if err.Error() != want {
		t.Errorf("Error() = %s\nwant      %s", err, want)
	}
	if !errors.Is(fmt.Errorf("wrapped: %w", err), ErrWritableExport) {
		t.Error("does not wrap ErrWritableExport")
	}
}
