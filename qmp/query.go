package qmp

import (
	"context"
	"encoding/json"
)

// Job statuses (QAPI JobStatus), in the order a job normally passes them.
const (
	JobCreated   = "created"
	JobRunning   = "running"
	JobPaused    = "paused"
	JobReady     = "ready"
	JobStandby   = "standby" // paused while ready
	JobWaiting   = "waiting" // done, waiting for the rest of its transaction
	JobPending   = "pending" // waiting for job-finalize (auto-finalize=false)
	JobAborting  = "aborting"
	JobConcluded = "concluded" // waiting for job-dismiss (auto-dismiss=false)
	JobNull      = "null"
)

// JobInfo is one element of query-jobs.
type JobInfo struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
	// CurrentProgress and TotalProgress are in arbitrary units (bytes for
	// block jobs); TotalProgress may grow while the job runs.
	CurrentProgress int64 `json:"current-progress"`
	TotalProgress   int64 `json:"total-progress"`
	// Error is set on a concluded job that failed or was cancelled.
	Error string `json:"error,omitempty"`
}

// BlockJobInfo is one element of query-block-jobs. Device is the job id.
type BlockJobInfo struct {
	Type         string `json:"type"`
	Device       string `json:"device"`
	Len          int64  `json:"len"`
	Offset       int64  `json:"offset"`
	Busy         bool   `json:"busy"`
	Paused       bool   `json:"paused"`
	Speed        int64  `json:"speed"`
	IOStatus     string `json:"io-status"`
	Ready        bool   `json:"ready"`
	Status       string `json:"status"`
	AutoFinalize bool   `json:"auto-finalize"`
	AutoDismiss  bool   `json:"auto-dismiss"`
	Error        string `json:"error,omitempty"`
}

// ImageInfo is QAPI's ImageInfo as far as qchain needs it; BackingImage is
// only filled where QEMU nests the chain (query-block, and
// query-named-block-nodes without flat).
type ImageInfo struct {
	Filename              string          `json:"filename"`
	Format                string          `json:"format"`
	VirtualSize           int64           `json:"virtual-size"`
	ActualSize            int64           `json:"actual-size,omitempty"`
	ClusterSize           int64           `json:"cluster-size,omitempty"`
	DirtyFlag             bool            `json:"dirty-flag,omitempty"`
	BackingFilename       string          `json:"backing-filename,omitempty"`
	FullBackingFilename   string          `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string          `json:"backing-filename-format,omitempty"`
	BackingImage          *ImageInfo      `json:"backing-image,omitempty"`
	FormatSpecific        json.RawMessage `json:"format-specific,omitempty"`
}

// BlockDeviceInfo is QAPI's BlockDeviceInfo: one node, as listed by
// query-named-block-nodes and in query-block's "inserted".
type BlockDeviceInfo struct {
	// File is the node's filename: a path, or a "json:{...}" description.
	File             string    `json:"file"`
	NodeName         string    `json:"node-name"`
	ReadOnly         bool      `json:"ro"`
	Driver           string    `json:"drv"`
	BackingFile      string    `json:"backing_file,omitempty"`
	BackingFileDepth int       `json:"backing_file_depth"`
	Encrypted        bool      `json:"encrypted"`
	DetectZeroes     string    `json:"detect_zeroes"`
	Image            ImageInfo `json:"image"`
}

// BlockInfo is one element of query-block: a block backend (a -drive, or
// a device's backend).
type BlockInfo struct {
	// Device is the backend name (the -drive id); empty for anonymous
	// backends of -device ... drive=NODE.
	Device string `json:"device"`
	// QDev is the device's qdev id or QOM path, when attached to one.
	QDev      string           `json:"qdev,omitempty"`
	Type      string           `json:"type"`
	Removable bool             `json:"removable"`
	Locked    bool             `json:"locked"`
	Inserted  *BlockDeviceInfo `json:"inserted,omitempty"`
}

// QueryJobs runs query-jobs.
func (c *Conn) QueryJobs(ctx context.Context) ([]JobInfo, error) {
	var out []JobInfo
	err := c.Execute(ctx, "query-jobs", nil, &out)
	return out, err
}

// QueryBlockJobs runs query-block-jobs.
func (c *Conn) QueryBlockJobs(ctx context.Context) ([]BlockJobInfo, error) {
	var out []BlockJobInfo
	err := c.Execute(ctx, "query-block-jobs", nil, &out)
	return out, err
}

// QueryBlock runs query-block.
func (c *Conn) QueryBlock(ctx context.Context) ([]BlockInfo, error) {
	var out []BlockInfo
	err := c.Execute(ctx, "query-block", nil, &out)
	return out, err
}

// QueryNamedBlockNodes runs query-named-block-nodes with flat=true (each
// node's image without the nested backing chain, which would make the
// reply quadratic in the chain length).
func (c *Conn) QueryNamedBlockNodes(ctx context.Context) ([]BlockDeviceInfo, error) {
	var out []BlockDeviceInfo
	err := c.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &out)
	return out, err
}

// BlockGraph is the reply of x-debug-query-block-graph: every node and
// backend, and every parent-child edge with its role name.
type BlockGraph struct {
	Nodes []BlockGraphNode `json:"nodes"`
	Edges []BlockGraphEdge `json:"edges"`
}

// BlockGraphNode is a node of BlockGraph. Type is "block-backend",
// "block-job" or "block-driver"; Name is the node name for block drivers,
// and for a block backend its name (a -drive id), a guest device's QOM
// path, or "" for an anonymous one (a block export's, a job's).
type BlockGraphNode struct {
	ID   int64  `json:"id"`
	Type string `json:"type"`
	Name string `json:"name"`
}

// BlockGraphEdge is an edge of BlockGraph. Name is the child's role:
// "backing", "file", "root", "target", ...
type BlockGraphEdge struct {
	Parent int64  `json:"parent"`
	Child  int64  `json:"child"`
	Name   string `json:"name"`
	// Perm and SharedPerm are the permissions the parent holds on the
	// child and those it lets other parents hold: "consistent-read",
	// "write", "write-unchanged", "resize" (and "graph-mod" before QEMU
	// 8.0).
	Perm       []string `json:"perm"`
	SharedPerm []string `json:"shared-perm"`
}

// QueryBlockGraph runs x-debug-query-block-graph. It is an unstable
// debugging command; DiskChains uses it when present because it is the
// only command that names a node's backing child exactly.
func (c *Conn) QueryBlockGraph(ctx context.Context) (*BlockGraph, error) {
	var out BlockGraph
	if err := c.Execute(ctx, "x-debug-query-block-graph", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
