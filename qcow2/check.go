package qcow2

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// CheckResult is what `qemu-img check --output=json` prints; optional
// counts are omitted when zero, as qemu-img omits them.
type CheckResult struct {
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	CheckErrors        int64  `json:"check-errors"`
	ImageEndOffset     int64  `json:"image-end-offset,omitempty"`
	Corruptions        int64  `json:"corruptions,omitempty"`
	Leaks              int64  `json:"leaks,omitempty"`
	CorruptionsFixed   int64  `json:"corruptions-fixed,omitempty"`
	LeaksFixed         int64  `json:"leaks-fixed,omitempty"`
	TotalClusters      int64  `json:"total-clusters,omitempty"`
	AllocatedClusters  int64  `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64  `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64  `json:"compressed-clusters,omitempty"`

	// Messages are the findings, one line each, as qemu-img prints them on
	// stderr (at most maxCheckMessages).
	Messages []string `json:"-"`
}

// ExitCode returns qemu-img check's exit code for the result: 2 when the
// image is corrupt, 3 when it only leaks clusters, 1 after internal errors,
// 0 when clean.
func (r *CheckResult) ExitCode() int {
	switch {
	case r.CheckErrors != 0:
		return 1
	case r.Corruptions != 0:
		return 2
	case r.Leaks != 0:
		return 3
	}
	return 0
}

const (
	maxCheckMessages = 1000
	// maxCheckClusters bounds the host clusters a check counts, as QEMU
	// refuses files with more than INT_MAX clusters.
	maxCheckClusters = math.MaxInt32
	l1ChunkEntries   = 8192
	bitmapTableMask  = 0x00fffffffffffe00
	bitmapTableRsvd  = 0xff000000000001fe
)

// refCounts are the refcounts a check computes, one per host cluster:
// 16 bits each when the image's refcounts fit (the default width), so a
// check of a huge file stays small; 32 bits (saturating) otherwise.
type refCounts struct {
	n16 []uint16
	n32 []uint32
	max uint64
	// mem is the backing store of the first array (see bigZeroed);
	// grow may move the array to the heap, mem stays to be freed.
	mem    []byte
	mapped bool
}

func newRefCounts(n uint64, bits uint32) refCounts {
	if n == 0 {
		n = 1
	}
	if bits <= 16 {
		mem, mapped := bigZeroed(n * 2)
		return refCounts{n16: unsafe.Slice((*uint16)(unsafe.Pointer(&mem[0])), n), max: 1<<bits - 1, mem: mem, mapped: mapped}
	}
	mem, mapped := bigZeroed(n * 4)
	r := refCounts{n32: unsafe.Slice((*uint32)(unsafe.Pointer(&mem[0])), n), max: math.MaxUint32, mem: mem, mapped: mapped}
	if bits < 32 {
		r.max = 1<<bits - 1
	}
	return r
}

// free releases a mapped array; the counts must not be used afterwards.
func (r *refCounts) free() {
	freeBig(r.mem, r.mapped)
	r.n16, r.n32, r.mem = nil, nil, nil
}

func (r *refCounts) len() uint64 {
	if r.n32 != nil {
		return uint64(len(r.n32))
	}
	return uint64(len(r.n16))
}

func (r *refCounts) get(i uint64) uint64 {
	if i >= r.len() {
		return 0
	}
	if r.n32 != nil {
		return uint64(r.n32[i])
	}
	return uint64(r.n16[i])
}

// grow makes room for cluster index k.
func (r *refCounts) grow(k uint64) {
	for k >= r.len() {
		if r.n32 != nil {
			r.n32 = append(r.n32, 0)
		} else {
			r.n16 = append(r.n16, 0)
		}
	}
}

// add increments cluster k (k < len) unless it is at the maximum.
func (r *refCounts) add(k uint64) bool {
	if r.n32 != nil {
		if uint64(r.n32[k]) >= r.max {
			return false
		}
		r.n32[k]++
		return true
	}
	if uint64(r.n16[k]) >= r.max {
		return false
	}
	r.n16[k]++
	return true
}

