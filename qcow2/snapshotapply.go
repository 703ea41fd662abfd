package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
)

// ApplyStage names one kind of write ApplySnapshot makes, in the order it
// makes them.
type ApplyStage string

// The stages of ApplySnapshot. Each stage's writes are synced before the
// next stage starts.
const (
	// StageClearCopied clears the COPIED flag in the L2 tables that only
	// the snapshot uses (they are about to be shared with the active
	// state); a cleared flag only makes QEMU copy before writing.
	StageClearCopied ApplyStage = "clear-copied"
	// StageIncrement raises the refcounts of the clusters the snapshot's
	// tables reach and the active tables do not.
	StageIncrement ApplyStage = "increment"
	// StageSwitchL1 writes the snapshot's L1 table over the active one
	// (and the snapshot's virtual size into the header when it differs):
	// from here on the image reads as the snapshot.
	StageSwitchL1 ApplyStage = "switch-l1"
	// StageDecrement lowers the refcounts of the clusters only the old
	// active tables reached.
	StageDecrement ApplyStage = "decrement"
	// StageDiscard punches holes where clusters were freed, as QEMU
	// discards them; it changes no metadata.
	StageDiscard ApplyStage = "discard"
)

// ApplyWrite is one write ApplySnapshot is about to make.
type ApplyWrite struct {
	Stage  ApplyStage
	Offset uint64 // file offset
	Length uint64
}

// ApplyOptions configure ApplySnapshot. The zero value applies the
// snapshot with no hook.
type ApplyOptions struct {
	// BeforeWrite, when set, is called before each write to the image
	// (and before each hole punched); an error it returns stops the
	// apply there, as an interruption would, and is returned. Crash tests
	// use it to show that the image stays consistent at every point.
	BeforeWrite func(w ApplyWrite) error
}

// ApplyResult says what ApplySnapshot did.
type ApplyResult struct {
	// Snapshot is the snapshot that was applied.
	Snapshot Snapshot
	// Resized is true when the image's virtual size was changed to the
	// snapshot's.
	Resized bool
	// FreedClusters counts host clusters no table reaches any more.
	FreedClusters uint64
}

// ApplySnapshot reverts a qcow2 image to its internal snapshot key (an ID
// or, failing that, a name, as `qemu-img snapshot -a` looks it up): the
// active L1 table becomes a copy of the snapshot's and refcounts follow, as
// QEMU's qcow2_snapshot_goto does. The snapshot itself stays.
//
// The image must not be in use: QEMU's lock bytes are held for the whole
// operation. It must pass qchain's check with no corruption (leaks are
// allowed), must not be dirty (lazy refcounts) or marked corrupt, and must
// not use an external data file or hold persistent dirty bitmaps (QEMU
// refuses both: a revert would leave a bitmap describing changes the image
// no longer has). A snapshot whose L1 table is larger than the active one
// is refused too (QEMU would grow the active table; qchain does not
// allocate).
//
// The writes are ordered so that an interruption at any point leaves an
// image that qemu-img check finds clean apart from leaked clusters: COPIED
// flags are cleared in tables about to be shared, refcounts are raised
// before the L1 table refers to more, and lowered only after it refers to
// less. Unlike QEMU, which writes the snapshot's L1 table with its old
// COPIED flags and fixes them in a last pass, no stage leaves a flag check
// would call corrupt. Leaks are possible after StageIncrement and until
// StageDecrement ends; QEMU's own apply leaks in the same windows.
func ApplySnapshot(name, key string, opts ApplyOptions) (*ApplyResult, error) {
	fh, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	release, err := lockImage(fh)
	if err != nil {
		return nil, err
	}
	defer release()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	q, err := NewFile(fh, st.Size())
	if err != nil {
		return nil, withFile(name, err)
	}
	q.Name = name
	a := &applier{fh: fh, q: q, cs: q.ClusterSize(), opts: opts}
	p, err := a.plan(key)
	if err != nil {
		return nil, withFile(name, err)
	}
	if err := a.write(p); err != nil {
		return nil, withFile(name, err)
	}
	return p.res, nil
}

