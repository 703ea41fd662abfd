package qmp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrWritableExport is what a refused pivot or merge wraps when a block
// export can write to the disk, or may (an *ExportError).
var ErrWritableExport = errors.New("qmp: a block export can write to the disk")

// ExportError lists the block exports of a disk that can write to it or
// may (their access is unknown). It wraps ErrWritableExport.
//
// QEMU 7.2 and 10.0 lose such writes when a job switches the disk's nodes
// (an active commit's or a mirror's pivot): while the job holds the old
// top drained for the switch, the NBD server quiesces the clients it has
// (nbd_drained_begin walks the export's client list), but a client that
// connects during the drain is not quiesced, and the NBD export's block
// backend does not queue requests in a drain (it relies on quiescing its
// clients), so that client's writes reach the old top after the job's
// last copy, are acknowledged, and leave the disk with the old top.
// With such a writer, QEMU 7.2 and 10.0 were also seen to abort or crash
// at the switch (10.0: "qemu_mutex_lock_impl: Assertion
// `mutex->initialized' failed" during job-finalize), and 10.0 once hung
// in bdrv_set_dirty_bitmap. Other export types (FUSE, vhost-user-blk)
// were not measured; qchain treats them alike.
type ExportError struct {
	Exports []DiskExport
}

// Error names each export and why it counts: "block export "exp0" (nbd,
// writable) on node #block123 (active.qcow2) can write to the disk".
func (e *ExportError) Error() string {
	var parts []string
	for _, x := range e.Exports {
		if x.Access == ExportAccessUnknown {
			parts = append(parts, fmt.Sprintf("%s may write to the disk (qchain cannot tell: %s)", x, x.Why))
		} else {
			parts = append(parts, x.String()+" can write to the disk")
		}
	}
	return strings.Join(parts, "; ")
}

// Unwrap returns ErrWritableExport.
func (e *ExportError) Unwrap() error { return ErrWritableExport }