type checker struct {
	f    *File
	res  *CheckResult
	refs refCounts
	cs   uint64

	// The refcount table and the refcount block last looked at, so the
	// per-cluster lookups of a check skip the shared cache.
	rt     []uint64
	rbOff  uint64
	rb     []byte
	rbBits uint32
	// rbIdx is the refcount table index of the block in rb, when rbOff
	// is not zero.
	rbIdx uint64

	// dataFile caches f.Header.HasDataFile() for the per-entry paths.
	dataFile bool
	// copied holds the COPIED flag test's messages (see copiedMsg).
	copied []string
}

// diskRefcount is File.Refcount through the checker's own block cache.
func (c *checker) diskRefcount(ci uint64) (uint64, error) {
	ti := ci >> c.rbBits
	if c.rbOff != 0 && ti == c.rbIdx {
		return RefcountEntry(c.rb, c.f.Header.RefcountOrder, ci&(1<<c.rbBits-1)), nil
	}
	if ti >= uint64(len(c.rt)) {
		return 0, nil
	}
	off := c.rt[ti] & RefTableOffsetMask
	if off == 0 {
		return 0, nil
	}
	if off != c.rbOff {
		if off&(c.cs-1) != 0 {
			return 0, withFile(c.f.Name, formatErr(int64(c.f.Header.RefcountTableOffset+ti*8), "refcount block offset %#x is not cluster aligned (refcount table index %d)", off, ti))
		}
		if uint64(len(c.rb)) != c.cs {
			c.rb = make([]byte, c.cs)
		}
		c.rbOff = 0
		if err := c.read(c.rb, off); err != nil {
			return 0, withFile(c.f.Name, err)
		}
		c.rbOff, c.rbIdx = off, ti
	}
	return RefcountEntry(c.rb, c.f.Header.RefcountOrder, ci&(1<<c.rbBits-1)), nil
}

func (c *checker) msg(format string, args ...any) {
	if len(c.res.Messages) < maxCheckMessages {
		c.res.Messages = append(c.res.Messages, fmt.Sprintf(format, args...))
	}
}

// copiedMsg records a finding of the COPIED flag test. QEMU runs that test
// after comparing refcounts, so its messages follow the comparison's
// (Check appends them) although qchain finds them in the first pass.
func (c *checker) copiedMsg(format string, args ...any) {
	if len(c.copied) < maxCheckMessages {
		c.copied = append(c.copied, fmt.Sprintf(format, args...))
	}
}

// inc is QEMU's qcow2_inc_refcounts_imrt: count one more reference to each
// cluster of [off, off+size).
func (c *checker) inc(off, size uint64) {
	if size == c.cs && off&(c.cs-1) == 0 && off/c.cs < c.refs.len() {
		// One whole cluster inside the file: the common case.
		if !c.refs.add(off / c.cs) {
			c.msg("ERROR: overflow cluster offset=0x%x", off)
			c.res.Corruptions++
		}
		return
	}
	if size == 0 {
		return
	}
	fileLen := uint64(c.f.size)
	if off+size >= fileLen && (off+size < off || off+size-fileLen >= c.cs) {
		c.msg("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x%x size 0x%x", off, size)
		c.res.Corruptions++
		return
	}
	for co := off &^ (c.cs - 1); co <= (off+size-1)&^(c.cs-1); co += c.cs {
		k := co / c.cs
		c.refs.grow(k)
		if !c.refs.add(k) {
			c.msg("ERROR: overflow cluster offset=0x%x", co)
			c.res.Corruptions++
		}
	}
}

// Check verifies the image's metadata and refcounts exactly as
// `qemu-img check` does (without repairing anything) and returns its
// counts. It reads only this file, not the backing chain. An error means
// the check itself could not run (qemu-img's "Check failed").
func (f *File) Check() (*CheckResult, error) {
	c, err := f.references()
	if err != nil {
		return nil, err
	}
	defer c.refs.free()
	highest, err := c.compare()
	if err != nil {
		return nil, err
	}
	c.res.Messages = append(c.res.Messages, c.copied[:min(len(c.copied), maxCheckMessages-len(c.res.Messages))]...)
	c.res.ImageEndOffset = int64((highest + 1) * c.cs)
	return c.res, nil
}