type applier struct {
	fh   *os.File
	q    *File
	cs   uint64
	opts ApplyOptions
}

// applyPlan is every write of an apply, computed and checked before the
// first one is made.
type applyPlan struct {
	res *ApplyResult
	// clearCopied are the snapshot-only L2 tables with a COPIED flag set.
	clearCopied []uint64
	// raise and lower are refcount blocks with their new contents.
	raise, lower []refcountBlockWrite
	l1, oldL1    []byte // the new active L1 table, and the old one
	newSize      uint64 // header size to write, when resized
	freed        []uint64
}

// refcountBlockWrite is a refcount block's new contents b, and orig, what
// the file holds before it is written.
type refcountBlockWrite struct {
	off     uint64
	orig, b []byte
}

func (a *applier) plan(key string) (*applyPlan, error) {
	q, h := a.q, a.q.Header
	if u := h.UnknownIncompatible(); u != 0 {
		return nil, fmt.Errorf("%w: unknown incompatible features %s", ErrUnsupported, h.featureNames(u))
	}
	if u := h.AutoclearFeatures &^ (AutoclearBitmaps | AutoclearDataRaw); u != 0 {
		// The spec lets a writer that does not know them only clear them;
		// refusing keeps whatever they vouch for intact.
		return nil, fmt.Errorf("%w: unknown autoclear features %#x", ErrUnsupported, u)
	}
	if h.IncompatibleFeatures&IncompatCorrupt != 0 {
		return nil, fmt.Errorf("%w: the image is marked corrupt; repair it first (qemu-img check -r all)", ErrCorrupt)
	}
	if h.IncompatibleFeatures&IncompatDirty != 0 {
		return nil, errors.New("the image was not closed cleanly (lazy refcounts), so its refcounts need a repair first (qemu-img check -r all)")
	}
	if h.HasDataFile() {
		return nil, fmt.Errorf("%w: internal snapshots of an image with an external data file", ErrUnsupported)
	}
	snaps, err := q.Snapshots()
	if err != nil {
		return nil, err
	}
	i := FindSnapshot(snaps, key)
	if i < 0 {
		return nil, fmt.Errorf("%w: %q", ErrSnapshotNotFound, key)
	}
	sn := snaps[i]
	p := &applyPlan{res: &ApplyResult{Snapshot: sn}}
	if sn.L1TableOffset&(a.cs-1) != 0 || uint64(sn.L1Size) > MaxL1Bytes/8 {
		return nil, formatErr(sn.Offset, "snapshot %s has a bad L1 table (offset %#x, %d entries)", sn.ID, sn.L1TableOffset, sn.L1Size)
	}
	if sn.L1Size > h.L1Size {
		return nil, fmt.Errorf("%w: snapshot %s has a larger L1 table (%d entries) than the image (%d); growing it is not supported (qemu-img snapshot -a can)", ErrUnsupported, sn.ID, sn.L1Size, h.L1Size)
	}
	bms, err := q.Bitmaps()
	if err != nil {
		return nil, err
	}
	if len(bms) > 0 {
		names := make([]string, len(bms))
		for i, b := range bms {
			names[i] = b.Name
		}
		return nil, fmt.Errorf("%w: the image has dirty bitmaps (%s), which a revert would leave describing changes it no longer has; QEMU refuses too (\"Device has active dirty bitmaps\"): remove them first (qemu-img bitmap --remove)", ErrUnsupported, strings.Join(names, ", "))
	}
	if sn.DiskSize != q.VirtualSize() {
		p.res.Resized = true
		p.newSize = sn.DiskSize
	}

	// Refcounts are changed relative to what they are, so they must be
	// right to begin with.
	res, err := q.Check()
	if err != nil {
		return nil, err
	}
	if res.CheckErrors != 0 || res.Corruptions != 0 {
		return nil, fmt.Errorf("%w: check finds %d corruptions and %d errors; not applying a snapshot to it (repair it first: qemu-img check -r all)", ErrCorrupt, res.Corruptions, res.CheckErrors)
	}

	active, err := q.L1()
	if err != nil {
		return nil, err
	}
	snapL1, err := q.readTable(sn.L1TableOffset, uint64(sn.L1Size), "snapshot L1 table")
	if err != nil {
		return nil, err
	}
	// The new active table is the snapshot's, without COPIED flags (every
	// L2 table it names is now reached from two tables), padded with
	// zeros to the active table's size.
	p.l1 = make([]byte, uint64(h.L1Size)*8)
	for i, e := range snapL1 {
		binary.BigEndian.PutUint64(p.l1[i*8:], e&^FlagCopied)
	}
	p.oldL1 = make([]byte, len(p.l1))
	for i, e := range active {
		binary.BigEndian.PutUint64(p.oldL1[i*8:], e)
	}

	// Each cluster's refcount changes by how many times the snapshot's
	// tables reach it less how many times the active tables do. An L2
	// table both name at the same index counts the same for both and is
	// skipped.
	delta := map[uint64]int64{}
	copied := map[uint64]bool{}
	for i := uint64(0); i < uint64(h.L1Size); i++ {
		var so uint64
		if i < uint64(len(snapL1)) {
			so = snapL1[i] & L1EntryOffsetMask
		}
		ao := active[i] & L1EntryOffsetMask
		if so == ao {
			continue
		}
		if so != 0 {
			hasCopied, err := a.countL2(so, +1, delta)
			if err != nil {
				return nil, err
			}
			if hasCopied {
				copied[so] = true
			}
		}
		if ao != 0 {
			if _, err := a.countL2(ao, -1, delta); err != nil {
				return nil, err
			}
		}
	}
	for off := range copied {
		p.clearCopied = append(p.clearCopied, off)
	}
	sort.Slice(p.clearCopied, func(i, j int) bool { return p.clearCopied[i] < p.clearCopied[j] })
	if err := a.planRefcounts(p, delta); err != nil {
		if errors.Is(err, errRefcountOverflow) && res.Leaks > 0 {
			return nil, fmt.Errorf("%w; the image leaks %d clusters, an earlier interruption maybe: qemu-img check -r leaks gives them back", err, res.Leaks)
		}
		return nil, err
	}
	return p, nil
}

