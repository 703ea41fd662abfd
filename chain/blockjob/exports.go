package blockjob

import (
	"context"
	"errors"
	"fmt"

	"github.com/qchain/qchain/qmp"
)

// checkExports refuses to switch disk d to a job's target (what says which
// switch, for the message) while a block export on one of its nodes can
// write to it, or may: QEMU 7.2 and 10.0 lose writes that clients of an
// export make while a job switches the disk (qmp.ExportError says how).
// Offline there is no export, and force skips the check. The error
// wraps qmp.ErrWritableExport.
func (t *Target) checkExports(ctx context.Context, label, what string, d qmp.Disk, force bool) error {
	if t.Offline() || force {
		return nil
	}
	err := qmp.CheckExports(ctx, t.conn, d)
	var ee *qmp.ExportError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		return fmt.Errorf("%s: refusing to %s: %w, and QEMU loses writes that an export's clients make while a job switches the disk; remove the export (QMP block-export-del) or add --force", label, what, err)
	}
	return fmt.Errorf("%s: reading the block exports of %s: %w", label, t, err)
}