// references counts every reference to every host cluster, as QEMU's
// calculate_refcounts does, recording findings in the checker's result.
func (f *File) references() (_ *checker, err error) {
	res := &CheckResult{Filename: f.Name, Format: "qcow2"}
	if u := f.Header.UnknownIncompatible(); u != 0 {
		return nil, withFile(f.Name, f.readable())
	}
	snaps, err := f.Snapshots()
	if err != nil {
		return nil, err
	}
	cs := f.ClusterSize()
	nb := divRoundUp(uint64(f.size), cs)
	if nb > maxCheckClusters {
		return nil, withFile(f.Name, fmt.Errorf("file too large to check: %d clusters", nb))
	}
	rt, err := f.RefcountTable()
	if err != nil {
		return nil, err
	}
	c := &checker{f: f, res: res, cs: cs, rt: rt, refs: newRefCounts(nb, f.Header.RefcountBits()), rbBits: f.refcountBlockBits(), dataFile: f.Header.HasDataFile()}
	defer func() {
		if err != nil {
			c.refs.free()
		}
	}()
	res.TotalClusters = int64(divRoundUp(f.VirtualSize(), cs))

	c.inc(0, cs)
	if err := c.checkL1(f.Header.L1TableOffset, uint64(f.Header.L1Size), true); err != nil {
		return nil, err
	}
	if f.Header.HasDataFile() && len(snaps) > 0 {
		c.msg("ERROR %d snapshots in image with data file", len(snaps))
		res.Corruptions++
	}
	for _, s := range snaps {
		if s.L1TableOffset&(cs-1) != 0 {
			c.msg("ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted", s.ID, s.Name, s.L1TableOffset)
			res.Corruptions++
			continue
		}
		if uint64(s.L1Size) > MaxL1Bytes/8 {
			c.msg("ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table entry corrupted", s.ID, s.Name, s.L1Size)
			res.Corruptions++
			continue
		}
		if err := c.checkL1(s.L1TableOffset, uint64(s.L1Size), false); err != nil {
			return nil, err
		}
	}
	c.inc(f.Header.SnapshotsOffset, f.snapsSize)
	c.inc(f.Header.RefcountTableOffset, uint64(f.Header.RefcountTableClusters)*cs)
	if cr := f.Header.Crypto; cr != nil {
		c.inc(cr.Offset, cr.Length)
	}
	if err := c.checkBitmaps(); err != nil {
		return nil, err
	}
	if err := c.checkRefblocks(); err != nil {
		return nil, err
	}
	return c, nil
}

// readZeroFill reads at any offset; bytes past the end of the file are
// zeros, as QEMU's check sees them.
func (c *checker) read(b []byte, off uint64) error {
	return readAtZeroFill(c.f.r, c.f.size, b, off)
}

