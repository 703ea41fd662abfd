package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
	"github.com/urfave/cli/v2"
)

// blockTarget is where a block job runs: the QMP monitor of a running
// QEMU (live), or a private qemu-storage-daemon that holds one image's
// chain as explicit -blockdev nodes l0 (top), l1, ... (offline).
type blockTarget struct {
	conn   *qmp.Conn
	socket string             // live: the --qmp socket
	daemon *qmp.StorageDaemon // offline only
	image  string             // offline: the absolute path of the top image
	notes  io.Writer          // stderr, for notes
}

func (t *blockTarget) offline() bool { return t.daemon != nil }

// openBlockTarget connects to --qmp, or starts a storage daemon on the
// image named by disk when there is no --qmp.
func openBlockTarget(ctx context.Context, c *cli.Context, disk string) (*blockTarget, error) {
	if s := c.String("qmp"); s != "" {
		conn, err := dialQMP(ctx, s)
		if err != nil {
			return nil, err
		}
		return &blockTarget{conn: conn, socket: s, notes: c.App.ErrWriter}, nil
	}
	t, err := startOffline(ctx, disk, c.String("storage-daemon"))
	if err != nil {
		return nil, err
	}
	t.notes = c.App.ErrWriter
	return t, nil
}

// close disconnects, or quits the storage daemon (a job still running in
// it is cancelled by its exit).
func (t *blockTarget) close() error {
	if t.daemon != nil {
		return t.daemon.Close(context.Background())
	}
	return t.conn.Close()
}

// where names the target in messages.
func (t *blockTarget) where() string {
	if t.offline() {
		return "qemu-storage-daemon on " + t.image
	}
	return "QEMU at " + t.socket
}

// offlineBlockdevs describes image's chain for a storage daemon: one
// format node per layer with its "file" child, absolute filenames, node
// l0 the top, each qcow2 layer's backing the next node and the base's
// backing explicitly none (so QEMU opens exactly the files qchain read),
// the backing layers read-only.
func offlineBlockdevs(image string) ([]any, error) {
	ch, err := qcow2.OpenChain(image, qcow2.ChainOptions{})
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	n := len(ch.Layers)
	devs := make([]any, 0, n)
	for d := n - 1; d >= 0; d-- { // base first: backing nodes must exist
		l := ch.Layers[d]
		abs, err := filepath.Abs(l.Filename())
		if err != nil {
			return nil, err
		}
		bd := map[string]any{
			"driver":    l.Format(),
			"node-name": fmt.Sprintf("l%d", d),
			"file":      map[string]any{"driver": "file", "filename": abs},
		}
		if d > 0 {
			// Backing layers read-only, as QEMU opens them for -drive:
			// jobs reopen what they write (a commit's base), and a copy
			// can open the same files again as its target's backing.
			bd["read-only"] = true
		}
		if l.Format() == "qcow2" {
			if d == n-1 {
				bd["backing"] = nil
			} else {
				bd["backing"] = fmt.Sprintf("l%d", d+1)
			}
		}
		devs = append(devs, bd)
	}
	return devs, nil
}

// startOffline opens image's chain in a private qemu-storage-daemon.
func startOffline(ctx context.Context, image, binary string) (*blockTarget, error) {
	abs, err := filepath.Abs(image)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(abs); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such image (give --qmp SOCKET for a disk of a running VM)", image)
		}
		return nil, err
	}
	devs, err := offlineBlockdevs(abs)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, daemonStartTimeout)
	defer cancel()
	d, err := qmp.StartStorageDaemon(sctx, qmp.StorageDaemonOptions{Binary: binary, Blockdevs: devs})
	if err != nil {
		if errors.Is(err, qmp.ErrNoBinary) {
			return nil, fmt.Errorf("%s: offline jobs need qemu-storage-daemon, and %q was not found (install Debian's qemu-system-common, give --storage-daemon BINARY, or --qmp SOCKET for a running VM)", image, binary)
		}
		if strings.Contains(err.Error(), "lock") {
			return nil, fmt.Errorf("%s: in use by another process (a running VM? give its --qmp SOCKET): %w", image, err)
		}
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	return &blockTarget{conn: d.Conn, daemon: d, image: abs}, nil
}