// countL2 adds sign to the count of the L2 table at off and of every host
// cluster its entries reach, as QEMU's qcow2_update_snapshot_refcount
// counts them, and reports whether any entry has the COPIED flag.
func (a *applier) countL2(off uint64, sign int64, delta map[uint64]int64) (bool, error) {
	q := a.q
	t, err := q.l2Table(off)
	if err != nil {
		return false, err
	}
	delta[off/a.cs] += sign
	hasCopied := false
	for i := uint64(0); i < q.l2Entries(); i++ {
		e := q.entryAt(t, i)
		if e.Desc&FlagCopied != 0 {
			hasCopied = true
		}
		switch q.Geo.ClusterKind(e) {
		case Normal, ZeroAlloc:
			ho := e.HostOffset()
			if ho&(a.cs-1) != 0 {
				return false, formatErr(int64(off+i*q.Header.l2EntrySize()), "data cluster offset %#x is not cluster aligned", ho)
			}
			delta[ho/a.cs] += sign
		case Compressed:
			co, size := q.Geo.CompressedRange(e)
			for c := co &^ (a.cs - 1); c <= (co+size-1)&^(a.cs-1); c += a.cs {
				delta[c/a.cs] += sign
			}
		}
	}
	return hasCopied, nil
}

// planRefcounts turns per-cluster changes into refcount block contents:
// raises first (written before the L1 switch), then lowers (written after
// it, on top of the raises of the same block). Every new value is checked
// here, before anything is written.
func (a *applier) planRefcounts(p *applyPlan, delta map[uint64]int64) error {
	q := a.q
	order := q.Header.RefcountOrder
	maxRef := ^uint64(0)
	if order < 6 {
		maxRef = 1<<(1<<order) - 1
	}
	rbBits := q.refcountBlockBits()
	rt, err := q.RefcountTable()
	if err != nil {
		return err
	}
	clusters := make([]uint64, 0, len(delta))
	for c, d := range delta {
		if d != 0 {
			clusters = append(clusters, c)
		}
	}
	sort.Slice(clusters, func(i, j int) bool { return clusters[i] < clusters[j] })

	// blockOf returns the offset of the refcount block of cluster c and
	// c's index in it.
	blockOf := func(c uint64) (uint64, uint64, error) {
		ti := c >> rbBits
		var off uint64
		if ti < uint64(len(rt)) {
			off = rt[ti] & RefTableOffsetMask
		}
		if off == 0 || off&(a.cs-1) != 0 || off > uint64(q.size) || a.cs > uint64(q.size)-off {
			return 0, 0, formatErr(int64(c*a.cs), "cluster %#x is in use but has no valid refcount block", c*a.cs)
		}
		return off, c & (1<<rbBits - 1), nil
	}
	raised := map[uint64][]byte{}
	lowered := map[uint64][]byte{}
	original := map[uint64][]byte{}
	// copyOf returns the block at off as it will be written in set,
	// starting from base's copy when base has one.
	copyOf := func(set, base map[uint64][]byte, off uint64) ([]byte, error) {
		if b, ok := set[off]; ok {
			return b, nil
		}
		src, ok := base[off]
		if !ok {
			var err error
			if src, err = q.cluster(off); err != nil {
				return nil, err
			}
			original[off] = src
		}
		b := append([]byte(nil), src...)
		set[off] = b
		return b, nil
	}
	for _, c := range clusters {
		d := delta[c]
		if d < 0 {
			continue
		}
		off, idx, err := blockOf(c)
		if err != nil {
			return err
		}
		b, err := copyOf(raised, nil, off)
		if err != nil {
			return err
		}
		old := RefcountEntry(b, order, idx)
		if old == 0 {
			return formatErr(int64(c*a.cs), "cluster %#x is in use but has refcount 0", c*a.cs)
		}
		if uint64(d) > maxRef-old {
			return fmt.Errorf("%w: %w: the refcount of cluster %#x would exceed %d (refcount_bits=%d)", ErrUnsupported, errRefcountOverflow, c*a.cs, maxRef, 1<<order)
		}
		putRefcountEntry(b, order, idx, old+uint64(d))
	}
	for _, c := range clusters {
		d := delta[c]
		if d > 0 {
			continue
		}
		off, idx, err := blockOf(c)
		if err != nil {
			return err
		}
		b, err := copyOf(lowered, raised, off)
		if err != nil {
			return err
		}
		old := RefcountEntry(b, order, idx)
		if uint64(-d) > old {
			return formatErr(int64(c*a.cs), "cluster %#x has refcount %d, fewer than the %d references being dropped", c*a.cs, old, -d)
		}
		putRefcountEntry(b, order, idx, old-uint64(-d))
		if old == uint64(-d) {
			p.freed = append(p.freed, c*a.cs)
		}
	}
	p.raise = sortedBlocks(raised, func(off uint64) []byte { return original[off] })
	// The lowers are written over the raises of the same block.
	p.lower = sortedBlocks(lowered, func(off uint64) []byte {
		if b, ok := raised[off]; ok {
			return b
		}
		return original[off]
	})
	p.res.FreedClusters = uint64(len(p.freed))
	return nil
}

