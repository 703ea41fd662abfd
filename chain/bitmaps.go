package chain

import (
	"context"
	"fmt"
	"slices"
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
//     merged into the same-named bitmaps of a layer that stays. Offline
//     that is the surviving layer (added there when missing, enabled when
//     the removed one recorded); live an active commit merges into its
//     base while the job is ready (the base is writable under the job,
//     and guest writes go on being copied into it until the switch),
//     other jobs merge into the active image, the one writable layer of a
//     running chain (its bitmap then also marks older writes: a bigger
//     incremental, never a wrong one).
//   - revert: the new overlay gets a recording bitmap, empty, of each
//     name that recorded the snapshot's file until the snapshot's
//     instant: what the run that made the snapshot saw move
//     (SnapshotDisk.Bitmaps, recorded by the journal's run from the
//     executor's carriedBitmaps, so a step run again after an
//     interruption records nothing rather than a guess) and the file
//     still holds, consistent. The union of such a name from the new
//     overlay down is then what the disk's content differs by since the
//     bitmap began: the discarded branch never was in it. VM.LastRevert
//     records the revert and the names kept; for every other bitmap the
//     discarded branch's writes are in no bitmap that stays, so an
//     incremental must not be made across it. A live delete that merges
//     layers into the active image (not into the layer that takes their
//     data) clears the remaining snapshots' records: their own chains no
//     longer hold all their writes.
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
	bms, err := o.bitmapTransaction(s.File, 1, func(bms map[string][]qmp.DirtyBitmapInfo) []qmp.TransactionAction {
		return carryActions("l1", bms["l1"], "l0", bms["l0"])
	})
	if err != nil {
		return fmt.Errorf("moving the dirty bitmaps of %s to %s: %w", s.Base, s.File, err)
	}
	o.carried = noteCarried(o.carried, s.Target, carried(bms["l1"]))
	return nil
}

// noteCarried adds to m (by target) the names of bitmaps moved to a new
// overlay of the target's disk.
func noteCarried(m map[string][]string, target string, bms []qmp.DirtyBitmapInfo) map[string][]string {
	if len(bms) == 0 {
		return m
	}
	if m == nil {
		m = map[string][]string{}
	}
	for _, b := range bms {
		if !slices.Contains(m[target], b.Name) {
			m[target] = append(m[target], b.Name)
		}
	}
	return m
}

// carriedBitmaps returns, by disk target, the bitmaps that the steps this
// executor ran moved to new overlays (offline and live). The journal's
// run records them in the snapshot the operation made (SnapshotDisk.
// Bitmaps) as facts seen happen: a step that an interruption made run
// again in another process may find them moved already and record
// nothing, and a revert then keeps none of them, which costs a full
// backup and never trusts a bitmap that missed a write.
func (o *Offline) carriedBitmaps() map[string][]string {
	m := o.carried
	if o.Live != nil {
		for t, names := range o.Live.carried {
			for _, n := range names {
				m = noteCarried(m, t, []qmp.DirtyBitmapInfo{{Name: n}})
			}
		}
	}
	return m
}

// recordCarried writes the carried bitmaps into the snapshot's disks.
func recordCarried(s *Snapshot, m map[string][]string) {
	if s == nil || s.Internal {
		return
	}
	for i := range s.Disks {
		if names := m[s.Disks[i].Target]; len(names) > 0 {
			s.Disks[i].Bitmaps = slices.Clone(names)
		}
	}
}

// resumeBitmaps runs StepResumeBitmaps: the revert's new overlay File
// gets a recording persistent bitmap (empty, Base's granularity) for each
// of Bitmaps that Base holds, consistent, and File lacks.
func (o *Offline) resumeBitmaps(s Step) error {
	_, err := o.bitmapTransaction(s.File, 0, func(bms map[string][]qmp.DirtyBitmapInfo) []qmp.TransactionAction {
		var actions []qmp.TransactionAction
		for _, b := range bms["l1"] {
			if !slices.Contains(s.Bitmaps, b.Name) || !b.Persistent || b.Inconsistent || hasBitmap(bms["l0"], b.Name) {
				continue
			}
			actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapAdd, Data: qmp.BlockDirtyBitmapAdd{
				Node: "l0", Name: b.Name, Granularity: b.Granularity, Persistent: qmp.Bool(true)}})
		}
		return actions
	})
	if err != nil {
		return fmt.Errorf("giving %s the dirty bitmaps of %s: %w", s.File, s.Base, err)
	}
	return nil
}

