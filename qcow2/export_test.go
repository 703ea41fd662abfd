package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
)

// exportChain builds a three-layer chain with qemu-img and qemu-io whose
// sizes are not multiples of a cluster and grow from layer to layer: a raw
// base with data, zeros and holes, a qcow2 layer of 4 KiB clusters with
// data, zero and compressed clusters, and an extended-L2 top of 64 KiB
// clusters whose writes, zeros and compressed cluster cut across the
// layers below. It returns the top and qemu-img convert's raw copy of it.
func exportChain(t *testing.T) (top string, want []byte) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	sh := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	io := func(img string, cmds ...string) {
		t.Helper()
		args := []string{"-f", "qcow2"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		sh("qemu-io", append(args, img)...)
	}

	// The base: 3 MiB + 1000 bytes (the guest sees a whole last sector),
	// data in pieces with a hole and a run of written zeros between.
	base, err := os.Create(filepath.Join(dir, "base.raw"))
	if err != nil {
		t.Fatal(err)
	}
	fill := func(off, n int64, b byte) {
		if _, err := base.WriteAt(bytes.Repeat([]byte{b}, int(n)), off); err != nil {
			t.Fatal(err)
		}
	}
	fill(0, 300<<10+512, 0xb1)
	fill(1<<20-512, 70<<10, 0xb2)
	fill(1<<20+70<<10, 40<<10, 0) // zeros written: data to the file system
	fill(2<<20+3000, 1<<20-3000+1000, 0xb3)
	if err := base.Close(); err != nil {
		t.Fatal(err)
	}

	sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.raw", "-F", "raw", "mid.qcow2", fmt.Sprint(5<<20+3*512))
	io("mid.qcow2",
		"write -P 0x21 4096 12k",
		"write -z 200k 8k",       // zeros over the base's data
		"write -P 0x22 1020k 6k", // across the base's 1 MiB boundary
		"write -c -P 0x23 1536k 4k",
		"write -P 0x24 3072k 64k",  // past the base's end
		"write -P 0x25 5119k 1536", // the last sectors
	)
	sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536,extended_l2=on", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", fmt.Sprint(6<<20+5*512))
	io("top.qcow2",
		"write -P 0x31 2k 2k", // one subcluster: the rest of the cluster from below
		"write -z 64k 64k",
		"write -P 0x32 130k 10k",
		"write -c -P 0x33 512k 64k",
		"write -P 0x34 2044k 8k",   // across a 2 MiB chunk boundary
		"write -P 0x35 6142k 2048", // the end of the guest
		"write -P 0 4096k 64k",     // data that reads as zeros
	)
	top = filepath.Join(dir, "top.qcow2")
	ref := filepath.Join(dir, "ref.raw")
	sh("qemu-img", "convert", "-O", "raw", top, ref)
	want, err = os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	return top, want
}

