package qcow2

// LeakKind says why a host cluster is reported by Leaks.
type LeakKind string

// Leak kinds.
const (
	// Leaked clusters have a refcount but nothing references them: space
	// QEMU allocated and lost (a crash between allocation and use).
	Leaked LeakKind = "leaked"
	// Unreferenced clusters lie inside the file with refcount zero and no
	// reference: freed space (discards, deleted snapshots) that may still
	// hold old data.
	Unreferenced LeakKind = "unreferenced"
)

// LeakRun is a run of host clusters of one kind.
type LeakRun struct {
	Offset   uint64   `json:"offset"`
	Length   uint64   `json:"length"`
	Kind     LeakKind `json:"kind"`
	Refcount uint64   `json:"refcount"` // on-disk refcount of the first cluster
	// NonZero is true when any byte of the run is not zero (it may hold
	// recoverable data); NonZeroClusters counts such clusters.
	NonZero         bool   `json:"non-zero"`
	NonZeroClusters uint64 `json:"non-zero-clusters"`
}

// Leaks calls fn with each run of host clusters (inside the file) that
// nothing references: leaked ones with a refcount, and unreferenced ones
// without. Runs split where the kind or the non-zero state changes.
func (f *File) Leaks(fn func(LeakRun) error) error {
	c, err := f.references()
	if err != nil {
		return err
	}
	defer c.refs.free()
	cs := c.cs
	fileClusters := divRoundUp(uint64(f.size), cs)
	var cur LeakRun
	flush := func() error {
		if cur.Length == 0 {
			return nil
		}
		err := fn(cur)
		cur = LeakRun{}
		return err
	}
	buf := make([]byte, cs)
	for i := uint64(0); i < fileClusters; i++ {
		if c.refs.get(i) != 0 {
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		rc, err := f.Refcount(i)
		if err != nil {
			return err
		}
		kind := Unreferenced
		if rc != 0 {
			kind = Leaked
		}
		if err := readAtZeroFill(f.r, f.size, buf, i*cs); err != nil {
			return withFile(f.Name, err)
		}
		nonZero := !allZero(buf)
		off := i * cs
		if cur.Length > 0 && (cur.Kind != kind || cur.NonZero != nonZero || cur.Offset+cur.Length != off) {
			if err := flush(); err != nil {
				return err
			}
		}
		if cur.Length == 0 {
			cur = LeakRun{Offset: off, Kind: kind, Refcount: rc, NonZero: nonZero}
		}
		cur.Length += cs
		if nonZero {
			cur.NonZeroClusters++
		}
	}
	return flush()
}
