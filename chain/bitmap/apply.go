package bitmap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// sourceNode is the node name an offline merge gives a source image that
// is not in the image's own chain.
const sourceNode = "qchain-bitmap-source"

// Options say where the bitmaps are. The zero value works on an image
// file with the qemu-storage-daemon found in PATH.
type Options struct {
	// QMP is the monitor socket of a running QEMU. When set, the name
	// given to Apply or List is a disk of that QEMU (as the block-job
	// commands name it) and the bitmaps are those of the disk's active
	// layer.
	QMP string
	// StorageDaemon is the qemu-storage-daemon program for offline
	// actions: a path, or a name looked up in PATH. Empty means
	// qmp.StorageDaemonBinary.
	StorageDaemon string
	// Notes, if set, receives one-line notes about what qchain did on its
	// own. Nil discards them.
	Notes io.Writer
}

// Apply checks req against the bitmaps there are and runs it: offline on
// the image file name through a private qemu-storage-daemon (which writes
// persistent bitmaps into the file when it closes it), or with opts.QMP on
// the disk called name of a running QEMU, whose bitmaps are persistent and
// stored when that QEMU closes the image. It returns the plan it ran.
//
// Nothing is changed when the request is refused: the checks that
// qemu-img bitmap would make half-way through (a bitmap that does not
// exist, one that does, an inconsistent one, an image that cannot hold
// bitmaps, an image in use) are made before the image is opened for
// writing, and the actions run as QMP transactions, all or nothing.
func Apply(ctx context.Context, name string, req Request, opts Options) (*Plan, error) {
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if opts.QMP != "" {
		return applyLive(ctx, name, req, opts)
	}
	return applyOffline(ctx, name, req, opts)
}

// imageBitmaps opens a qcow2 image that is to hold bitmaps and returns
// them as states, with the image's virtual size and cluster size. what
// names the file's role in messages.
func imageBitmaps(name, what string) (states []State, size, clusterSize uint64, err error) {
	f, err := qcow2.Open(name)
	if errors.Is(err, qcow2.ErrNotQcow2) {
		return nil, 0, 0, fmt.Errorf("%s: not a qcow2 image: persistent bitmaps are stored only in qcow2 (version 3) images", name)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, 0, 0, fmt.Errorf("%s: no such %s", name, what)
		}
		return nil, 0, 0, err
	}
	defer f.Close()
	if f.Header.Version < 3 {
		return nil, 0, 0, fmt.Errorf("%s: a qcow2 version 2 image cannot store bitmaps (qemu-img amend -o compat=1.1 upgrades it)", name)
	}
	bms, err := f.Bitmaps()
	if err != nil {
		return nil, 0, 0, err
	}
	for _, b := range bms {
		states = append(states, State{
			Name:         b.Name,
			Granularity:  b.Granularity(),
			Enabled:      b.Flags&qcow2.BitmapAuto != 0,
			Inconsistent: b.Flags&qcow2.BitmapInUse != 0,
		})
	}
	return states, f.VirtualSize(), f.ClusterSize(), nil
}

func applyOffline(ctx context.Context, image string, req Request, opts Options) (*Plan, error) {
	states, size, cs, err := imageBitmaps(image, "image (give --qmp SOCKET for a disk of a running VM)")
	if err != nil {
		return nil, err
	}
	if err := qcow2.CheckNotInUse(image); err != nil {
		if errors.Is(err, qcow2.ErrInUse) {
			return nil, fmt.Errorf("%w (a running VM? give its --qmp SOCKET and the disk's name)", err)
		}
		return nil, err
	}
	var sourceStates []State
	source := req.SourceFile
	if source != "" && sameFile(source, image) {
		source = "" // the image itself: its own bitmaps, its own node
	}
	if source != "" {
		if f := req.SourceFormat; f != "" && f != "qcow2" {
			return nil, fmt.Errorf("-F %s: only qcow2 images hold bitmaps", f)
		}
		var srcSize uint64
		sourceStates, srcSize, _, err = imageBitmaps(source, "source image (-b)")
		if err != nil {
			return nil, err
		}
		if srcSize != size {
			return nil, fmt.Errorf("--merge: %s is %d bytes and %s is %d: bitmaps of disks of different sizes cannot be merged", source, srcSize, image, size)
		}
	}
	planReq := req
	if source == "" {
		planReq.SourceFile = ""
	}
	p, err := NewPlan(planReq, states, sourceStates, DefaultGranularity(cs))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	p.Request = req

	// A killed qchain must not leave the image locked, and the daemon
	// has every persistent bitmap of the image loaded for writing (in
	// use in the file): killed with qchain it would leave them all
	// inconsistent, and leaked clusters. It is sent SIGTERM: it finishes
	// the transaction it runs, if any, stores the bitmaps and quits.
	t, err := blockjob.Open(ctx, blockjob.TargetOptions{Image: image, StorageDaemon: opts.StorageDaemon, Notes: opts.Notes, DieWithParent: true, DeathSignal: syscall.SIGTERM})
	if err != nil {
		return nil, err
	}
	defer t.Close()
	d, err := t.FindDisk(ctx, image)
	if err != nil {
		return nil, err
	}
	srcNode := d.NodeName
	if source != "" {
		if srcNode, err = offlineSourceNode(ctx, t, d, source); err != nil {
			return nil, err
		}
	}
	done, runErr := run(ctx, t.Conn(), p, d.NodeName, srcNode)
	// The daemon stores the bitmaps when it closes the image: only then
	// is the file what the plan says.
	if err := t.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("%s: closing the storage daemon, which stores the bitmaps: %w", image, err)
	}
	if runErr != nil {
		return nil, partial(image, p, done, runErr)
	}
	return p, verifyStored(image, p)
}