// bitmapTransaction starts a storage daemon on file's chain (layers down
// to writable opened writable), runs the transaction that actions makes
// of the nodes' bitmaps (l0 the top; none when it makes no action), and
// closes the daemon, which stores the bitmaps. It returns the bitmaps
// read before the transaction.
func (o *Offline) bitmapTransaction(file string, writable int, actions func(map[string][]qmp.DirtyBitmapInfo) []qmp.TransactionAction) (map[string][]qmp.DirtyBitmapInfo, error) {
	d, _, err := o.daemon(file, writable)
	if err != nil {
		return nil, err
	}
	defer d.Close(context.Background())
	ctx := o.ctx()
	bms, err := d.Conn.NodeBitmaps(ctx)
	if err != nil {
		return nil, err
	}
	if a := actions(bms); len(a) > 0 {
		if err := d.Conn.Transaction(ctx, a, nil); err != nil {
			return nil, err
		}
	}
	return bms, d.Close(ctx)
}

// mergeActions are the transaction actions that keep, in node into, the
// writes recorded by the persistent bitmaps of layers that a commit or a
// pull removes (from, by node): each is merged into into's bitmap of the
// same name. With addMissing a name into lacks is added there (persistent,
// disabled, the source's granularity); without it such a name is left
// alone (into's user finds it missing). With followRecording into's
// bitmap is enabled when a source records (into becomes the active image
// in its place). A source that is inconsistent cannot be merged: into's
// bitmap of that name is removed instead, so nobody trusts it.
func mergeActions(from []string, bitmaps map[string][]qmp.DirtyBitmapInfo, into string, addMissing, followRecording bool) []qmp.TransactionAction {
	type merge struct {
		sources   []qmp.BlockDirtyBitmap
		gran      uint64
		recording bool
		broken    bool
	}
	var names []string
	byName := map[string]*merge{}
	for _, node := range from {
		for _, b := range bitmaps[node] {
			if !b.Persistent {
				continue
			}
			m := byName[b.Name]
			if m == nil {
				m = &merge{gran: b.Granularity}
				byName[b.Name] = m
				names = append(names, b.Name)
			}
			if b.Inconsistent {
				m.broken = true
			}
			m.recording = m.recording || b.Recording
			m.sources = append(m.sources, qmp.BlockDirtyBitmap{Node: node, Name: b.Name})
		}
	}
	var actions []qmp.TransactionAction
	for _, name := range names {
		m := byName[name]
		var have *qmp.DirtyBitmapInfo
		for i, b := range bitmaps[into] {
			if b.Name == name {
				have = &bitmaps[into][i]
			}
		}
		switch {
		case m.broken || have != nil && have.Inconsistent:
			if have != nil {
				actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapRemove, Data: qmp.BlockDirtyBitmap{Node: into, Name: name}})
			}
			continue
		case have == nil && !addMissing:
			continue
		case have == nil:
			actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapAdd, Data: qmp.BlockDirtyBitmapAdd{
				Node: into, Name: name, Granularity: m.gran, Persistent: qmp.Bool(true), Disabled: qmp.Bool(true)}})
		}
		if followRecording && m.recording && (have == nil || !have.Recording) {
			actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapEnable, Data: qmp.BlockDirtyBitmap{Node: into, Name: name}})
		}
		actions = append(actions, qmp.TransactionAction{Type: qmp.CmdBitmapMerge, Data: qmp.BlockDirtyBitmapMerge{Node: into, Target: name, Bitmaps: m.sources}})
	}
	return actions
}

// mergeBitmaps runs mergeActions on conn (one transaction).
func mergeBitmaps(ctx context.Context, conn *qmp.Conn, from []string, into string, addMissing, followRecording bool) error {
	bitmaps, err := conn.NodeBitmaps(ctx)
	if err != nil {
		return fmt.Errorf("reading the dirty bitmaps: %w", err)
	}
	actions := mergeActions(from, bitmaps, into, addMissing, followRecording)
	if len(actions) == 0 {
		return nil
	}
	if err := conn.Transaction(ctx, actions, nil); err != nil {
		return fmt.Errorf("merging the dirty bitmaps of the layers that go: %w", err)
	}
	return nil
}

// removedLayers returns the files a commit or pull step takes out of the
// chain: Top for a commit, the layers between File and Base for a pull.
func removedLayers(s Step) ([]string, error) {
	if s.Kind == StepCommit {
		return []string{s.Top}, nil
	}
	ch, err := chainOf(s.File)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range ch[1:] {
		if s.Base != "" && sameFile(f, s.Base) {
			break
		}
		out = append(out, f)
	}
	return out, nil
}

// removesBitmaps reports whether a commit or pull step takes out of the
// chain a layer holding persistent bitmaps (then the merge runs on a
// storage daemon even when it copies nothing, to merge them).
func removesBitmaps(s Step) bool {
	files, err := removedLayers(s)
	if err != nil {
		return true // the job reports the error
	}
	for _, f := range files {
		if has, err := imageHasBitmaps(f); err != nil || has {
			return true
		}
	}
	return false
}
