package qcow2

// L1 and L2 entry layout from docs/interop/qcow2.txt.
const (
	L1EntryOffsetMask   = 0x00fffffffffffe00
	L1EntryReservedMask = 0x7f000000000001ff
	L2EntryOffsetMask   = 0x00fffffffffffe00
	L2EntryReservedMask = 0x3f000000000001fe // standard cluster descriptor
	FlagCopied          = 1 << 63
	FlagCompressed      = 1 << 62
	FlagZero            = 1 << 0
	subclustersPerCl    = 32
	allAllocMask        = 0xffffffff
)

// ClusterType is the type of a guest (sub)cluster as QEMU classifies it.
type ClusterType uint8

// Cluster types, named after QEMU's QCow2SubclusterType.
const (
	Unallocated      ClusterType = iota // reads from the backing file (or zeros)
	UnallocatedAlloc                    // host cluster reserved, subcluster reads from backing
	ZeroPlain                           // reads as zeros, no host cluster
	ZeroAlloc                           // reads as zeros, host cluster reserved
	Normal                              // data in a host cluster
	Compressed                          // compressed data
	Invalid                             // corrupt subcluster bitmap
)

var clusterTypeNames = [...]string{"unallocated", "unallocated-alloc", "zero", "zero-alloc", "data", "compressed", "invalid"}

func (t ClusterType) String() string {
	if int(t) < len(clusterTypeNames) {
		return clusterTypeNames[t]
	}
	return "unknown"
}

// Allocated reports whether the type hides the backing file (data or zero).
func (t ClusterType) Allocated() bool {
	return t == ZeroPlain || t == ZeroAlloc || t == Normal || t == Compressed
}

// HasHostOffset reports whether the type points at a host cluster that QEMU
// reports as the mapped offset.
func (t ClusterType) HasHostOffset() bool {
	return t == Normal || t == ZeroAlloc || t == UnallocatedAlloc
}

// L2Entry is one decoded L2 table entry: the 64-bit descriptor and, for
// extended L2 tables, the subcluster bitmap.
type L2Entry struct {
	Desc   uint64
	Bitmap uint64
}

// Geometry is what decoding an L2 entry needs to know about the image.
type Geometry struct {
	ClusterBits uint32
	ExtendedL2  bool
	DataFile    bool // external data file: offset 0 with COPIED is a real cluster
}

// ClusterKind classifies the whole cluster (QEMU's qcow2_get_cluster_type):
// Compressed, Normal, ZeroAlloc, ZeroPlain or Unallocated.
func (g Geometry) ClusterKind(e L2Entry) ClusterType {
	switch {
	case e.Desc&FlagCompressed != 0:
		return Compressed
	case e.Desc&FlagZero != 0 && !g.ExtendedL2:
		if e.Desc&L2EntryOffsetMask != 0 {
			return ZeroAlloc
		}
		return ZeroPlain
	case e.Desc&L2EntryOffsetMask == 0:
		if g.DataFile && e.Desc&FlagCopied != 0 {
			return Normal
		}
		return Unallocated
	}
	return Normal
}

// SubclusterType classifies subcluster sc (0 for standard L2 tables) of the
// entry, as QEMU's qcow2_get_subcluster_type does.
func (g Geometry) SubclusterType(e L2Entry, sc uint) ClusterType {
	kind := g.ClusterKind(e)
	if !g.ExtendedL2 {
		return kind
	}
	alloc, zero := e.Bitmap&(1<<sc) != 0, e.Bitmap&(1<<(sc+32)) != 0
	switch kind {
	case Compressed:
		return Compressed
	case Normal:
		switch {
		case (e.Bitmap>>32)&e.Bitmap != 0:
			return Invalid
		case zero:
			return ZeroAlloc
		case alloc:
			return Normal
		}
		return UnallocatedAlloc
	}
	// Unallocated cluster.
	switch {
	case e.Bitmap&allAllocMask != 0:
		return Invalid
	case zero:
		return ZeroPlain
	}
	return Unallocated
}

// HostOffset returns the host cluster offset of a standard descriptor.
func (e L2Entry) HostOffset() uint64 { return e.Desc & L2EntryOffsetMask }

// CompressedRange returns the host offset and the number of bytes to read
// for a compressed cluster descriptor: the spec's x = 62 - (cluster_bits -
// 8) splits the descriptor into offset and additional 512-byte sectors.
func (g Geometry) CompressedRange(e L2Entry) (off, size uint64) {
	x := 62 - (g.ClusterBits - 8)
	off = e.Desc & (1<<x - 1)
	sectors := (e.Desc>>x)&(1<<(g.ClusterBits-8)-1) + 1
	size = sectors*512 - off&511
	return off, size
}
