package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// MaxChainDepth bounds how many nodes DiskChains follows for one disk, as
// a guard against a malformed or looping graph.
const MaxChainDepth = 1000

// ChainLayer is one image of a disk's backing chain in a running QEMU.
type ChainLayer struct {
	// NodeName is the format node's name: explicit for -blockdev,
	// automatic ("#block123") for -drive.
	NodeName string `json:"node-name"`
	// Filename is the node's filename as QEMU reports it (a path, or a
	// "json:{...}" description).
	Filename string `json:"filename"`
	// Format is the node's driver ("qcow2", "raw", ...).
	Format string `json:"format"`
}

// Disk is a disk of a running QEMU and its backing chain.
type Disk struct {
	// Device is the block backend name (the -drive id); empty for a
	// -blockdev node or an anonymous backend.
	Device string `json:"device,omitempty"`
	// QDev is the guest device the backend is attached to, if any.
	QDev string `json:"qdev,omitempty"`
	// NodeName is the top format node (filters such as a job's
	// commit_top or mirror_top are skipped). Jobs and HMP name a disk by
	// Device when set, otherwise by NodeName.
	NodeName string `json:"node-name"`
	// Chain lists the layers from the top (the active image) to the base.
	Chain []ChainLayer `json:"chain"`
}

// Name returns the name that block-job commands accept for the disk: the
// backend name when there is one, otherwise the top node name.
func (d Disk) Name() string {
	if d.Device != "" {
		return d.Device
	}
	return d.NodeName
}

// QDevID returns the device id in a QOM path such as
// /machine/peripheral/virtio0/virtio-backend (virtio0); other paths are
// returned as they are.
func QDevID(path string) string {
	const prefix = "/machine/peripheral/"
	if !strings.HasPrefix(path, prefix) {
		return path
	}
	id, _, _ := strings.Cut(strings.TrimPrefix(path, prefix), "/")
	return id
}

// filterDrivers are block drivers that only pass requests on to one
// child. Jobs insert them above a disk's top (mirror_top, commit_top,
// copy-on-read for stream) or inside its chain (commit_top for an
// intermediate commit); they are not layers of the chain.
var filterDrivers = map[string]bool{
	"commit_top": true, "mirror_top": true, "copy-on-read": true,
	"throttle": true, "preallocate": true, "compress": true,
	"blkreplay": true, "snapshot-access": true, "copy-before-write": true,
}

// protocolDrivers are drivers that access storage directly; a node of
// one is a format node's "file" child, not a layer by itself unless no
// format node sits on it.
var protocolDrivers = map[string]bool{
	"file": true, "host_device": true, "host_cdrom": true, "nbd": true,
	"iscsi": true, "rbd": true, "ssh": true, "http": true, "https": true,
	"ftp": true, "ftps": true, "gluster": true, "nfs": true, "null-co": true,
	"null-aio": true, "nvme": true, "io_uring": true,
}

// DiskChains reads every disk of a running QEMU (or qemu-storage-daemon)
// and its backing chain, top to base. Disks are the block backends of
// query-block (qemu started with -drive, or devices) and the root nodes
// of -blockdev trees that no backend uses. The graph comes from
// x-debug-query-block-graph; where that command is missing, backing
// children are matched by filename through query-named-block-nodes.
// It fails with ErrConcludedStream rather than crash QEMU 7.2 while a
// concluded stream job waits to be dismissed.
func DiskChains(ctx context.Context, c *Conn) ([]Disk, error) {
	return diskChains(ctx, c, true)
}