// TestExportParallel exports a chain with data, zeros, holes and backing
// layers through workers and job sizes that put job boundaries inside
// clusters, subclusters and layers, to a sparse file and in order to a
// writer, and compares the bytes with qemu-img convert's.
func TestExportParallel(t *testing.T) {
	top, want := exportChain(t)
	c, err := OpenChain(top, ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if uint64(len(want)) != c.Size() {
		t.Fatalf("qemu-img convert wrote %d bytes, chain size %d", len(want), c.Size())
	}
	var nonZero int64 // 4 KiB blocks of the guest that are not all zeros
	for i := 0; i < len(want); i += 4096 {
		if !allZero(want[i:min(i+4096, len(want))]) {
			nonZero++
		}
	}
	for _, opts := range []exportOptions{
		{workers: 1, chunk: exportChunk},
		{workers: 4, chunk: exportChunk},
		{workers: 3, chunk: 12<<10 + 512},
		{workers: 2, chunk: 64<<10 + 1536},
		{workers: 4, chunk: 1000},
		{workers: 4, chunk: 1<<20 - 512},
	} {
		name := fmt.Sprintf("workers=%d,chunk=%d", opts.workers, opts.chunk)
		t.Run(name+"/sparse", func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.raw")
			f, err := os.Create(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := export(c, f, f, opts); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if d := diffAt(got, want); d >= 0 {
				t.Fatalf("export differs from qemu-img convert at %#x (%d bytes, want %d)", d, len(got), len(want))
			}
			var st syscall.Stat_t
			if err := syscall.Stat(out, &st); err != nil {
				t.Fatal(err)
			}
			// Every all-zero block is a hole; a few blocks of slack for
			// the file system's own extent blocks.
			if alloc := st.Blocks * 512; alloc > nonZero*4096+16<<10 {
				t.Errorf("output allocates %d bytes; %d blocks of 4 KiB hold data", alloc, nonZero)
			}
		})
		t.Run(name+"/in order", func(t *testing.T) {
			var got bytes.Buffer
			if err := export(c, &got, nil, opts); err != nil {
				t.Fatal(err)
			}
			if d := diffAt(got.Bytes(), want); d >= 0 {
				t.Fatalf("export differs from qemu-img convert at %#x (%d bytes, want %d)", d, got.Len(), len(want))
			}
		})
	}
	// The public entry point with its default workers, both ways.
	var got bytes.Buffer
	if err := Export(c, &got, true); err != nil { // not a file: written in order
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("Export to a buffer differs from qemu-img convert")
	}
}

// diffAt returns the first offset where a and b differ, or -1.
func diffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

var errTestWrite = errors.New("test: the output refuses writes")

// failingTarget accepts some writes, then fails every one; a write after
// the export returned is a goroutine Export left running.
type failingTarget struct {
	t        *testing.T
	okWrites int64
	writes   atomic.Int64
	returned atomic.Bool
}

func (f *failingTarget) WriteAt(p []byte, off int64) (int, error) {
	return f.write(p)
}

func (f *failingTarget) Write(p []byte) (int, error) { return f.write(p) }

func (f *failingTarget) write(p []byte) (int, error) {
	if f.returned.Load() {
		f.t.Errorf("a write after the export returned")
	}
	if f.writes.Add(1) > f.okWrites {
		return 0, errTestWrite
	}
	return len(p), nil
}

func (f *failingTarget) Truncate(int64) error {
	f.t.Errorf("output truncated after a failed write")
	return nil
}

// TestExportWriteError: a failing output stops the export with its error,
// and no goroutine writes once Export has returned.
func TestExportWriteError(t *testing.T) {
	top, _ := exportChain(t)
	c, err := OpenChain(top, ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	opts := exportOptions{workers: 4, chunk: 8 << 10}
	for _, ok := range []int64{0, 1, 5} {
		for _, sparse := range []bool{true, false} {
			t.Run(fmt.Sprintf("fail after %d writes, sparse %t", ok, sparse), func(t *testing.T) {
				ft := &failingTarget{t: t, okWrites: ok}
				var st sparseTarget
				if sparse {
					st = ft
				}
				err := export(c, ft, st, opts)
				ft.returned.Store(true)
				if !errors.Is(err, errTestWrite) {
					t.Fatalf("export: %v, want %v", err, errTestWrite)
				}
				t.Logf("error: %v", err)
			})
		}
	}
}

// TestExportNoSpace: a sparse export to a device that is always full
// fails with ENOSPC, naming the output.
func TestExportNoSpace(t *testing.T) {
	top, _ := exportChain(t)
	c, err := OpenChain(top, ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer f.Close()
	for _, sparse := range []bool{true, false} {
		err := Export(c, f, sparse)
		var pe *os.PathError
		if !errors.Is(err, syscall.ENOSPC) || !errors.As(err, &pe) || pe.Path != "/dev/full" {
			t.Errorf("export to /dev/full (sparse %t): %v, want ENOSPC naming the file", sparse, err)
		}
		t.Logf("sparse %t: %v", sparse, err)
	}
}
