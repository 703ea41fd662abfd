package qmp

import (
	"context"
	"errors"
)

// Typed requests for the block and job commands qchain uses, named and
// shaped as in QEMU's QAPI schema (qapi/block-core.json, qapi/job.json,
// qapi/transaction.json). go-qemu's generated raw package is frozen at QEMU
// 2.11 and lacks the job-* commands, node-name arguments and the
// auto-finalize/auto-dismiss flags.
//
// Optional booleans are pointers so that "unset" (QEMU's default) differs
// from false; Bool makes one.

// Bool returns a pointer to b, for optional boolean arguments.
func Bool(b bool) *bool { return &b }

// Values of MirrorSync (QAPI MirrorSyncMode).
const (
	SyncFull = "full" // copy the whole chain
	SyncTop  = "top"  // copy only the top image; the target keeps the backing
	SyncNone = "none" // copy only new writes
)

// Values of NewImageMode (QAPI NewImageMode).
const (
	ModeExisting      = "existing"       // the target exists; QEMU opens it
	ModeAbsolutePaths = "absolute-paths" // QEMU creates the target
)

// BlockStream is the argument of block-stream: copy data from the backing
// chain (down to, not including, Base/BaseNode/Bottom) into Device's top
// image and drop those layers from its chain.
type BlockStream struct {
	JobID          string `json:"job-id,omitempty"`
	Device         string `json:"device"`
	Base           string `json:"base,omitempty"`
	BaseNode       string `json:"base-node,omitempty"`
	Bottom         string `json:"bottom,omitempty"`
	BackingFile    string `json:"backing-file,omitempty"`
	Speed          int64  `json:"speed,omitempty"`
	OnError        string `json:"on-error,omitempty"`
	FilterNodeName string `json:"filter-node-name,omitempty"`
	AutoFinalize   *bool  `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool  `json:"auto-dismiss,omitempty"`
}

// BlockCommit is the argument of block-commit: merge Top/TopNode (default:
// the active layer, which makes it an "active commit" that must be
// completed) down into Base/BaseNode (default: the bottom of the chain).
type BlockCommit struct {
	JobID          string `json:"job-id,omitempty"`
	Device         string `json:"device"`
	BaseNode       string `json:"base-node,omitempty"`
	Base           string `json:"base,omitempty"`
	TopNode        string `json:"top-node,omitempty"`
	Top            string `json:"top,omitempty"`
	BackingFile    string `json:"backing-file,omitempty"`
	Speed          int64  `json:"speed,omitempty"`
	OnError        string `json:"on-error,omitempty"`
	FilterNodeName string `json:"filter-node-name,omitempty"`
	AutoFinalize   *bool  `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool  `json:"auto-dismiss,omitempty"`
}

// DriveMirror is the argument of drive-mirror: copy Device to the image
// file Target (created unless Mode is ModeExisting), then keep it in sync
// until completed (pivot) or cancelled.
type DriveMirror struct {
	JobID         string `json:"job-id,omitempty"`
	Device        string `json:"device"`
	Target        string `json:"target"`
	Format        string `json:"format,omitempty"`
	NodeName      string `json:"node-name,omitempty"`
	Replaces      string `json:"replaces,omitempty"`
	Sync          string `json:"sync"`
	Mode          string `json:"mode,omitempty"`
	Speed         int64  `json:"speed,omitempty"`
	Granularity   uint32 `json:"granularity,omitempty"`
	BufSize       int64  `json:"buf-size,omitempty"`
	OnSourceError string `json:"on-source-error,omitempty"`
	OnTargetError string `json:"on-target-error,omitempty"`
	Unmap         *bool  `json:"unmap,omitempty"`
	CopyMode      string `json:"copy-mode,omitempty"`
	AutoFinalize  *bool  `json:"auto-finalize,omitempty"`
	AutoDismiss   *bool  `json:"auto-dismiss,omitempty"`
}