func diskChains(ctx context.Context, c *Conn, useGraph bool) ([]Disk, error) {
	// Four queries in two rounds, each round's commands sent together
	// (QEMU answers them in order, one after the other): the node query
	// goes out only once query-jobs said it cannot crash QEMU.
	var (
		blocks []BlockInfo
		nodes  []BlockDeviceInfo
		g      *BlockGraph
	)
	if err := Together(
		func() (err error) { blocks, err = c.QueryBlock(ctx); return err },
		func() error { return checkNodeQuerySafe(ctx, c) },
	); err != nil {
		return nil, err
	}
	if err := Together(
		func() (err error) { nodes, err = c.QueryNamedBlockNodes(ctx); return err },
		func() (err error) {
			if !useGraph {
				return nil
			}
			g, err = c.QueryBlockGraph(ctx)
			if err != nil && IsClass(err, ClassCommandNotFound) {
				g, err = nil, nil
			}
			return err
		},
	); err != nil {
		return nil, err
	}
	byName := make(map[string]*BlockDeviceInfo, len(nodes))
	for i := range nodes {
		byName[nodes[i].NodeName] = &nodes[i]
	}

	var w chainWalker
	if g != nil {
		w = newGraphWalker(g, byName)
	} else {
		w = newFilenameWalker(nodes)
	}

	var disks []Disk
	used := make(map[string]bool) // top nodes already reported
	for _, b := range blocks {
		if b.Inserted == nil {
			continue
		}
		d := Disk{Device: b.Device, QDev: b.QDev}
		if err := fillChain(&d, b.Inserted.NodeName, w, byName); err != nil {
			return nil, fmt.Errorf("qmp: disk %s: %w", b.Device, err)
		}
		used[d.NodeName] = true
		disks = append(disks, d)
	}
	for _, root := range w.roots() {
		n := byName[root]
		if n == nil {
			continue
		}
		d := Disk{}
		if err := fillChain(&d, root, w, byName); err != nil {
			return nil, fmt.Errorf("qmp: node %s: %w", root, err)
		}
		if used[d.NodeName] {
			continue
		}
		used[d.NodeName] = true
		disks = append(disks, d)
	}
	return disks, nil
}

// DiskTops reads the disks of a running QEMU from query-block alone: each
// backend with its top layer only (Chain holds one layer), one QMP
// command instead of DiskChains' four. query-block skips the implicit
// filters jobs insert; ok is false, and the disks nil, when a backend's
// top node is another filter (a throttle the user made): only the graph
// tells the format node under it, so the caller needs DiskChains.
// Nodes that no backend uses are not listed.
func DiskTops(ctx context.Context, c *Conn) (disks []Disk, ok bool, err error) {
	blocks, err := c.QueryBlock(ctx)
	if err != nil {
		return nil, false, err
	}
	for _, b := range blocks {
		n := b.Inserted
		if n == nil {
			continue
		}
		if filterDrivers[n.Driver] || n.NodeName == "" {
			return nil, false, nil
		}
		disks = append(disks, Disk{Device: b.Device, QDev: b.QDev, NodeName: n.NodeName,
			Chain: []ChainLayer{{NodeName: n.NodeName, Filename: n.File, Format: n.Driver}}})
	}
	return disks, true, nil
}

// fillChain walks from node top down the backing chain.
func fillChain(d *Disk, top string, w chainWalker, byName map[string]*BlockDeviceInfo) error {
	seen := make(map[string]bool)
	cur := top
	for cur != "" {
		if seen[cur] {
			return fmt.Errorf("backing loop at node %s", cur)
		}
		seen[cur] = true
		if len(seen) > MaxChainDepth {
			return fmt.Errorf("chain deeper than %d nodes", MaxChainDepth)
		}
		n := byName[cur]
		if n == nil {
			return fmt.Errorf("node %s not listed by query-named-block-nodes", cur)
		}
		if filterDrivers[n.Driver] {
			cur = w.filterChild(n)
			continue
		}
		if d.NodeName == "" {
			d.NodeName = n.NodeName
		}
		d.Chain = append(d.Chain, ChainLayer{NodeName: n.NodeName, Filename: n.File, Format: n.Driver})
		cur = w.backing(n)
	}
	return nil
}

// chainWalker finds children in the block graph.
type chainWalker interface {
	// backing returns the node name of n's backing child, or "".
	backing(n *BlockDeviceInfo) string
	// filterChild returns the node name of a filter's child, or "".
	filterChild(n *BlockDeviceInfo) string
	// roots returns the node names of trees no backend uses, sorted.
	roots() []string
}

// graphWalker reads edges from x-debug-query-block-graph.
type graphWalker struct {
	nameOf   map[int64]string // block-driver node id -> node name
	children map[string]map[string]string
	rootList []string
}

