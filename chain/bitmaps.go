package chain

import (
	"context"
	"fmt"
	"time"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// Persistent dirty bitmaps follow the disk's writes through the snapshot
// operations, as libvirt keeps its checkpoints' bitmaps (docs/interop/
// bitmaps.rst): a bitmap that recorded the writes into the active image
// goes on recording in the image that becomes active, and the writes it
// recorded stay in the chain's union of same-named bitmaps.
//
//   - create: every persistent, enabled, consistent bitmap of the old
//     active image gets a same-named persistent enabled bitmap (same
//     granularity) on the new overlay, and the old one is disabled, in the
//     transaction that switches the disk (offline: StepCarryBitmaps, on a
//     storage daemon, right after the overlay is created).
//   - delete: the bitmaps of the layers a commit or a pull removes are
//     merged into the same-named bitmaps of the layer that stays (added
//     there when missing, enabled when the removed one recorded). Where
//     that cannot be done (the surviving layer is a read-only backing node
//     of the running VM), the removed layers' bitmap names are removed
//     from the active image instead, so that nobody takes an incremental
//     from a union that misses writes.
//   - revert: the new overlay gets no bitmap; the discarded branch's
//     writes are in no bitmap that stays, so an incremental must not be
//     made from them.
//
// A user of the bitmaps (package backup) takes the union of a name over
// the layers that hold it contiguously from the active image down.

// carried returns the bitmaps of an image that a new overlay takes over:
// persistent, recording and consistent.
func carried(bms []qmp.DirtyBitmapInfo) []qmp.DirtyBitmapInfo {
	var out []qmp.DirtyBitmapInfo
	for _, b := range bms {
		if b.Persistent && b.Recording && !b.Inconsistent {
			out = append(out, b)
		}
	}
	return out
}

func hasBitmap(bms []qmp.DirtyBitmapInfo, name string) bool {
	for _, b := range bms {
		if b.Name == name {
			return true
		}
	}
	return false
}

// carryActions are the transaction actions that move the bitmaps of node
// old that a new overlay takes over to node overlay: added there (unless
// it has them: a step run again) and disabled on old.
func carryActions(old string, oldBitmaps []qmp.DirtyBitmapInfo, overlay string, overlayBitmaps []qmp.DirtyBitmapInfo) []qmp.TransactionAction {
	var actions []qmp.TransactionAction
	for _, b := range carried(oldBitmaps) {
		if !hasBitmap(overlayBitmaps, b.Name) {
			actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapAdd, Data: qmp.BlockDirtyBitmapAdd{
				Node: overlay, Name: b.Name, Granularity: b.Granularity, Persistent: qmp.Bool(true)}})
		}
		actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapDisable, Data: qmp.BlockDirtyBitmap{Node: old, Name: b.Name}})
	}
	return actions
}

// imageCarries reports whether an image file holds a bitmap a new overlay
// would take over (stored enabled and not in use), read natively.
func imageCarries(file string) (bool, error) {
	f, err := qcow2.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	bms, err := f.Bitmaps()
	if err != nil {
		return false, err
	}
	for _, b := range bms {
		if b.Flags&qcow2.BitmapAuto != 0 && b.Flags&qcow2.BitmapInUse == 0 {
			return true, nil
		}
	}
	return false, nil
}

// imageHasBitmaps reports whether an image file holds any persistent
// bitmap.
func imageHasBitmaps(file string) (bool, error) {
	f, err := qcow2.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	bms, err := f.Bitmaps()
	return len(bms) > 0, err
}

// daemon starts a private storage daemon on top's chain (layers down to
// writable opened writable).
func (o *Offline) daemon(top string, writable int) (*qmp.StorageDaemon, *graph, error) {
	g, err := chainGraph(top, writable)
	if err != nil {
		return nil, nil, err
	}
	startCtx, cancel := context.WithTimeout(o.ctx(), 30*time.Second)
	defer cancel()
	d, err := qmp.StartStorageDaemon(startCtx, qmp.StorageDaemonOptions{Binary: o.StorageDaemon, Blockdevs: g.blockdevs, DieWithParent: true})
	if err != nil {
		return nil, nil, err
	}
	return d, g, nil
}

// carryBitmaps runs StepCarryBitmaps offline: the new overlay File takes
// over the bitmaps of Base, its backing file, on a storage daemon, which
// stores them when it quits.
func (o *Offline) carryBitmaps(s Step) error {
	ok, err := imageCarries(s.Base)
	if err != nil || !ok {
		return err
	}
	d, _, err := o.daemon(s.File, 1)
	if err != nil {
		return err
	}
	defer d.Close(context.Background())
	ctx := o.ctx()
	bms, err := d.Conn.NodeBitmaps(ctx)
	if err != nil {
		return err
	}
	if actions := carryActions("l1", bms["l1"], "l0", bms["l0"]); len(actions) > 0 {
		if err := d.Conn.Transaction(ctx, actions, nil); err != nil {
			return fmt.Errorf("moving the dirty bitmaps of %s to %s: %w", s.Base, s.File, err)
		}
	}
	return d.Close(ctx)
}