// BlockdevMirror is the argument of blockdev-mirror: like DriveMirror but
// Target is the node name of an already added node.
type BlockdevMirror struct {
	JobID          string `json:"job-id,omitempty"`
	Device         string `json:"device"`
	Target         string `json:"target"`
	Replaces       string `json:"replaces,omitempty"`
	Sync           string `json:"sync"`
	Speed          int64  `json:"speed,omitempty"`
	Granularity    uint32 `json:"granularity,omitempty"`
	BufSize        int64  `json:"buf-size,omitempty"`
	OnSourceError  string `json:"on-source-error,omitempty"`
	OnTargetError  string `json:"on-target-error,omitempty"`
	FilterNodeName string `json:"filter-node-name,omitempty"`
	CopyMode       string `json:"copy-mode,omitempty"`
	AutoFinalize   *bool  `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool  `json:"auto-dismiss,omitempty"`
}

// BlockdevCreate is the argument of blockdev-create, which starts a job of
// type "create". Options is QAPI's BlockdevCreateOptions (a union keyed by
// "driver"), given as a map.
type BlockdevCreate struct {
	JobID   string         `json:"job-id"`
	Options map[string]any `json:"options"`
}

// BlockdevSnapshot is the argument of blockdev-snapshot: make the already
// added node Overlay (which must have no backing) the new top of Node.
type BlockdevSnapshot struct {
	Node    string `json:"node"`
	Overlay string `json:"overlay"`
}

// BlockdevSnapshotSync is the argument of blockdev-snapshot-sync: create
// (or with ModeExisting open) SnapshotFile and make it the new top of
// Device or NodeName.
type BlockdevSnapshotSync struct {
	Device           string `json:"device,omitempty"`
	NodeName         string `json:"node-name,omitempty"`
	SnapshotFile     string `json:"snapshot-file"`
	SnapshotNodeName string `json:"snapshot-node-name,omitempty"`
	Format           string `json:"format,omitempty"`
	Mode             string `json:"mode,omitempty"`
}

// TransactionAction is one action of a transaction: Type is the QAPI
// action name ("blockdev-snapshot-sync", "blockdev-snapshot", ...) and
// Data its argument, for example a BlockdevSnapshotSync.
type TransactionAction struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// TransactionProperties are the optional properties of a transaction.
type TransactionProperties struct {
	// CompletionMode is "individual" (default) or "grouped".
	CompletionMode string `json:"completion-mode,omitempty"`
}

// Active reports whether the commit is an active commit by its
// arguments: no Top or TopNode, so QEMU commits the active layer and the
// job must be completed. A TopNode that names the active layer also makes
// an active commit in QEMU; callers that know so set AutoFinalize
// themselves.
func (a BlockCommit) Active() bool { return a.Top == "" && a.TopNode == "" }

// BlockStream starts a block-stream job.
func (c *Conn) BlockStream(ctx context.Context, a BlockStream) error {
	return c.Execute(ctx, "block-stream", a, nil)
}

// BlockCommit starts a block-commit job.
func (c *Conn) BlockCommit(ctx context.Context, a BlockCommit) error {
	return c.Execute(ctx, "block-commit", a, nil)
}

// DriveMirror starts a drive-mirror job.
func (c *Conn) DriveMirror(ctx context.Context, a DriveMirror) error {
	return c.Execute(ctx, "drive-mirror", a, nil)
}

// BlockdevMirror starts a blockdev-mirror job.
func (c *Conn) BlockdevMirror(ctx context.Context, a BlockdevMirror) error {
	return c.Execute(ctx, "blockdev-mirror", a, nil)
}

// BlockdevCreate starts a blockdev-create job.
func (c *Conn) BlockdevCreate(ctx context.Context, a BlockdevCreate) error {
	return c.Execute(ctx, "blockdev-create", a, nil)
}

// BlockdevAdd adds a block node; args is QAPI's BlockdevOptions, e.g.
// {"driver": "qcow2", "node-name": "n1", "file": {"driver": "file",
// "filename": "/x.qcow2"}}.
func (c *Conn) BlockdevAdd(ctx context.Context, args map[string]any) error {
	return c.Execute(ctx, "blockdev-add", args, nil)
}

// BlockdevDel removes a node added with blockdev-add.
func (c *Conn) BlockdevDel(ctx context.Context, nodeName string) error {
	return c.Execute(ctx, "blockdev-del", map[string]string{"node-name": nodeName}, nil)
}

// BlockdevSnapshot runs blockdev-snapshot.
func (c *Conn) BlockdevSnapshot(ctx context.Context, a BlockdevSnapshot) error {
	return c.Execute(ctx, "blockdev-snapshot", a, nil)
}

// BlockdevSnapshotSync runs blockdev-snapshot-sync.
func (c *Conn) BlockdevSnapshotSync(ctx context.Context, a BlockdevSnapshotSync) error {
	return c.Execute(ctx, "blockdev-snapshot-sync", a, nil)
}

// Transaction runs actions atomically: all take effect or none does.
// props may be nil.
func (c *Conn) Transaction(ctx context.Context, actions []TransactionAction, props *TransactionProperties) error {
	args := struct {
		Actions    []TransactionAction    `json:"actions"`
		Properties *TransactionProperties `json:"properties,omitempty"`
	}{actions, props}
	return c.Execute(ctx, "transaction", args, nil)
}

func (c *Conn) jobVerb(ctx context.Context, name, id string) error {
	return c.Execute(ctx, name, map[string]string{"id": id}, nil)
}

// JobComplete runs job-complete: a ready mirror or active commit pivots to
// its target and finishes.
func (c *Conn) JobComplete(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-complete", id)
}

// JobFinalize runs job-finalize on a pending job (auto-finalize=false),
// which applies its graph changes.
func (c *Conn) JobFinalize(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-finalize", id)
}

// JobDismiss runs job-dismiss on a concluded job (auto-dismiss=false),
// which removes it from query-jobs.
func (c *Conn) JobDismiss(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-dismiss", id)
}

// JobCancel runs job-cancel. For a ready mirror or active commit this is a
// forced cancel: no pivot, and the target is left as far as it got.
func (c *Conn) JobCancel(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-cancel", id)
}

// BlockJobCancel runs block-job-cancel. With force false, a ready mirror
// finishes without pivoting and leaves the target a consistent copy (what
// virsh calls --finish); job-cancel cannot do that.
func (c *Conn) BlockJobCancel(ctx context.Context, id string, force bool) error {
	args := struct {
		Device string `json:"device"`
		Force  bool   `json:"force,omitempty"`
	}{id, force}
	return c.Execute(ctx, "block-job-cancel", args, nil)
}

// JobPause runs job-pause.
func (c *Conn) JobPause(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-pause", id)
}

// JobResume runs job-resume.
func (c *Conn) JobResume(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-resume", id)
}

// BlockJobSetSpeed runs block-job-set-speed; speed is in bytes per second,
// 0 for unlimited.
func (c *Conn) BlockJobSetSpeed(ctx context.Context, id string, speed int64) error {
	args := struct {
		Device string `json:"device"`
		Speed  int64  `json:"speed"`
	}{id, speed}
	return c.Execute(ctx, "block-job-set-speed", args, nil)
}

// HumanMonitorCommand runs an HMP command line through QMP and returns its
// output, for example "qemu-io vda \"write -P 0x55 0 64k\"".
func (c *Conn) HumanMonitorCommand(ctx context.Context, line string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command",
		map[string]string{"command-line": line}, &out)
	return out, err
}

// Quit runs quit: QEMU (or qemu-storage-daemon) exits. The reply may be
// lost when the process closes the socket first; that is not an error.
func (c *Conn) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if err != nil && IsClosed(err) {
		return nil
	}
	return err
}

// IsClosed reports whether err says the connection closed.
func IsClosed(err error) bool {
	return err != nil && errors.Is(err, ErrClosed)
}
