package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qcow2"
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
// point's guest content, and returns their paths. The point's files are
// checked first (Verify's checks). Raw images are written natively
// (sparse); qcow2 ones by pulling the point's chain into a new image on a
// storage daemon. Existing files are never overwritten; each image is
// written under a temporary name and renamed when complete.
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
	chains := map[string][]string{}
	for _, d := range p.Disks {
		files, err := pointChain(dir, x, n, d.Target)
		if err != nil {
			return nil, err
		}
		chains[d.Target] = files
	}
	if err := os.MkdirAll(dest, 0o700); err != nil {
		return nil, err
	}
	var out []string
	for _, d := range p.Disks {
		final := filepath.Join(dest, d.Target+"."+format)
		if _, err := os.Lstat(final); err == nil {
			return out, fmt.Errorf("restore: %s exists: restore into another folder", final)
		}
		tmp := filepath.Join(dest, "."+d.Target+"."+format+".tmp")
		os.Remove(tmp)
		top := chains[d.Target][0]
		if format == FormatRaw {
			err = restoreRaw(dir, top, tmp)
		} else {
			err = restoreQcow2(ctx, top, tmp, opts.StorageDaemon)
		}
		if err == nil {
			err = syncFile(tmp)
		}
		if err == nil {
			err = os.Rename(tmp, final)
		}
		if err != nil {
			os.Remove(tmp)
			return out, fmt.Errorf("restore of point %d disk %s: %w", n, d.Target, err)
		}
		out = append(out, final)
	}
	return out, syncDir(dest)
}

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

// restoreQcow2 makes tmp an overlay of the point's file and pulls the
// whole chain into it: QEMU then drops its backing file.
func restoreQcow2(ctx context.Context, top, tmp, storageDaemon string) error {
	abs, err := filepath.Abs(top)
	if err != nil {
		return err
	}
	if err := qcow2.Create(tmp, qcow2.CreateOptions{BackingFile: abs, BackingFormat: "qcow2"}); err != nil {
		return err
	}
	ex := &chain.Offline{Ctx: ctx, StorageDaemon: storageDaemon}
	if err := ex.Run(chain.Step{Kind: chain.StepPull, File: tmp}); err != nil {
		return err
	}
	f, err := qcow2.Open(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Header.BackingFile != "" {
		return fmt.Errorf("%s still has the backing file %s after the pull", tmp, f.Header.BackingFile)
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
