package backup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// Restore formats.
const (
	FormatQcow2 = "qcow2"
	FormatRaw   = "raw"
)

// RestoreOptions configure Restore. The zero value writes qcow2 images
// with the storage daemon from PATH.
type RestoreOptions struct {
	// Format is FormatQcow2 (default) or FormatRaw.
	Format string
	// StorageDaemon is the qemu-storage-daemon program for qcow2 output.
	StorageDaemon string
}

// Restore writes, for every disk of point n of dir, a standalone image in
// dest (made when missing) named TARGET.qcow2 or TARGET.raw with the
// point's guest content, and returns their paths.
//
// The point's files are checked as Verify checks them: their structure
// and chains first (metadata only), then their sha256 on other
// goroutines while the images are written, so that the sums overlap the
// copy instead of preceding it; a file whose sum differs stops the copy
// and fails the restore, and its output is removed. Raw images are written
// natively (sparse); qcow2 ones by a full backup job from the point's top
// node into a new image on a storage daemon, which writes without a flush
// (each image is synced once, at the end). Existing files are never
// overwritten; each image is written under a temporary name and renamed
// only once every image is complete and every sum checked, so dest gets
// all the images or none (a dest that Restore made is removed again).
func Restore(ctx context.Context, dir string, n int64, dest string, opts RestoreOptions) ([]string, error) {
	format := opts.Format
	if format == "" {
		format = FormatQcow2
	}
	if format != FormatQcow2 && format != FormatRaw {
		return nil, fmt.Errorf("restore: format %q: want qcow2 or raw", format)
	}
	x, err := ReadIndex(dir)
	if err != nil {
		return nil, err
	}
	if x.Merging != 0 {
		return nil, fmt.Errorf("%s: a merge into point %d was interrupted: run `qchain backup merge` on it again first", dir, x.Merging)
	}
	p := x.Point(n)
	if p == nil {
		return nil, fmt.Errorf("%s: no point %d (points: %s)", dir, n, pointList(x))
	}
	var disks []*restoreDisk
	for _, d := range p.Disks {
		files, err := chainFiles(dir, x, n, d.Target)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			if msg := checkPointStructure(dir, x, f.Point, f.Disk); msg != "" {
				return nil, badFile(dir, d.Target, f, msg)
			}
		}
		disks = append(disks, &restoreDisk{target: d.Target, size: d.Size, files: files,
			final: filepath.Join(dest, d.Target+"."+format), tmp: filepath.Join(dest, "."+d.Target+"."+format+".tmp")})
	}
	for _, d := range disks {
		if _, err := os.Lstat(d.final); err == nil {
			return nil, fmt.Errorf("restore: %s exists: restore into another folder", d.final)
		}
	}
	_, statErr := os.Stat(dest)
	if err := os.MkdirAll(dest, 0o700); err != nil {
		return nil, err
	}
	made := errors.Is(statErr, fs.ErrNotExist)
	fail := func(err error) ([]string, error) {
		for _, d := range disks {
			os.Remove(d.tmp)
		}
		if made {
			os.Remove(dest) // only if still empty
		}
		return nil, err
	}
	for _, d := range disks {
		os.Remove(d.tmp)
	}

	// The sums run beside the copy; a mismatch stops the copy.
	copyCtx, stopCopy := context.WithCancel(ctx)
	defer stopCopy()
	sums := checkSums(ctx, dir, disks, stopCopy)
	if format == FormatRaw {
		for _, d := range disks {
			if err = copyCtx.Err(); err == nil {
				err = restoreRaw(dir, d.files[len(d.files)-1].Path, d.tmp)
			}
			if err != nil {
				err = fmt.Errorf("disk %s: %w", d.target, err)
				break
			}
		}
	} else {
		err = restoreQcow2(copyCtx, disks, opts.StorageDaemon)
	}
	// Synced while the sums finish. A failed copy also waits for them:
	// a file that differs explains it best.
	for _, d := range disks {
		if err != nil {
			break
		}
		err = syncFile(d.tmp)
	}
	if bad := sums.wait(); bad != nil {
		return fail(fmt.Errorf("restore of point %d: %w (the output is removed)", n, bad))
	}
	if err != nil {
		return fail(fmt.Errorf("restore of point %d: %w", n, err))
	}
	var out []string
	for _, d := range disks {
		if err := os.Rename(d.tmp, d.final); err != nil {
			for _, f := range out {
				os.Remove(f)
			}
			return fail(fmt.Errorf("restore of point %d disk %s: %w", n, d.target, err))
		}
		out = append(out, d.final)
	}
	return out, syncDir(dest)
}

// restoreDisk is one disk of a restore: the files of its chain, bottom
// first, and its output.
type restoreDisk struct {
	target     string
	size       uint64
	files      []chainFile
	tmp, final string
}

// maxSums bounds the files summed at once: the copy needs the CPUs too,
// and many files read at once from one disk read slower than in turn.
const maxSums = 2

// sumCheck is the checksum check of a restore's files, running.
type sumCheck struct {
	cancel context.CancelFunc
	done   chan struct{}
	bad    error // the first mismatch in chain order, bottom first
}

