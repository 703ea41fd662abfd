package cli

import (
	"strings"
	"testing"
	"time"

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
			if got := chainLine(chain); got != tt.want {
				t.Errorf("chainLine = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPlainFilename(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"path", "/i/a.qcow2", "/i/a.qcow2"},
		{"blockdev-backing", `json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "/i/b.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/i/a.qcow2"}}`, "/i/a.qcow2"},
		{"not-a-file", `json:{"driver": "qcow2", "file": {"driver": "nbd", "server": {}}}`, `json:{"driver": "qcow2", "file": {"driver": "nbd", "server": {}}}`},
		{"bad-json", `json:{`, `json:{`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := plainFilename(tt.in); got != tt.want {
				t.Errorf("plainFilename = %q, want %q", got, tt.want)
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

func TestProgressBar(t *testing.T) {
	var out strings.Builder
	now := time.Unix(1000, 0)
	p := newProgressBar(&out, "pull")
	p.now = func() time.Time { return now }
	p.update(0, 8<<20)
	now = now.Add(2 * time.Second)
	p.update(2<<20, 8<<20)
	p.finish(false)
	lines := strings.Split(out.String(), "\r")
	last := lines[len(lines)-1]
	for _, want := range []string{"pull [=======>", " 25% 2.0 MiB / 8.0 MiB", "1.0 MiB/s", "ETA 6s"} {
		if !strings.Contains(last, want) {
			t.Errorf("progress line %q lacks %q", last, want)
		}
	}
	if !strings.HasSuffix(last, "\n") {
		t.Errorf("finish did not end the line: %q", last)
	}
}

func TestCloseCause(t *testing.T) {
	cause := strings.NewReader("").UnreadByte() // any plain error
	err := &jobEndError{"x", &wrapErr{[]error{qmp.ErrClosed, cause}}}
	if got := closeCause(err); got != cause {
		t.Errorf("closeCause = %v, want %v", got, cause)
	}
}

type wrapErr struct{ errs []error }

func (w *wrapErr) Error() string   { return "wrapped" }
func (w *wrapErr) Unwrap() []error { return w.errs }