// checkL1 is QEMU's check_refcounts_l1. The table is read in chunks so a
// huge l1_size cannot make the check allocate much.
func (c *checker) checkL1(off, n uint64, active bool) error {
	if n == 0 {
		return nil
	}
	c.inc(off, n*8)
	buf := make([]byte, min(n, l1ChunkEntries)*8)
	for i := uint64(0); i < n; {
		chunk := min(n-i, l1ChunkEntries)
		if off+i*8 >= uint64(c.f.size) {
			// The rest reads as zeros: no more L2 tables.
			break
		}
		b := buf[:chunk*8]
		if err := readAtZeroFill(c.f.r, c.f.size, b, off+i*8); err != nil {
			c.res.CheckErrors++
			return withFile(c.f.Name, fmt.Errorf("I/O error reading L1 table: %w", err))
		}
		tables := c.prefetch(b)
		for j := uint64(0); j < chunk; j++ {
			e := binary.BigEndian.Uint64(b[j*8:])
			if e == 0 {
				continue
			}
			if e&L1EntryReservedMask != 0 {
				c.msg("ERROR found L1 entry with reserved bits set: %x", e)
				c.res.Corruptions++
			}
			l2off := e & L1EntryOffsetMask
			c.inc(l2off, c.cs)
			if l2off&(c.cs-1) != 0 {
				c.msg("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2off)
				c.res.Corruptions++
			}
			l2, err := tables.next()
			if err != nil {
				tables.stop()
				c.res.CheckErrors++
				return err
			}
			c.checkL2(l2, active)
			tables.done(l2)
			if active && l2off != 0 {
				c.checkCopiedL1(i+j, e)
			}
		}
		tables.stop()
		i += chunk
	}
	return nil
}

// l2Prefetch reads the L2 tables of an L1 chunk in order on its own
// goroutine, a few ahead of the check, so reading overlaps checking.
type l2Prefetch struct {
	out  chan l2Read
	free chan []byte
	quit chan struct{}
	wait chan struct{}
}

type l2Read struct {
	b   []byte
	err error
}

// l2PrefetchDepth is how many tables the reader may run ahead.
const l2PrefetchDepth = 4

// prefetch starts reading the tables the non-zero entries of the L1 chunk
// b point to, in order. Every table is read (with the zero fill past the
// end of the file checkL1 expects), whatever its offset.
func (c *checker) prefetch(b []byte) *l2Prefetch {
	p := &l2Prefetch{
		out:  make(chan l2Read, l2PrefetchDepth),
		free: make(chan []byte, l2PrefetchDepth+1),
		quit: make(chan struct{}),
		wait: make(chan struct{}),
	}
	for k := 0; k < l2PrefetchDepth+1; k++ {
		p.free <- nil
	}
	go func() {
		defer close(p.wait)
		for j := 0; j+8 <= len(b); j += 8 {
			e := binary.BigEndian.Uint64(b[j:])
			if e == 0 {
				continue
			}
			var buf []byte
			select {
			case buf = <-p.free:
			case <-p.quit:
				return
			}
			if buf == nil {
				buf = make([]byte, c.cs)
			}
			err := c.read(buf, e&L1EntryOffsetMask)
			select {
			case p.out <- l2Read{buf, err}:
			case <-p.quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return p
}

// next returns the next table, in the order of the chunk's entries.
func (p *l2Prefetch) next() ([]byte, error) {
	r := <-p.out
	return r.b, r.err
}

// done gives a table's buffer back to the reader.
func (p *l2Prefetch) done(b []byte) { p.free <- b }

// stop ends the reader and waits for it.
func (p *l2Prefetch) stop() {
	close(p.quit)
	<-p.wait
}

// checkL2 is QEMU's check_refcounts_l2 without repairs.
func (c *checker) checkL2(t []byte, active bool) {
	g := c.f.Geo
	n := c.f.l2Entries()
	var nextContiguous uint64
	// Standard data entries of an image without a data file take a
	// shorter path with the same effects as the general one below: they
	// are most entries of a large image.
	fast := !g.ExtendedL2 && !c.dataFile
	for i := uint64(0); i < n; i++ {
		if !g.ExtendedL2 {
			// Zero entries (unallocated, no flags) need no check.
			if i = zeroEntries(t, i, n); i == n {
				break
			}
		}
		if fast {
			desc := binary.BigEndian.Uint64(t[i*8:])
			off := desc & L2EntryOffsetMask
			if desc&(FlagCompressed|FlagZero|L2EntryReservedMask) == 0 && off != 0 && off&(c.cs-1) == 0 {
				if active {
					c.res.AllocatedClusters++
					if nextContiguous != 0 && off != nextContiguous {
						c.res.FragmentedClusters++
					}
					nextContiguous = off + c.cs
				}
				k := off >> g.ClusterBits
				if n16 := c.refs.n16; k < uint64(len(n16)) && uint64(n16[k]) < c.refs.max {
					n16[k]++
				} else {
					c.inc(off, c.cs)
				}
				if active {
					if ti := k >> c.rbBits; c.rbOff != 0 && ti == c.rbIdx && c.f.Header.RefcountOrder == 4 {
						// The refcount block at hand, 16-bit refcounts.
						rc := binary.BigEndian.Uint16(c.rb[(k&(1<<c.rbBits-1))*2:])
						if (rc == 1) != (desc&FlagCopied != 0) {
							c.res.Corruptions++
							c.copiedMsg("ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", desc, rc)
						}
					} else {
						c.checkCopiedEntry(L2Entry{Desc: desc})
					}
				}
				continue
			}
		}
		e := c.f.entryAt(t, i)
		kind := g.ClusterKind(e)
		if kind != Compressed && e.Desc&L2EntryReservedMask != 0 {
			c.msg("ERROR found l2 entry with reserved bits set: %x", e.Desc)
			c.res.Corruptions++
		}
		switch kind {
		case Compressed:
			if e.Desc&FlagCopied != 0 {
				off, _ := g.CompressedRange(e)
				c.msg("ERROR: coffset=0x%x: copied flag must never be set for compressed clusters", off)
				e.Desc &^= FlagCopied
				c.res.Corruptions++
			}
			if c.dataFile {
				c.msg("ERROR compressed cluster %d with data file, entry=0x%x", i, e.Desc)
				c.res.Corruptions++
				continue
			}
			if e.Bitmap != 0 {
				c.msg("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x", i, e.Desc)
				c.res.Corruptions++
				continue
			}
			off, size := g.CompressedRange(e)
			c.inc(off, size)
			if active {
				c.res.AllocatedClusters++
				c.res.CompressedClusters++
				c.res.FragmentedClusters++
			}
		case ZeroAlloc, Normal:
			off := e.HostOffset()
			if (e.Bitmap>>32)&e.Bitmap != 0 {
				c.res.Corruptions++
				c.msg("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", off)
			}
			if off&(c.cs-1) != 0 {
				c.res.Corruptions++
				contains := e.Desc&FlagZero == 0
				if g.ExtendedL2 {
					contains = e.Bitmap&allAllocMask != 0
				}
				if contains {
					c.msg("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", off)
				} else {
					c.msg("ERROR offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", off)
				}
			}
			if active {
				c.res.AllocatedClusters++
				if nextContiguous != 0 && off != nextContiguous {
					c.res.FragmentedClusters++
				}
				nextContiguous = off + c.cs
			}
			if !c.dataFile {
				c.inc(off, c.cs)
			}
			if active {
				c.checkCopiedEntry(e)
			}
		case Unallocated:
			if e.Bitmap&allAllocMask != 0 {
				c.res.Corruptions++
				c.msg("ERROR: Unallocated cluster has non-zero subcluster allocation map")
			}
		}
	}
}

// checkBitmaps is QEMU's qcow2_check_bitmaps_refcounts.
func (c *checker) checkBitmaps() error {
	e := c.f.Header.Bitmaps
	if e == nil {
		return nil
	}
	c.inc(e.DirectoryOffset, e.DirectorySize)
	bms, err := c.f.Bitmaps()
	if err != nil {
		c.res.Corruptions++
		c.msg("ERROR bitmap directory: %v", err)
		return nil
	}
	for _, b := range bms {
		c.inc(b.TableOffset, uint64(b.TableSize)*8)
		if b.TableOffset&(c.cs-1) != 0 || b.TableOffset > uint64(c.f.size) || uint64(b.TableSize)*8 > uint64(c.f.size)-b.TableOffset {
			c.res.Corruptions++
			c.msg("ERROR bitmap %s: bitmap table at %#x is invalid", b.Name, b.TableOffset)
			continue
		}
		tb := make([]byte, uint64(b.TableSize)*8)
		if _, err := c.f.r.ReadAt(tb, int64(b.TableOffset)); err != nil {
			c.res.Corruptions++
			continue
		}
		for i := 0; i < len(tb); i += 8 {
			ent := binary.BigEndian.Uint64(tb[i:])
			off := ent & bitmapTableMask
			if ent&bitmapTableRsvd != 0 || off&(c.cs-1) != 0 || (ent&1 != 0 && off != 0) {
				c.res.Corruptions++
				continue
			}
			if off != 0 {
				c.inc(off, c.cs)
			}
		}
	}
	return nil
}

// checkRefblocks is QEMU's check_refblocks: every refcount block must be
// aligned, inside the file and referenced once.
func (c *checker) checkRefblocks() error {
	rt, err := c.f.RefcountTable()
	if err != nil {
		c.res.CheckErrors++
		return err
	}
	for i, ent := range rt {
		off := ent & RefTableOffsetMask
		cl := off / c.cs
		if ent&RefTableReservedMask != 0 {
			c.msg("ERROR refcount table entry %d has reserved bits set", i)
			c.res.Corruptions++
			continue
		}
		if off&(c.cs-1) != 0 {
			c.msg("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i)
			c.res.Corruptions++
			continue
		}
		if cl >= c.refs.len() {
			c.res.Corruptions++
			c.msg("ERROR refcount block %d is outside image", i)
			continue
		}
		if off != 0 {
			c.inc(off, c.cs)
			if rc := c.refs.get(cl); rc != 1 {
				c.msg("ERROR refcount block %d refcount=%d", i, rc)
				c.res.Corruptions++
			}
		}
	}
	return nil
}

// compare is QEMU's compare_refcounts: the refcounts on disk against the
// computed ones. It returns the highest cluster in use by either.
func (c *checker) compare() (uint64, error) {
	rt, err := c.f.RefcountTable()
	if err != nil {
		return 0, err
	}
	bb := c.f.refcountBlockBits()
	per := uint64(1) << bb
	order := c.f.Header.RefcountOrder
	var highest uint64
	n := c.refs.len()
	for i := uint64(0); i < n; {
		ti := i >> bb
		blockEnd := min((ti+1)*per, n)
		var block []byte
		var blockErr error
		if ti < uint64(len(rt)) {
			if off := rt[ti] & RefTableOffsetMask; off != 0 {
				if off&(c.cs-1) != 0 {
					blockErr = formatErr(int64(off), "refcount block offset %#x is not cluster aligned", off)
				} else {
					if uint64(len(c.rb)) != c.cs {
						c.rb = make([]byte, c.cs)
					}
					c.rbOff = 0
					if blockErr = c.read(c.rb, off); blockErr == nil {
						block, c.rbOff, c.rbIdx = c.rb, off, ti
					}
				}
			}
		}
		if block != nil && order == 4 && c.refs.n16 != nil {
			// 16-bit refcounts on disk and in memory: the common case.
			base := i & (per - 1)
			for j, computed := range c.refs.n16[i:blockEnd] {
				disk := binary.BigEndian.Uint16(block[(base+uint64(j))*2:])
				if disk|computed != 0 {
					highest = i + uint64(j)
				}
				if disk != computed {
					c.mismatch(i+uint64(j), uint64(disk), uint64(computed))
				}
			}
			i = blockEnd
			continue
		}
		for ; i < blockEnd; i++ {
			if blockErr != nil {
				c.msg("Can't get refcount for cluster %d: %v", i, blockErr)
				c.res.CheckErrors++
				continue
			}
			var disk uint64
			if block != nil {
				disk = RefcountEntry(block, order, i&(per-1))
			}
			computed := c.refs.get(i)
			if disk > 0 || computed > 0 {
				highest = i
			}
			if disk != computed {
				c.mismatch(i, disk, computed)
			}
		}
	}
	return highest, nil
}

// mismatch records cluster i whose refcount on disk is not the computed one.
func (c *checker) mismatch(i, disk, computed uint64) {
	kind := "Leaked"
	if disk < computed {
		kind = "ERROR"
		c.res.Corruptions++
	} else {
		c.res.Leaks++
	}
	c.msg("%s cluster %d refcount=%d reference=%d", kind, i, disk, computed)
}

// checkCopiedL1 and checkCopiedEntry are QEMU's check_oflag_copied, done in
// the same pass as the reference count (each table is read once): the
// COPIED flag of every active L1 and L2 entry must say whether the
// on-disk refcount is exactly one.
func (c *checker) checkCopiedL1(index uint64, ent uint64) {
	l2off := ent & L1EntryOffsetMask
	rc, err := c.diskRefcount(l2off / c.cs)
	if err != nil {
		return
	}
	if (rc == 1) != (ent&FlagCopied != 0) {
		c.res.Corruptions++
		c.copiedMsg("ERROR OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", index, ent, rc)
	}
}

func (c *checker) checkCopiedEntry(e L2Entry) {
	rc := uint64(1)
	if !c.dataFile {
		var err error
		if rc, err = c.diskRefcount(e.HostOffset() / c.cs); err != nil {
			return
		}
	}
	if (rc == 1) != (e.Desc&FlagCopied != 0) {
		c.res.Corruptions++
		c.copiedMsg("ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", e.Desc, rc)
	}
}