func sortedBlocks(m map[uint64][]byte, orig func(uint64) []byte) []refcountBlockWrite {
	out := make([]refcountBlockWrite, 0, len(m))
	for off, b := range m {
		out = append(out, refcountBlockWrite{off, orig(off), b})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].off < out[j].off })
	return out
}

// putRefcountEntry sets entry i of a refcount block whose entries are
// 1<<order bits wide to v (which fits), the inverse of RefcountEntry.
func putRefcountEntry(block []byte, order uint32, i, v uint64) {
	switch order {
	case 0, 1, 2:
		bits := uint64(1) << order
		perByte := 8 / bits
		shift := bits * (i % perByte)
		mask := byte((1<<bits - 1) << shift)
		block[i/perByte] = block[i/perByte]&^mask | byte(v<<shift)&mask
	case 3:
		block[i] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(block[i*2:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(block[i*4:], uint32(v))
	default:
		binary.BigEndian.PutUint64(block[i*8:], v)
	}
}

// write makes the planned writes in their safe order, syncing between
// stages.
func (a *applier) write(p *applyPlan) error {
	cs := a.cs
	// Stage 1: COPIED flags off in the snapshot-only L2 tables.
	for _, off := range p.clearCopied {
		src, err := a.q.l2Table(off)
		if err != nil {
			return err
		}
		t := append([]byte(nil), src...)
		step := a.q.Header.l2EntrySize()
		for i := uint64(0); i < uint64(len(t)); i += step {
			e := binary.BigEndian.Uint64(t[i:])
			binary.BigEndian.PutUint64(t[i:], e&^FlagCopied)
		}
		if err := a.writeChanged(StageClearCopied, src, t, off); err != nil {
			return err
		}
	}
	if err := a.sync(len(p.clearCopied)); err != nil {
		return err
	}
	// Stage 2: raise refcounts.
	for _, w := range p.raise {
		if err := a.writeChanged(StageIncrement, w.orig, w.b, w.off); err != nil {
			return err
		}
	}
	if err := a.sync(len(p.raise)); err != nil {
		return err
	}
	// Stage 3: the switch, and the size.
	if err := a.writeChanged(StageSwitchL1, p.oldL1, p.l1, a.q.Header.L1TableOffset); err != nil {
		return err
	}
	if p.res.Resized {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], p.newSize)
		if err := a.writeAt(StageSwitchL1, b[:], headerSizeOffset); err != nil {
			return err
		}
	}
	if err := a.sync(1); err != nil {
		return err
	}
	// Stage 4: lower refcounts.
	for _, w := range p.lower {
		if err := a.writeChanged(StageDecrement, w.orig, w.b, w.off); err != nil {
			return err
		}
	}
	if err := a.sync(len(p.lower)); err != nil {
		return err
	}
	// Stage 5: give freed clusters back to the file system, as QEMU
	// discards them. Best effort: a file system without hole punching
	// keeps the bytes, which nothing reaches any more.
	for _, r := range mergeRuns(p.freed, cs) {
		if a.opts.BeforeWrite != nil {
			if err := a.opts.BeforeWrite(ApplyWrite{StageDiscard, r[0], r[1]}); err != nil {
				return err
			}
		}
		if r[0] >= uint64(a.q.size) {
			continue
		}
		_ = punchHole(a.fh, r[0], min(r[1], uint64(a.q.size)-r[0]))
	}
	return nil
}