// checkSums starts checking the sha256 of every file of the disks'
// chains, maxSums at a time, the bottom (largest) files first, and calls
// mismatch at the first file that differs.
func checkSums(ctx context.Context, dir string, disks []*restoreDisk, mismatch func()) *sumCheck {
	ctx, cancel := context.WithCancel(ctx)
	c := &sumCheck{cancel: cancel, done: make(chan struct{})}
	type job struct {
		target string
		f      chainFile
		msg    string
	}
	var jobs []*job
	seen := map[string]bool{}
	for depth := 0; ; depth++ {
		more := false
		for _, d := range disks {
			if depth >= len(d.files) {
				continue
			}
			more = true
			if f := d.files[depth]; !seen[f.Path] {
				seen[f.Path] = true
				jobs = append(jobs, &job{target: d.target, f: f})
			}
		}
		if !more {
			break
		}
	}
	next := make(chan *job)
	var wg sync.WaitGroup
	for range min(maxSums, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				msg := checkSum(ctx, j.f.Path, j.f.Disk.SHA256)
				if ctx.Err() != nil && !strings.HasPrefix(msg, "sha256 ") {
					msg = "" // abandoned
				}
				if j.msg = msg; msg != "" {
					mismatch()
				}
			}
		}()
	}
	go func() {
		for _, j := range jobs {
			next <- j
		}
		close(next)
		wg.Wait()
		for _, j := range jobs {
			if j.msg != "" {
				c.bad = badFile(dir, j.target, j.f, j.msg)
				break
			}
		}
		close(c.done)
	}()
	return c
}

// wait waits for the sums and returns the first mismatch, or nil.
func (c *sumCheck) wait() error {
	<-c.done
	c.cancel()
	return c.bad
}

// restoreRaw writes the guest content of the chain of top as a sparse raw
// file.
func restoreRaw(dir, top, tmp string) error {
	c, err := qcow2.OpenChain(top, qcow2.ChainOptions{Root: dir})
	if err != nil {
		return err
	}
	defer c.Close()
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := qcow2.Export(c, f, true); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// restoreQcow2 writes every disk's image on one storage daemon: the
// point's chain opened read-only, a new qcow2 image of the disk's size as
// the target of a full backup job from the chain's top (blocks that read
// as zeros are written as zero clusters, data as data: the image is
// standalone). The target is opened with cache.no-flush, as Create opens
// its targets: QEMU would otherwise fdatasync at every L2 table it
// allocates; Restore syncs each image once when the jobs are done.
func restoreQcow2(ctx context.Context, disks []*restoreDisk, storageDaemon string) error {
	var blockdevs []any
	for i, d := range disks {
		bds, err := chain.DaemonBlockdevs(d.files[len(d.files)-1].Path, -1)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.target, err)
		}
		prefix := fmt.Sprintf("d%d-", i)
		for _, bd := range bds {
			m, ok := bd.(map[string]any)
			if !ok {
				return fmt.Errorf("internal error: blockdev %T", bd)
			}
			m["node-name"] = prefix + m["node-name"].(string)
			if b, ok := m["backing"].(string); ok {
				m["backing"] = prefix + b
			}
			blockdevs = append(blockdevs, m)
		}
		if err := qcow2.Create(d.tmp, qcow2.CreateOptions{Size: d.size}); err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, daemonStartTimeout)
	defer cancel()
	daemon, err := qmp.StartStorageDaemon(sctx, qmp.StorageDaemonOptions{Binary: storageDaemon, Blockdevs: blockdevs, DieWithParent: true})
	if err != nil {
		return err
	}
	defer func() {
		qctx, cancel := context.WithTimeout(context.Background(), 2*qmp.DefaultQuitTimeout)
		defer cancel()
		daemon.Close(qctx)
	}()
	conn := daemon.Conn
	var jobs []*qmp.Job
	for i, d := range disks {
		abs, err := filepath.Abs(d.tmp)
		if err != nil {
			return err
		}
		noFlush := map[string]any{"no-flush": true}
		node := fmt.Sprintf("t%d", i)
		if err := conn.BlockdevAdd(ctx, map[string]any{
			"driver": "qcow2", "node-name": node, "cache": noFlush,
			"file": map[string]any{"driver": "file", "filename": abs, "cache": noFlush},
		}); err != nil {
			return fmt.Errorf("disk %s: adding %s: %w", d.target, d.tmp, err)
		}
		job, err := qmp.StartJob(ctx, conn, qmp.BlockdevBackup{JobID: qmp.JobID("restore", d.target), Device: fmt.Sprintf("d%d-l0", i), Target: node, Sync: qmp.SyncFull})
		if err != nil {
			return fmt.Errorf("disk %s: starting the copy: %w", d.target, err)
		}
		jobs = append(jobs, job)
	}
	for i, job := range jobs {
		if _, err := job.Wait(ctx, qmp.WaitOptions{}); err != nil {
			return fmt.Errorf("disk %s: copy: %w", disks[i].target, err)
		}
	}
	// Closing the nodes writes the images' metadata out.
	for i, d := range disks {
		if err := conn.BlockdevDel(ctx, fmt.Sprintf("t%d", i)); err != nil {
			return fmt.Errorf("disk %s: closing %s: %w", d.target, d.tmp, err)
		}
	}
	return nil
}

// pointList lists the point numbers of x for messages.
func pointList(x *Index) string {
	if len(x.Points) == 0 {
		return "none"
	}
	s := ""
	for i, p := range x.Points {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprint(p.Point)
	}
	return s
}
