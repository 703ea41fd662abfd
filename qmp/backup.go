package qmp

import "context"

// CmdBlockdevBackup is blockdev-backup, also a transaction action type.
const CmdBlockdevBackup = "blockdev-backup"

// Values of BlockdevBackup.Sync beyond MirrorSync's (QAPI MirrorSyncMode).
const (
	// SyncIncremental copies the clusters the job's bitmap marks dirty;
	// QEMU accepts it only with BitmapModeOnSuccess.
	SyncIncremental = "incremental"
	// SyncBitmap copies the clusters the job's bitmap marks dirty, with
	// any BitmapMode.
	SyncBitmap = "bitmap"
)

// Values of BlockdevBackup.BitmapMode (QAPI BitmapSyncMode).
const (
	// BitmapModeOnSuccess clears the bitmap of what was copied when the
	// job succeeds (QEMU's default).
	BitmapModeOnSuccess = "on-success"
	// BitmapModeNever leaves the bitmap as it is: the caller decides what
	// becomes of it, for example removes it once the backup is stored.
	BitmapModeNever = "never"
	// BitmapModeAlways clears it of what was copied even on failure.
	BitmapModeAlways = "always"
)

// BlockdevBackup is the argument of blockdev-backup: copy Device to the
// already added node Target as it was when the job started (writes to
// Device after that copy the old data to Target first). With
// SyncIncremental or SyncBitmap only the clusters Bitmap marks are
// copied; with BitmapModeNever the set copied is the bitmap's content at
// the start.
type BlockdevBackup struct {
	JobID         string `json:"job-id,omitempty"`
	Device        string `json:"device"`
	Target        string `json:"target"`
	Sync          string `json:"sync"`
	Bitmap        string `json:"bitmap,omitempty"`
	BitmapMode    string `json:"bitmap-mode,omitempty"`
	Speed         int64  `json:"speed,omitempty"`
	Compress      *bool  `json:"compress,omitempty"`
	OnSourceError string `json:"on-source-error,omitempty"`
	OnTargetError string `json:"on-target-error,omitempty"`
	AutoFinalize  *bool  `json:"auto-finalize,omitempty"`
	AutoDismiss   *bool  `json:"auto-dismiss,omitempty"`
}

// Action returns the backup as a transaction action with the runner's
// defaults (auto-dismiss off), for jobs started together with bitmap
// actions; AttachJob then gives a handle on the job.
func (a BlockdevBackup) Action() TransactionAction {
	_, _, args := a.jobStart()
	return TransactionAction{Type: CmdBlockdevBackup, Data: args}
}

func (a BlockdevBackup) jobStart() (string, string, any) {
	a.AutoDismiss = Bool(false)
	return CmdBlockdevBackup, a.JobID, a
}

// BlockdevBackup starts a blockdev-backup job.
func (c *Conn) BlockdevBackup(ctx context.Context, a BlockdevBackup) error {
	return c.Execute(ctx, CmdBlockdevBackup, a, nil)
}
