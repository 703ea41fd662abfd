package qcow2

// Whether an image's current state is still one of its internal
// snapshots, measured on the tables alone.
//
// Taking an internal snapshot copies the active L1 table and raises the
// refcount of every L2 table it points to. From then on any change of the
// guest-visible data (a write, a zero write, a discard) must change an L2
// table that is shared, so QEMU copies that table first (copy on write)
// and points the active L1 entry at the copy; writing into a range no L2
// table covered allocates one and fills an empty L1 entry. Either way the
// active L1 table stops matching the snapshot's. QEMU writes L1 entries
// through at once, so the file shows them even while QEMU runs the image.
// A revert (qemu-img snapshot -a, loadvm) copies the snapshot's L1 back.
// The active image equals a snapshot when the L2 offsets of the L1
// entries that cover the virtual disk are the same and so is the virtual
// size. Flags are masked: the snapshot's copy keeps the COPIED flag the
// active entries lose when their refcount goes up. Entries past the
// virtual disk hold a checkpoint's VM state (QEMU discards it from the
// active table after a save), which is not the disk's state.

// UnchangedSnapshots returns the internal snapshots whose disk state the
// image's current state still is, in table order: none when the guest
// changed the disk since each of them (or the image has none). A state
// written back to equal bytes counts as changed.
func (f *File) UnchangedSnapshots() ([]Snapshot, error) {
	snaps, err := f.Snapshots()
	if err != nil || len(snaps) == 0 {
		return nil, err
	}
	active, err := f.L1()
	if err != nil {
		return nil, err
	}
	cs := f.ClusterSize()
	coverage := cs * f.l2Entries() // guest bytes one L1 entry covers
	var out []Snapshot
	for _, s := range snaps {
		if s.DiskSize != f.Header.Size {
			continue
		}
		if s.L1TableOffset%cs != 0 {
			return nil, withFile(f.Name, formatErr(s.Offset, "snapshot %s: L1 table offset %#x is not cluster aligned", s.ID, s.L1TableOffset))
		}
		if uint64(s.L1Size) > MaxL1Bytes/8 {
			return nil, withFile(f.Name, formatErr(s.Offset, "snapshot %s: L1 table too large (%d entries)", s.ID, s.L1Size))
		}
		n := divRoundUp(f.Header.Size, coverage)
		l1, err := f.readTable(s.L1TableOffset, uint64(s.L1Size), "snapshot L1 table")
		if err != nil {
			return nil, err
		}
		if sameL1(active, l1, n) {
			out = append(out, s)
		}
	}
	return out, nil
}

// sameL1 compares the L2 offsets of the first n entries of two L1
// tables; an entry a table does not have is empty.
func sameL1(a, b []uint64, n uint64) bool {
	at := func(t []uint64, i uint64) uint64 {
		if i < uint64(len(t)) {
			return t[i] & L1EntryOffsetMask
		}
		return 0
	}
	// Past both tables every entry is empty (Open checked that the
	// active table covers the disk, so this only bounds the loop).
	n = min(n, uint64(max(len(a), len(b))))
	for i := uint64(0); i < n; i++ {
		if at(a, i) != at(b, i) {
			return false
		}
	}
	return true
}