// disks returns every disk of the target with its chain. A concluded
// stream job that qchain started (and was killed before dismissing) is
// dismissed first, with a note, because QEMU 7.2 crashes on the node query
// while it is there; anyone else's is left alone and reported.
func (t *blockTarget) disks(ctx context.Context) ([]qmp.Disk, error) {
	ds, err := qmp.DiskChains(ctx, t.conn)
	if errors.Is(err, qmp.ErrConcludedStream) {
		if derr := t.dismissOwnStreams(ctx); derr != nil {
			return nil, derr
		}
		ds, err = qmp.DiskChains(ctx, t.conn)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.where(), err)
	}
	for i := range ds {
		for j := range ds[i].Chain {
			ds[i].Chain[j].Filename = plainFilename(ds[i].Chain[j].Filename)
		}
	}
	return ds, nil
}

// plainFilename is qmp.PlainFilename.
func plainFilename(name string) string { return qmp.PlainFilename(name) }

func (t *blockTarget) dismissOwnStreams(ctx context.Context) error {
	js, err := qmp.ConcludedStreams(ctx, t.conn)
	if err != nil {
		return fmt.Errorf("%s: %w", t.where(), err)
	}
	for _, j := range js {
		if !strings.HasPrefix(j.ID, "qchain-") {
			return fmt.Errorf("%s: stream job %s has concluded and waits to be dismissed; QEMU 7.2 crashes on query-named-block-nodes until then, so qchain stops here: dismiss it (QMP job-dismiss) first", t.where(), j.ID)
		}
		if err := t.conn.JobDismiss(ctx, j.ID); err != nil && !qmp.IsClass(err, qmp.ClassGenericError) {
			return fmt.Errorf("%s: dismissing the finished job %s: %w", t.where(), j.ID, err)
		}
		outcome := "had succeeded"
		if j.Error != "" {
			outcome = "had failed: " + j.Error
		}
		fmt.Fprintf(t.notes, "qchain: note: dismissed the finished job %s, which %s\n", j.ID, outcome)
	}
	return nil
}

// disk finds DISK: offline the daemon's only disk (node l0); live a disk
// whose backend name, qdev id (or QOM path), top node name or top file is
// name.
func (t *blockTarget) disk(ds []qmp.Disk, name string) (qmp.Disk, error) {
	if t.offline() {
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
	return qmp.Disk{}, fmt.Errorf("no disk %q in %s (%s)", name, t.where(), known)
}

func matchDisk(ds []qmp.Disk, name string) *qmp.Disk {
	for i, d := range ds {
		if name == d.Device || name == d.NodeName || name == d.QDev || (d.QDev != "" && qdevID(d.QDev) == name) {
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

// qdevID returns the device id in a QOM path such as
// /machine/peripheral/virtio0/virtio-backend.
func qdevID(path string) string {
	const prefix = "/machine/peripheral/"
	if !strings.HasPrefix(path, prefix) {
		return path
	}
	id, _, _ := strings.Cut(strings.TrimPrefix(path, prefix), "/")
	return id
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
	return 0, fmt.Errorf("%s: %s %s is not in the chain of %s (%s)%s", label, flag, file, label, chainLine(d.Chain), hint)
}

// chainLine draws a chain from base to top, the active layer starred:
// "base.qcow2 <- snap1.qcow2 <- active.qcow2*".
func chainLine(chain []qmp.ChainLayer) string {
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

// diskLabel names the disk in messages: its name live, the image offline.
func (t *blockTarget) diskLabel(d qmp.Disk) string {
	if t.offline() {
		return t.image
	}
	return d.Name()
}
