package blockjob

import (
	"context"

	"github.com/qchain/qchain/qmp"
)

// FindDisk returns the disk of the target called name, with its chain:
// live a disk whose backend name, qdev id (or QOM path), top node name or
// active file is name; offline the daemon's only disk (node l0), whatever
// name is. Other packages that act on a disk without a block job (dirty
// bitmaps) resolve it as the job commands do.
func (t *Target) FindDisk(ctx context.Context, name string) (Disk, error) {
	_, d, err := t.disk(ctx, name)
	return d, err
}

// Conn returns the target's QMP connection, for commands outside block
// jobs. It is closed by Close.
func (t *Target) Conn() *qmp.Conn { return t.conn }

// Image returns the absolute path of the image an offline target opened;
// empty for a live target.
func (t *Target) Image() string { return t.image }
