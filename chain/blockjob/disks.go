package blockjob

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qchain/qchain/qmp"
)

// Disks returns every disk of the target with its chain, filenames made
// plain where QEMU describes a file as "json:{...}" (qmp.PlainFilename).
// Offline there is one disk, node l0.
//
// A concluded stream job that qchain started (and was killed before
// dismissing) is dismissed first, with a note, because QEMU 7.2 crashes on
// the node query while it is there; anyone else's is left alone and
// reported.
func (t *Target) Disks(ctx context.Context) ([]qmp.Disk, error) {
	ds, err := qmp.DiskChains(ctx, t.conn)
	if errors.Is(err, qmp.ErrConcludedStream) {
		if derr := t.dismissOwnStreams(ctx); derr != nil {
			return nil, derr
		}
		ds, err = qmp.DiskChains(ctx, t.conn)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	for i := range ds {
		for j := range ds[i].Chain {
			ds[i].Chain[j].Filename = qmp.PlainFilename(ds[i].Chain[j].Filename)
		}
	}
	return ds, nil
}

func (t *Target) dismissOwnStreams(ctx context.Context) error {
	js, err := qmp.ConcludedStreams(ctx, t.conn)
	if err != nil {
		return fmt.Errorf("%s: %w", t, err)
	}
	for _, j := range js {
		if !strings.HasPrefix(j.ID, "qchain-") {
			return fmt.Errorf("%s: stream job %s has concluded and waits to be dismissed; QEMU 7.2 crashes on query-named-block-nodes until then, so qchain stops here: dismiss it (QMP job-dismiss) first", t, j.ID)
		}
		if err := t.conn.JobDismiss(ctx, j.ID); err != nil && !qmp.IsClass(err, qmp.ClassGenericError) {
			return fmt.Errorf("%s: dismissing the finished job %s: %w", t, j.ID, err)
		}
		outcome := "had succeeded"
		if j.Error != "" {
			outcome = "had failed: " + j.Error
		}
		fmt.Fprintf(t.notes, "qchain: note: dismissed the finished job %s, which %s\n", j.ID, outcome)
	}
	return nil
}

// findDisk finds DISK: offline the daemon's only disk (node l0); live a
// disk whose backend name, qdev id (or QOM path), top node name or top
// file is name.
func (t *Target) findDisk(ds []qmp.Disk, name string) (qmp.Disk, error) {
	if t.Offline() {
		for _, d := range ds {
			if d.NodeName == "l0" {
				return d, nil
			}
		}
		return qmp.Disk{}, fmt.Errorf("%s: the storage daemon did not open the image as node l0", t.image)
	}
	if d := matchDisk(ds, name); d != nil {
		return *d, nil
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.Name())
	}
	known := "it has no disks"
	if len(names) > 0 {
		known = "its disks: " + strings.Join(names, ", ")
	}
	return qmp.Disk{}, fmt.Errorf("no disk %q in %s (%s)", name, t, known)
}

// disk reads the target's disks and finds DISK among them.
func (t *Target) disk(ctx context.Context, name string) ([]qmp.Disk, qmp.Disk, error) {
	disks, err := t.Disks(ctx)
	if err != nil {
		return nil, qmp.Disk{}, err
	}
	d, err := t.findDisk(disks, name)
	if err != nil {
		return nil, qmp.Disk{}, err
	}
	return disks, d, nil
}

func matchDisk(ds []qmp.Disk, name string) *qmp.Disk {
	for i, d := range ds {
		if name == d.Device || name == d.NodeName || name == d.QDev || (d.QDev != "" && qmp.QDevID(d.QDev) == name) {
			return &ds[i]
		}
	}
	// A path: the disk whose active layer is that file.
	for i, d := range ds {
		if len(d.Chain) > 0 && sameFile(name, d.Chain[0].Filename) {
			return &ds[i]
		}
	}
	return nil
}

// sameFile reports whether a and b name the same file: equal after
// filepath.Abs, or the same inode.
func sameFile(a, b string) bool {
	if a == "" || b == "" || strings.HasPrefix(b, "json:") {
		return false
	}
	aa, err1 := filepath.Abs(a)
	ba, err2 := filepath.Abs(b)
	if err1 == nil && err2 == nil && aa == ba {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// layerIndex finds FILE (a path, or a node name) in d's chain; flag names
// the option for the message.
func layerIndex(label string, d qmp.Disk, flag, file string) (int, error) {
	for i, l := range d.Chain {
		if file == l.NodeName {
			return i, nil
		}
	}
	for i, l := range d.Chain {
		if sameFile(file, l.Filename) {
			return i, nil
		}
	}
	hint := ""
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		hint = "; no such file"
	}
	return 0, fmt.Errorf("%s: %s %s is not in the chain of %s (%s)%s", label, flag, file, label, ChainLine(d.Chain), hint)
}

// ChainLine draws a chain (top first, as qmp.Disk holds it) from base to
// top, the active layer starred: "base.qcow2 <- snap1.qcow2 <-
// active.qcow2*". Files are named without their folder.
func ChainLine(chain []qmp.ChainLayer) string {
	var b strings.Builder
	for i := len(chain) - 1; i >= 0; i-- {
		b.WriteString(shortName(chain[i].Filename))
		if i > 0 {
			b.WriteString(" <- ")
		}
	}
	if len(chain) > 0 {
		b.WriteString("*")
	}
	return b.String()
}

// shortName is a layer's file name without its folder; QEMU's json:
// descriptions are kept whole.
func shortName(f string) string {
	if strings.HasPrefix(f, "json:") {
		return f
	}
	return filepath.Base(f)
}