func newGraphWalker(g *BlockGraph, byName map[string]*BlockDeviceInfo) *graphWalker {
	w := &graphWalker{nameOf: make(map[int64]string), children: make(map[string]map[string]string)}
	kind := make(map[int64]string)
	backendName := make(map[int64]string)
	for _, n := range g.Nodes {
		kind[n.ID] = n.Type
		if n.Type == "block-backend" {
			backendName[n.ID] = n.Name
		}
		if n.Type == "block-driver" {
			w.nameOf[n.ID] = n.Name
		}
	}
	hasParent := make(map[string]bool)
	for _, e := range g.Edges {
		child, ok := w.nameOf[e.Child]
		if !ok {
			continue
		}
		switch kind[e.Parent] {
		case "block-driver":
			parent := w.nameOf[e.Parent]
			if w.children[parent] == nil {
				w.children[parent] = make(map[string]string)
			}
			w.children[parent][e.Name] = child
			hasParent[child] = true
		case "block-backend":
			// Named backends are -drive disks (query-block lists them);
			// anonymous ones belong to devices, also in query-block, or to
			// jobs, whose use does not stop a node being a disk's root.
			if backendName[e.Parent] != "" {
				hasParent[child] = true
			}
		case "block-job":
			// A job's target (mirror destination) is not a disk.
			if e.Name == "target" {
				hasParent[child] = true
			}
		}
	}
	for _, name := range w.nameOf {
		if !hasParent[name] && byName[name] != nil {
			w.rootList = append(w.rootList, name)
		}
	}
	sort.Strings(w.rootList)
	return w
}

func (w *graphWalker) backing(n *BlockDeviceInfo) string {
	return w.children[n.NodeName]["backing"]
}

func (w *graphWalker) filterChild(n *BlockDeviceInfo) string {
	ch := w.children[n.NodeName]
	if b := ch["backing"]; b != "" {
		return b
	}
	return ch["file"]
}

func (w *graphWalker) roots() []string { return w.rootList }

// filenameWalker matches a node's backing_file (which QEMU sets to the
// backing node's filename when it attaches it) with the filename of
// another format node.
type filenameWalker struct {
	byFile   map[string][]*BlockDeviceInfo // format and filter nodes by filename
	rootList []string
}

func newFilenameWalker(nodes []BlockDeviceInfo) *filenameWalker {
	w := &filenameWalker{byFile: make(map[string][]*BlockDeviceInfo)}
	for i := range nodes {
		n := &nodes[i]
		if !protocolDrivers[n.Driver] {
			w.byFile[n.File] = append(w.byFile[n.File], n)
		}
	}
	isChild := make(map[string]bool)
	for i := range nodes {
		n := &nodes[i]
		if b := w.backing(n); b != "" {
			isChild[b] = true
		}
		if filterDrivers[n.Driver] {
			if c := w.filterChild(n); c != "" {
				isChild[c] = true
			}
		}
	}
	for i := range nodes {
		n := &nodes[i]
		// Only explicitly named trees are reported as roots: automatic
		// names belong to -drive backends, which query-block lists, and
		// to mirror targets. The exception is a job's filter, inserted
		// with an automatic name above a -blockdev root.
		auto := strings.HasPrefix(n.NodeName, "#") && !filterDrivers[n.Driver]
		if isChild[n.NodeName] || protocolDrivers[n.Driver] || auto {
			continue
		}
		w.rootList = append(w.rootList, n.NodeName)
	}
	sort.Strings(w.rootList)
	return w
}

func (w *filenameWalker) backing(n *BlockDeviceInfo) string {
	if n.BackingFile == "" {
		return ""
	}
	var best string
	for _, m := range w.byFile[n.BackingFile] {
		if m == n || filterDrivers[m.Driver] {
			continue
		}
		if n.Image.BackingFilenameFormat == "" || m.Driver == n.Image.BackingFilenameFormat {
			return m.NodeName
		}
		if best == "" {
			best = m.NodeName
		}
	}
	return best
}

func (w *filenameWalker) filterChild(n *BlockDeviceInfo) string {
	// A filter reports its child's filename as its own.
	for _, m := range w.byFile[n.File] {
		if m != n && !filterDrivers[m.Driver] {
			return m.NodeName
		}
	}
	return ""
}

func (w *filenameWalker) roots() []string { return w.rootList }

// PlainFilename returns the file of a QEMU "json:{...}" filename, which
// QEMU reports for a qcow2 node whose backing node was given explicitly
// (-blockdev ...,backing=NODE) unless the header names exactly that file:
// its "file" child's filename. Other names are returned as they are.
func PlainFilename(name string) string {
	js, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return name
	}
	var desc struct {
		File struct {
			Driver   string `json:"driver"`
			Filename string `json:"filename"`
		} `json:"file"`
	}
	if json.Unmarshal([]byte(js), &desc) != nil || desc.File.Driver != "file" || desc.File.Filename == "" {
		return name
	}
	return desc.File.Filename
}

// together runs fs at once (on one connection: their commands go out
// without waiting for each other's replies) and returns the first of
// their errors in fs's order.
func Together(fs ...func() error) error {
	errs := make([]error, len(fs))
	var wg sync.WaitGroup
	for i, f := range fs[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i+1] = f()
		}()
	}
	errs[0] = fs[0]()
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
