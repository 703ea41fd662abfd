package qmp

import "context"

// Dirty bitmap commands, each also a transaction action type
// (TransactionAction.Type) with the same argument.
const (
	CmdBitmapAdd     = "block-dirty-bitmap-add"
	CmdBitmapRemove  = "block-dirty-bitmap-remove"
	CmdBitmapClear   = "block-dirty-bitmap-clear"
	CmdBitmapEnable  = "block-dirty-bitmap-enable"
	CmdBitmapDisable = "block-dirty-bitmap-disable"
	CmdBitmapMerge   = "block-dirty-bitmap-merge"
)

// BlockDirtyBitmapAdd is the argument of block-dirty-bitmap-add.
type BlockDirtyBitmapAdd struct {
	// Node is a node name or a block backend name.
	Node string `json:"node"`
	Name string `json:"name"`
	// Granularity in bytes, a power of two from 512; 0 lets QEMU pick
	// (the cluster size, kept between 4 KiB and 64 KiB).
	Granularity uint64 `json:"granularity,omitempty"`
	// Persistent bitmaps are stored in the qcow2 image when QEMU closes
	// it.
	Persistent *bool `json:"persistent,omitempty"`
	// Disabled bitmaps do not record writes until enabled.
	Disabled *bool `json:"disabled,omitempty"`
}

// BlockDirtyBitmap names one bitmap: the argument of
// block-dirty-bitmap-remove, -clear, -enable and -disable.
type BlockDirtyBitmap struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

// BlockDirtyBitmapMerge is the argument of block-dirty-bitmap-merge: the
// bits of every source are set in Target.
type BlockDirtyBitmapMerge struct {
	Node   string `json:"node"`
	Target string `json:"target"`
	// Bitmaps are the sources; each is a bitmap of Node or of another
	// node.
	Bitmaps []BlockDirtyBitmap `json:"bitmaps"`
}

// DirtyBitmapInfo is QAPI's BlockDirtyInfo: one bitmap of a node as
// query-named-block-nodes and query-block list it.
type DirtyBitmapInfo struct {
	Name string `json:"name"`
	// Count is the number of dirty bytes (set bits times Granularity).
	Count       uint64 `json:"count"`
	Granularity uint64 `json:"granularity"`
	// Recording is true for an enabled bitmap.
	Recording bool `json:"recording"`
	// Busy is true while a job or an operation uses the bitmap.
	Busy       bool `json:"busy"`
	Persistent bool `json:"persistent"`
	// Inconsistent marks a persistent bitmap that was not stored cleanly:
	// it can only be removed.
	Inconsistent bool `json:"inconsistent,omitempty"`
}

// BitmapAdd runs block-dirty-bitmap-add.
func (c *Conn) BitmapAdd(ctx context.Context, a BlockDirtyBitmapAdd) error {
	return c.Execute(ctx, CmdBitmapAdd, a, nil)
}

// BitmapRemove runs block-dirty-bitmap-remove.
func (c *Conn) BitmapRemove(ctx context.Context, a BlockDirtyBitmap) error {
	return c.Execute(ctx, CmdBitmapRemove, a, nil)
}

// BitmapClear runs block-dirty-bitmap-clear.
func (c *Conn) BitmapClear(ctx context.Context, a BlockDirtyBitmap) error {
	return c.Execute(ctx, CmdBitmapClear, a, nil)
}

// BitmapEnable runs block-dirty-bitmap-enable.
func (c *Conn) BitmapEnable(ctx context.Context, a BlockDirtyBitmap) error {
	return c.Execute(ctx, CmdBitmapEnable, a, nil)
}

// BitmapDisable runs block-dirty-bitmap-disable.
func (c *Conn) BitmapDisable(ctx context.Context, a BlockDirtyBitmap) error {
	return c.Execute(ctx, CmdBitmapDisable, a, nil)
}

// BitmapMerge runs block-dirty-bitmap-merge.
func (c *Conn) BitmapMerge(ctx context.Context, a BlockDirtyBitmapMerge) error {
	return c.Execute(ctx, CmdBitmapMerge, a, nil)
}

// NodeBitmaps returns the dirty bitmaps of every named node
// (query-named-block-nodes with flat), by node name; a node without
// bitmaps has no entry.
func (c *Conn) NodeBitmaps(ctx context.Context) (map[string][]DirtyBitmapInfo, error) {
	var nodes []struct {
		NodeName     string            `json:"node-name"`
		DirtyBitmaps []DirtyBitmapInfo `json:"dirty-bitmaps"`
	}
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	out := make(map[string][]DirtyBitmapInfo)
	for _, n := range nodes {
		if len(n.DirtyBitmaps) > 0 {
			out[n.NodeName] = n.DirtyBitmaps
		}
	}
	return out, nil
}
