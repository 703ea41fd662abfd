// Package qcow2 reads QEMU qcow2 images (and the raw files they may sit
// on) in pure Go.
//
// It owns everything that can be learnt from image files alone: the header
// and its extensions, L1/L2 tables (standard and extended), refcounts,
// compressed and zero clusters, external data files, the internal snapshot
// table and persistent bitmaps; backing chains resolved exactly as QEMU
// resolves them; the guest-visible content of a chain as an io.ReaderAt;
// allocation extents; and a consistency check equal to `qemu-img check`.
//
// Open and OpenChain never write. The writers (Create, Rebase and
// ApplySnapshot, which reverts an image to an internal snapshot) write only
// files no process holds, under QEMU's own lock bytes, and ApplySnapshot
// only after Check finds the image free of corruption. Values shaped like
// qemu-img's JSON
// (ImageInfo, MapEntry, CheckResult) marshal to the same keys and values as
// qemu-img with --output=json, and WriteInfoHuman and WriteMapHuman print
// its default text. OutputOptions.Layout picks the release reproduced:
// qemu-img 10.0 (the zero value) or 7.2, which differ in layout only.
//
// A *File and a *Chain are safe for concurrent use: all reads go through
// io.ReaderAt and the table caches are guarded by a mutex.
//
// # Security
//
// Images are untrusted input. Every count, length and offset read from a
// file is checked against the file size and against named limits (the same
// limits QEMU applies) before it is used to allocate or to read; tables are
// read through a bounded cache so memory does not grow with the image size.
// Backing chains have a depth limit and loop detection, and ChainOptions.Root
// confines every file a chain may open to one folder, so a crafted backing
// name cannot make a caller read arbitrary files.
package qcow2
