package qcow2

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
)

// exportChunk is the most guest data one job of Export reads and writes at
// a time, and the size of each of its buffers.
const exportChunk = 2 << 20

// maxExportWorkers bounds the goroutines that read and write for Export.
// qemu-img convert keeps 8 requests in flight (-m) on one thread; here each
// worker is a goroutine that blocks in its pread and pwrite, so a few of
// them keep both the reads and the writes busy.
const maxExportWorkers = 4

// exportOptions tunes export; tests use small chunks to put job boundaries
// inside clusters and layers.
type exportOptions struct {
	// workers read and write jobs concurrently (at least 1).
	workers int
	// chunk is the most bytes of one job, and the size of its buffer.
	chunk uint64
}

// defaultExportOptions runs one worker per CPU, at least two (one blocks
// in a read while the other writes) and at most maxExportWorkers.
func defaultExportOptions() exportOptions {
	return exportOptions{workers: min(max(runtime.GOMAXPROCS(0), 2), maxExportWorkers), chunk: exportChunk}
}

// sparseTarget is the output of a sparse export: positioned writes and a
// final size. *os.File is one.
type sparseTarget interface {
	io.WriterAt
	Truncate(size int64) error
}

// Export writes the guest-visible content of the chain to w. With sparse
// set, w must be an *os.File: runs that read as zeros are skipped (left as
// holes) and the file is truncated to the guest size.
//
// One goroutine walks the chain's block status and hands runs of data, at
// most 2 MiB each, to a few workers that read them through the layers
// (safe for concurrent use). For a sparse file the workers write their
// runs at their offsets, in any order; for any other writer they only read,
// and w receives every byte in order from the calling goroutine. Memory is
// a few buffers of 2 MiB, whatever the size of the chain. Export returns
// once every goroutine it started has stopped, after the first error.
func Export(c *Chain, w io.Writer, sparse bool) error {
	var st sparseTarget
	if f, ok := w.(*os.File); ok && sparse {
		st = f
	}
	return export(c, w, st, defaultExportOptions())
}

// exportJob is a run of guest bytes [pos, pos+n): runs of data that a
// worker reads into buf, or, for an in-order writer, zeros (runs nil).
type exportJob struct {
	pos, n uint64
	runs   []BlockStatus
	buf    []byte
	// done receives the worker's result (in-order output only).
	done chan error
}

// exporter is the state one export shares between its goroutines.
type exporter struct {
	c      *Chain
	sparse sparseTarget // nil: the output is written in order
	opts   exportOptions

	stop     chan struct{} // closed at the first error
	stopOnce sync.Once
	err      error // the first error, set before stop is closed

	free    chan []byte // buffers back from the workers or the writer
	nbufs   int         // buffers made so far (producer only)
	maxBufs int
}

// fail records err, if it is the first, and stops the export.
func (e *exporter) fail(err error) {
	e.stopOnce.Do(func() {
		e.err = err
		close(e.stop)
	})
}

func (e *exporter) stopped() bool {
	select {
	case <-e.stop:
		return true
	default:
		return false
	}
}

func export(c *Chain, w io.Writer, sparse sparseTarget, opts exportOptions) error {
	opts.workers = max(opts.workers, 1)
	if opts.chunk == 0 {
		opts.chunk = exportChunk
	}
	e := &exporter{c: c, sparse: sparse, opts: opts, stop: make(chan struct{})}
	// One buffer per worker, and one more for the producer to fill the
	// next job (and, in order, for the writer to hold the oldest).
	e.maxBufs = opts.workers + 1
	if sparse == nil {
		e.maxBufs++
	}
	e.free = make(chan []byte, e.maxBufs)
	jobs := make(chan *exportJob)
	var ordered chan *exportJob
	if sparse == nil {
		// Every job in output order, zeros too; its length bounds the
		// jobs queued ahead of the writer (their buffers bound it too).
		ordered = make(chan *exportJob, e.maxBufs)
	}

	var wg sync.WaitGroup
	wg.Add(1 + opts.workers)
	go func() {
		defer wg.Done()
		defer close(jobs)
		if ordered != nil {
			defer close(ordered)
		}
		e.produce(jobs, ordered)
	}()
	for range opts.workers {
		go func() {
			defer wg.Done()
			e.work(jobs)
		}()
	}
	if ordered != nil {
		e.writeInOrder(w, ordered)
	}
	wg.Wait()
	if e.err != nil {
		return e.err
	}
	if sparse != nil {
		if err := sparse.Truncate(int64(c.Size())); err != nil {
			return fmt.Errorf("setting the output size: %w", err)
		}
	}
	return nil
}

