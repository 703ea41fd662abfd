package blockjob

import (
	"errors"
	"strings"
	"testing"

	"github.com/qchain/qchain/qmp"
)

func TestChainLine(t *testing.T) {
	tests := []struct {
		name  string
		files []string // top first
		want  string
	}{
		{"one", []string{"/i/base.qcow2"}, "base.qcow2*"},
		{"three", []string{"/i/active.qcow2", "/i/snap1.qcow2", "/j/base.raw"}, "base.raw <- snap1.qcow2 <- active.qcow2*"},
		{"empty", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var chain []qmp.ChainLayer
			for _, f := range tt.files {
				chain = append(chain, qmp.ChainLayer{Filename: f})
			}
			if got := ChainLine(chain); got != tt.want {
				t.Errorf("ChainLine = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPlainFilename covers the names Disks reports: QEMU's json:
// descriptions of plain files become their paths.
func TestPlainFilename(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"path", "/i/a.qcow2", "/i/a.qcow2"},
		{"blockdev-backing", `json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "/i/b.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/i/a.qcow2"}}`, "/i/a.qcow2"},
		{"not-a-file", `json:{"driver": "qcow2", "file": {"driver": "nbd", "server": {}}}`, `json:{"driver": "qcow2", "file": {"driver": "nbd", "server": {}}}`},
		{"bad-json", `json:{`, `json:{`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := qmp.PlainFilename(tt.in); got != tt.want {
				t.Errorf("PlainFilename = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMatchDisk(t *testing.T) {
	disks := []qmp.Disk{
		{Device: "vda", QDev: "/machine/peripheral/virtio0/virtio-backend", NodeName: "#block1", Chain: []qmp.ChainLayer{{Filename: "/i/a.qcow2"}}},
		{NodeName: "top", Chain: []qmp.ChainLayer{{Filename: "/i/b.qcow2"}}},
	}
	tests := []struct{ name, arg, want string }{
		{"device", "vda", "vda"},
		{"qdev-path", "/machine/peripheral/virtio0/virtio-backend", "vda"},
		{"qdev-id", "virtio0", "vda"},
		{"auto-node", "#block1", "vda"},
		{"node", "top", "top"},
		{"top-file", "/i/b.qcow2", "top"},
		{"unknown", "vdz", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if d := matchDisk(disks, tt.arg); d != nil {
				got = d.Name()
			}
			if got != tt.want {
				t.Errorf("matchDisk(%q) = %q, want %q", tt.arg, got, tt.want)
			}
		})
	}
}

func TestCloseCause(t *testing.T) {
	cause := strings.NewReader("").UnreadByte() // any plain error
	err := &EndError{msg: "x", cause: &wrapErr{[]error{qmp.ErrClosed, cause}}}
	if got := closeCause(err); got != cause {
		t.Errorf("closeCause = %v, want %v", got, cause)
	}
}

// TestEndErrorIs: only an interrupted wait matches ErrInterrupted, and
// the cause stays reachable either way.
func TestEndErrorIs(t *testing.T) {
	tests := []struct {
		name        string
		interrupted bool
	}{
		{"interrupted", true},
		{"timeout", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := error(&EndError{msg: "x", cause: qmp.ErrJobAborted, interrupted: tt.interrupted})
			if got := errors.Is(err, ErrInterrupted); got != tt.interrupted {
				t.Errorf("errors.Is(err, ErrInterrupted) = %v, want %v", got, tt.interrupted)
			}
			if !errors.Is(err, qmp.ErrJobAborted) {
				t.Errorf("the cause qmp.ErrJobAborted is lost")
			}
		})
	}
}

type wrapErr struct{ errs []error }

func (w *wrapErr) Error() string   { return "wrapped" }
func (w *wrapErr) Unwrap() []error { return w.errs }