// errRefcountOverflow marks a refcount that would not fit its width.
var errRefcountOverflow = errors.New("refcount overflow")

// headerSizeOffset is the offset of the virtual size in the qcow2 header.
const headerSizeOffset = 24

func (a *applier) writeAt(stage ApplyStage, b []byte, off uint64) error {
	if a.opts.BeforeWrite != nil {
		if err := a.opts.BeforeWrite(ApplyWrite{stage, off, uint64(len(b))}); err != nil {
			return err
		}
	}
	if _, err := a.fh.WriteAt(b, int64(off)); err != nil {
		return err
	}
	return nil
}

// writeChanged writes the sectors of b (new contents of the cluster at
// off, whose old contents are orig) that differ from orig, in one write:
// the file keeps its holes and the write stays as small as it can be.
func (a *applier) writeChanged(stage ApplyStage, orig, b []byte, off uint64) error {
	first, last := -1, -1
	for i := range b {
		if b[i] != orig[i] {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return nil
	}
	start := uint64(first) &^ 511
	end := min((uint64(last)|511)+1, uint64(len(b)))
	return a.writeAt(stage, b[start:end], off+start)
}

// sync flushes the stage's writes, if it made any.
func (a *applier) sync(writes int) error {
	if writes == 0 {
		return nil
	}
	return a.fh.Sync()
}

// mergeRuns turns sorted cluster offsets into [offset, length] runs of
// adjacent clusters.
func mergeRuns(offs []uint64, cs uint64) [][2]uint64 {
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	var runs [][2]uint64
	for _, o := range offs {
		if n := len(runs); n > 0 && runs[n-1][0]+runs[n-1][1] == o {
			runs[n-1][1] += cs
			continue
		}
		runs = append(runs, [2]uint64{o, cs})
	}
	return runs
}