// produce walks the chain's block status in order and sends runs of data,
// at most opts.chunk bytes each, to the workers; for in-order output it also
// sends every job, data or zeros, to ordered. It stops at the first error.
func (e *exporter) produce(jobs, ordered chan<- *exportJob) {
	size, chunk := e.c.Size(), e.opts.chunk
	walker := e.c.NewWalker()
	var cur *exportJob // data runs gathered so far, not sent yet
	send := func(j *exportJob, toWorkers bool) bool {
		if toWorkers {
			select {
			case j.buf = <-e.free:
			default:
				if e.nbufs < e.maxBufs {
					e.nbufs++
					j.buf = make([]byte, chunk)
					break
				}
				select {
				case j.buf = <-e.free:
				case <-e.stop:
					return false
				}
			}
			if ordered != nil {
				j.done = make(chan error, 1)
			}
			select {
			case jobs <- j:
			case <-e.stop:
				return false
			}
		}
		if ordered != nil {
			select {
			case ordered <- j:
			case <-e.stop:
				return false
			}
		}
		return true
	}
	for pos := uint64(0); pos < size; {
		end := min(size, pos+chunk)
		if cur != nil {
			end = min(size, cur.pos+chunk)
		}
		s, err := walker.Status(pos, end)
		if err != nil {
			e.fail(err)
			return
		}
		if s.Data && !s.Zero {
			if cur == nil {
				cur = &exportJob{pos: pos}
			}
			cur.runs = append(cur.runs, s)
			cur.n += s.Length
			if cur.n == chunk {
				if !send(cur, true) {
					return
				}
				cur = nil
			}
		} else {
			if cur != nil {
				if !send(cur, true) {
					return
				}
				cur = nil
			}
			if ordered != nil && !send(&exportJob{pos: pos, n: s.Length}, false) {
				return
			}
		}
		pos += s.Length
	}
	if cur != nil {
		send(cur, true)
	}
}

// work reads the jobs it receives and, for a sparse output, writes them.
// After a failure it only hands the buffers back.
func (e *exporter) work(jobs <-chan *exportJob) {
	for j := range jobs {
		var err error
		if !e.stopped() {
			err = e.read(j)
			if err == nil && e.sparse != nil {
				err = writeSparse(e.sparse, j.buf[:j.n], j.pos)
			}
		}
		if err != nil {
			e.fail(err)
		}
		if j.done != nil {
			j.done <- err
			continue // the writer returns the buffer
		}
		e.free <- j.buf
	}
}

// read fills j.buf with the guest data of j's runs.
func (e *exporter) read(j *exportJob) error {
	for _, s := range j.runs {
		b := j.buf[s.Start-j.pos : s.Start-j.pos+s.Length]
		if err := e.c.Layers[s.Depth].ReadExtent(b, s.Extent, s.Start); err != nil {
			return err
		}
	}
	return nil
}

// writeInOrder writes every job to w in guest order as the workers finish
// reading them, zeros for the runs without data. It stops at the first
// error, leaving the rest for the producer and the workers to wind down.
func (e *exporter) writeInOrder(w io.Writer, ordered <-chan *exportJob) {
	var zeros []byte
	for j := range ordered {
		var b []byte
		if j.runs == nil {
			if zeros == nil {
				zeros = make([]byte, e.opts.chunk)
			}
			b = zeros[:j.n]
		} else {
			if err := <-j.done; err != nil {
				e.free <- j.buf
				return
			}
			b = j.buf[:j.n]
		}
		if e.stopped() {
			return
		}
		if _, err := w.Write(b); err != nil {
			e.fail(fmt.Errorf("writing the output at %#x: %w", j.pos, err))
			return
		}
		if j.runs != nil {
			e.free <- j.buf
		}
	}
}

// writeSparse writes b at off, skipping the 4 KiB blocks of the output
// (aligned to the output's offsets, so a skipped block is a whole block of
// the file system) that are all zeros.
func writeSparse(w io.WriterAt, b []byte, off uint64) error {
	const blk = 4096
	for i := 0; i < len(b); {
		j := min(len(b), i+blk-int((off+uint64(i))%blk))
		if allZero(b[i:j]) {
			i = j
			continue
		}
		// Extend the run over following non-zero blocks.
		k := j
		for k < len(b) {
			next := min(k+blk, len(b))
			if allZero(b[k:next]) {
				break
			}
			k = next
		}
		if _, err := w.WriteAt(b[i:k], int64(off)+int64(i)); err != nil {
			return fmt.Errorf("writing the output at %#x: %w", off+uint64(i), err)
		}
		i = k
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Files returns the names of every file the chain reads: each layer and
// any external data file.
func (c *Chain) Files() []string {
	var out []string
	for _, l := range c.Layers {
		out = append(out, l.Filename())
		if f, ok := l.(*File); ok && f.Header.HasDataFile() && f.Header.DataFile != "" {
			out = append(out, f.Header.DataFile)
		}
	}
	return out
}