// offlineSourceNode returns the daemon's node for the source image: a
// layer of the image's chain is already open (read-only); any other image
// is added read-only, without its backing chain, which bitmaps do not
// need.
func offlineSourceNode(ctx context.Context, t *blockjob.Target, d blockjob.Disk, source string) (string, error) {
	for _, l := range d.Chain {
		if sameFile(source, l.Filename) {
			return l.NodeName, nil
		}
	}
	abs, err := filepath.Abs(source)
	if err != nil {
		return "", err
	}
	err = t.Conn().BlockdevAdd(ctx, map[string]any{
		"driver": "qcow2", "node-name": sourceNode, "read-only": true, "backing": nil,
		"file": map[string]any{"driver": "file", "filename": abs},
	})
	if err != nil {
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return "", fmt.Errorf("%s: opening the source image: %s", source, qe.Desc)
		}
		return "", fmt.Errorf("%s: opening the source image: %w", source, err)
	}
	return sourceNode, nil
}

// run runs the plan's transactions on node, merge sources on srcNode, and
// returns how many transactions took effect.
func run(ctx context.Context, conn *qmp.Conn, p *Plan, node, srcNode string) (int, error) {
	for i, tx := range p.Transactions {
		var actions []qmp.TransactionAction
		for _, a := range tx {
			actions = append(actions, qmpAction(p.Request, a, node, srcNode))
		}
		if err := conn.Transaction(ctx, actions, nil); err != nil {
			var qe *qmp.Error
			if errors.As(err, &qe) {
				return i, fmt.Errorf("QEMU refused %s: %s", describe(tx), qe.Desc)
			}
			return i, err
		}
	}
	return len(p.Transactions), nil
}

// qmpAction is the transaction action of a on the request's bitmap.
func qmpAction(req Request, a Action, node, srcNode string) qmp.TransactionAction {
	one := qmp.BlockDirtyBitmap{Node: node, Name: req.Bitmap}
	switch a.Kind {
	case Add:
		add := qmp.BlockDirtyBitmapAdd{Node: node, Name: req.Bitmap, Granularity: req.Granularity, Persistent: qmp.Bool(true)}
		if req.Disabled {
			add.Disabled = qmp.Bool(true)
		}
		return qmp.TransactionAction{Type: qmp.CmdBitmapAdd, Data: add}
	case Remove:
		return qmp.TransactionAction{Type: qmp.CmdBitmapRemove, Data: one}
	case Clear:
		return qmp.TransactionAction{Type: qmp.CmdBitmapClear, Data: one}
	case Enable:
		return qmp.TransactionAction{Type: qmp.CmdBitmapEnable, Data: one}
	case Disable:
		return qmp.TransactionAction{Type: qmp.CmdBitmapDisable, Data: one}
	}
	return qmp.TransactionAction{Type: qmp.CmdBitmapMerge, Data: qmp.BlockDirtyBitmapMerge{
		Node: node, Target: req.Bitmap, Bitmaps: []qmp.BlockDirtyBitmap{{Node: srcNode, Name: a.Source}}}}
}

// describe names a transaction's actions for a message.
func describe(tx []Action) string {
	s := ""
	for i, a := range tx {
		if i > 0 {
			s += " "
		}
		s += a.String()
	}
	return s
}

// partial says how far a plan got when a transaction failed.
func partial(label string, p *Plan, done int, err error) error {
	if done == 0 {
		return fmt.Errorf("%s: bitmap %s: %w; nothing was changed", label, p.Request.Bitmap, err)
	}
	var applied []Action
	for _, tx := range p.Transactions[:done] {
		applied = append(applied, tx...)
	}
	return fmt.Errorf("%s: bitmap %s: %w; %s had been applied", label, p.Request.Bitmap, err, describe(applied))
}

// verifyStored reads the image again and checks that the plan's bitmap
// is stored as planned, and that QEMU left no bitmap marked in use (it
// clears the flag when it stores the bitmaps).
func verifyStored(image string, p *Plan) error {
	states, _, _, err := imageBitmaps(image, "image")
	if err != nil {
		return fmt.Errorf("reading the bitmaps back: %w", err)
	}
	var got *State
	for i, s := range states {
		if s.Inconsistent {
			return fmt.Errorf("%s: bitmap %s is still marked in use after the storage daemon closed the image: QEMU could not store it", image, s.Name)
		}
		if s.Name == p.Request.Bitmap {
			got = &states[i]
		}
	}
	want := p.Final
	switch {
	case want == nil && got != nil:
		return fmt.Errorf("%s: bitmap %s is still in the image after --remove", image, got.Name)
	case want != nil && got == nil:
		return fmt.Errorf("%s: bitmap %s was not stored in the image", image, want.Name)
	case want != nil && (got.Granularity != want.Granularity || got.Enabled != want.Enabled):
		return fmt.Errorf("%s: bitmap %s was stored with granularity %d, enabled %v; expected %d, %v",
			image, got.Name, got.Granularity, got.Enabled, want.Granularity, want.Enabled)
	}
	return nil
}

// sameFile reports whether a and b name the same existing file.
func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