// CheckExports returns an *ExportError when a block export on a node of
// d can write to it or may, and nil when every export of d is read-only
// (or it has none).
func CheckExports(ctx context.Context, c *Conn, d Disk) error {
	exps, err := DiskExports(ctx, c, d)
	if err != nil {
		return err
	}
	var bad []DiskExport
	for _, e := range exps {
		if e.MayWrite() {
			bad = append(bad, e)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return &ExportError{Exports: bad}
}

// BlockExport is one element of query-block-exports (QEMU 5.2+): an NBD,
// FUSE, vhost-user-blk or VDUSE export of a block node.
type BlockExport struct {
	// ID is the export's id, as block-export-add and block-export-del
	// name it.
	ID string `json:"id"`
	// Type is "nbd", "fuse", "vhost-user-blk" or "vduse-blk".
	Type string `json:"type"`
	// NodeName is the node the export's own block backend is attached to
	// now: QEMU moves it with the disk, onto a job's filter node while a
	// job runs and onto the new top when a job switches the disk.
	NodeName string `json:"node-name"`
	// ShuttingDown is set while the export waits for its clients to go.
	ShuttingDown bool `json:"shutting-down"`
}

// QueryBlockExports runs query-block-exports.
func (c *Conn) QueryBlockExports(ctx context.Context) ([]BlockExport, error) {
	var out []BlockExport
	err := c.Execute(ctx, "query-block-exports", nil, &out)
	return out, err
}

// ExportAccess says whether a block export can write to its node, as far
// as QEMU's block graph tells.
type ExportAccess int

const (
	// ExportAccessUnknown means the graph does not tell; a caller that
	// must not lose writes treats it as ExportWritable. It is the zero
	// value.
	ExportAccessUnknown ExportAccess = iota
	// ExportReadOnly means the export cannot write: no block backend that
	// may be the export's holds the write permission on its node.
	ExportReadOnly
	// ExportWritable means the export's block backend holds the write
	// permission on its node (block-export-add writable=true).
	ExportWritable
)

// String is "read-only", "writable" or "writability unknown".
func (a ExportAccess) String() string {
	switch a {
	case ExportReadOnly:
		return "read-only"
	case ExportWritable:
		return "writable"
	}
	return "writability unknown"
}

// DiskExport is a block export whose node is a node of a disk: a layer of
// its chain, a node below a layer (its file), or a filter above one (a
// job's, while it runs).
type DiskExport struct {
	BlockExport
	// Layer is the layer of the disk's chain whose data the export
	// reaches: its node's own layer, the layer a filter passes on to, or
	// the layer whose file the node is.
	Layer ChainLayer
	// Access says whether the export can write.
	Access ExportAccess
	// Why says, when Access is ExportAccessUnknown, why the graph does
	// not tell.
	Why string
}

// String names the export in a message: `block export "exp0" (nbd,
// writable) on node #block123 (active.qcow2)`.
func (e DiskExport) String() string {
	layer := PlainFilename(e.Layer.Filename)
	if i := strings.LastIndexByte(layer, '/'); i >= 0 && !strings.HasPrefix(layer, "json:") {
		layer = layer[i+1:]
	}
	where := e.NodeName
	if layer != "" {
		where += " (" + layer + ")"
	}
	return fmt.Sprintf("block export %q (%s, %s) on node %s", e.ID, e.Type, e.Access, where)
}

// MayWrite reports whether e must be treated as writable: it is, or the
// graph does not tell.
func (e DiskExport) MayWrite() bool { return e.Access != ExportReadOnly }

// DiskExports returns the block exports attached to a node of d (as
// DiskChains returned it), with whether each can write.
//
// QEMU reports no export's writability directly. It is read from
// x-debug-query-block-graph: an export is an anonymous block backend
// (named backends are -drive ids and guest devices' QOM paths) with a
// "root" edge to the export's node, holding the "write" permission when
// the export is writable. When the anonymous backends on a node are
// exactly its exports, their permissions tell: none writes (all
// read-only), all write (all writable), or some do, and QEMU does not say
// which (each export's access is then unknown). Where other anonymous
// backends share the node (a job's) and one of them writes, or the graph
// command is missing, the access is unknown.
//
// Without query-block-exports (QEMU before 5.2) there are no exports to
// report, and DiskExports returns none.
func DiskExports(ctx context.Context, c *Conn, d Disk) ([]DiskExport, error) {
	exps, err := c.QueryBlockExports(ctx)
	if err != nil {
		if IsClass(err, ClassCommandNotFound) {
			return nil, nil
		}
		return nil, err
	}
	if len(exps) == 0 {
		return nil, nil
	}
	g, err := c.QueryBlockGraph(ctx)
	if err != nil && !IsClass(err, ClassCommandNotFound) {
		return nil, err
	}
	var drivers map[string]string
	if g != nil {
		nodes, err := c.QueryNamedBlockNodes(ctx)
		if err != nil {
			return nil, err
		}
		drivers = make(map[string]string, len(nodes))
		for _, n := range nodes {
			drivers[n.NodeName] = n.Driver
		}
	}
	return diskExports(d, exps, g, drivers), nil
}

// diskExports is DiskExports on the replies: g is nil when the graph
// command is missing; drivers maps node names to their drivers.
func diskExports(d Disk, exps []BlockExport, g *BlockGraph, drivers map[string]string) []DiskExport {
	layerOf := make(map[string]int) // node name -> index in d.Chain
	for i, l := range d.Chain {
		if _, ok := layerOf[l.NodeName]; !ok {
			layerOf[l.NodeName] = i
		}
	}
	var out []DiskExport
	if g == nil {
		// Only an export on a layer's own node can be matched.
		for _, e := range exps {
			if i, ok := layerOf[e.NodeName]; ok {
				out = append(out, DiskExport{BlockExport: e, Layer: d.Chain[i],
					Why: "QEMU has no x-debug-query-block-graph, which alone shows an export's permissions"})
			}
		}
		return out
	}
	gr := newExportGraph(g)
	// Nodes below each layer (its file, the file's own children) reach
	// that layer's data; the first layer from the top that reaches a
	// node owns it.
	for i, l := range d.Chain {
		for _, n := range gr.below(l.NodeName) {
			if _, ok := layerOf[n]; !ok {
				layerOf[n] = i
			}
		}
	}
	perNode := make(map[string][]BlockExport)
	for _, e := range exps {
		perNode[e.NodeName] = append(perNode[e.NodeName], e)
	}
	for _, e := range exps {
		i, ok := layerOf[e.NodeName]
		if !ok {
			// A filter above a layer (a job's mirror_top or commit_top,
			// a throttle) passes writes on to the layer it filters.
			n := e.NodeName
			for depth := 0; depth < MaxChainDepth && filterDrivers[drivers[n]]; depth++ {
				n = gr.filtered(n)
				if i, ok = layerOf[n]; ok || n == "" {
					break
				}
			}
		}
		if !ok {
			continue
		}
		access, why := gr.access(e.NodeName, len(perNode[e.NodeName]))
		out = append(out, DiskExport{BlockExport: e, Layer: d.Chain[i], Access: access, Why: why})
	}
	return out
}

// exportGraph indexes a BlockGraph by node name.
type exportGraph struct {
	byID     map[int64]BlockGraphNode
	idOf     map[string]int64 // block-driver node name -> id
	children map[int64][]BlockGraphEdge
	parents  map[int64][]BlockGraphEdge
}

func newExportGraph(g *BlockGraph) *exportGraph {
	gr := &exportGraph{byID: make(map[int64]BlockGraphNode), idOf: make(map[string]int64),
		children: make(map[int64][]BlockGraphEdge), parents: make(map[int64][]BlockGraphEdge)}
	for _, n := range g.Nodes {
		gr.byID[n.ID] = n
		if n.Type == "block-driver" {
			gr.idOf[n.Name] = n.ID
		}
	}
	for _, e := range g.Edges {
		gr.children[e.Parent] = append(gr.children[e.Parent], e)
		gr.parents[e.Child] = append(gr.parents[e.Child], e)
	}
	return gr
}

// below lists the block-driver nodes under node through every edge but
// "backing" (the next layer is a layer of its own), at most MaxChainDepth.
func (gr *exportGraph) below(node string) []string {
	id, ok := gr.idOf[node]
	if !ok {
		return nil
	}
	var out []string
	seen := map[int64]bool{id: true}
	queue := []int64{id}
	for len(queue) > 0 && len(out) < MaxChainDepth {
		cur := queue[0]
		queue = queue[1:]
		for _, e := range gr.children[cur] {
			if e.Name == "backing" || seen[e.Child] {
				continue
			}
			seen[e.Child] = true
			if n := gr.byID[e.Child]; n.Type == "block-driver" {
				out = append(out, n.Name)
				queue = append(queue, e.Child)
			}
		}
	}
	return out
}

// filtered returns the node a filter node passes its requests on to: its
// "backing" child (mirror_top, commit_top) or its "file" child (throttle,
// copy-on-read); "" if it has neither.
func (gr *exportGraph) filtered(node string) string {
	for _, role := range []string{"backing", "file"} {
		for _, e := range gr.children[gr.idOf[node]] {
			if c := gr.byID[e.Child]; e.Name == role && c.Type == "block-driver" {
				return c.Name
			}
		}
	}
	return ""
}

// access tells whether the exports on node (exports of them) can write,
// from the anonymous block backends attached to it.
func (gr *exportGraph) access(node string, exports int) (ExportAccess, string) {
	id, ok := gr.idOf[node]
	if !ok {
		return ExportAccessUnknown, "node " + node + " is not in QEMU's block graph"
	}
	anon, writers := 0, 0
	for _, e := range gr.parents[id] {
		p := gr.byID[e.Parent]
		if p.Type != "block-backend" || p.Name != "" || e.Name != "root" {
			continue
		}
		anon++
		if slices.Contains(e.Perm, "write") {
			writers++
		}
	}
	switch {
	case writers == 0 && anon >= exports:
		return ExportReadOnly, ""
	case anon == exports && writers == exports:
		return ExportWritable, ""
	case anon == exports:
		return ExportAccessUnknown, fmt.Sprintf("%d of the %d exports on node %s are writable and QEMU does not say which", writers, exports, node)
	case anon > exports:
		return ExportAccessUnknown, fmt.Sprintf("node %s has other unnamed users (a block job's) that write, and QEMU does not tell them from its exports", node)
	}
	return ExportAccessUnknown, fmt.Sprintf("QEMU's block graph shows fewer unnamed users of node %s than it has exports", node)
}
