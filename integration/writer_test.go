package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// TestWriterCreate: `qchain create` makes images qemu-img checks clean and
// describes exactly as the same qemu-img create; with the default cluster
// size the files are byte-identical.
func TestWriterCreate(t *testing.T) {
	bin := requireTools(t)
	ctx := context.Background()
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	q.Create("base.qcow2", "1G")
	q.CreateRaw("base.raw", "3M")
	tests := []struct {
		name      string
		ours      []string // after "create"; the image name is appended
		theirs    []string // after "qemu-img create -q -f qcow2"
		size      string
		identical bool
	}{
		{"plain-1G", nil, nil, "1G", true},
		{"plain-odd-size", nil, nil, "1000000", true},
		{"overlay-qcow2", []string{"-b", "base.qcow2", "-F", "qcow2"}, []string{"-b", "base.qcow2", "-F", "qcow2"}, "", true},
		{"overlay-probed", []string{"-b", "base.qcow2"}, []string{"-b", "base.qcow2", "-F", "qcow2"}, "", true},
		{"overlay-raw-bigger", []string{"-b", "base.raw", "-F", "raw"}, []string{"-b", "base.raw", "-F", "raw"}, "8M", true},
		{"cluster-2M", []string{"-o", "cluster_size=2M"}, []string{"-o", "cluster_size=2M"}, "100G", true},
		{"cluster-4k", []string{"-o", "cluster_size=4k"}, []string{"-o", "cluster_size=4k"}, "100G", false},
		{"cluster-512-huge", []string{"-o", "cluster_size=512"}, []string{"-o", "cluster_size=512"}, "100G", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ours, theirs := tt.name+".ours.qcow2", tt.name+".theirs.qcow2"
			args := append(append([]string{"create"}, tt.ours...), ours)
			qargs := append(append([]string{"create", "-q", "-f", "qcow2"}, tt.theirs...), theirs)
			if tt.size != "" {
				args, qargs = append(args, tt.size), append(qargs, tt.size)
			}
			if r := fixtures.Run(ctx, dir, bin, args...); r.ExitCode != 0 || r.Err != nil {
				t.Fatalf("%s: exit %d %v: %s", r.Cmd, r.ExitCode, r.Err, r.Stderr)
			}
			q.Img(qargs...)
			if r := fixtures.Run(ctx, dir, "qemu-img", "check", ours); r.ExitCode != 0 {
				t.Errorf("qemu-img check of our image: exit %d\n%s%s", r.ExitCode, r.Stdout, r.Stderr)
			}
			a, b := mustRead(t, filepath.Join(dir, ours)), mustRead(t, filepath.Join(dir, theirs))
			if tt.identical && !bytes.Equal(a, b) {
				t.Errorf("not byte-identical to qemu-img's (%d vs %d bytes)", len(a), len(b))
			}
			ia := fixtures.Run(ctx, dir, "qemu-img", "info", "--output=json", ours)
			ib := fixtures.Run(ctx, dir, "qemu-img", "info", "--output=json", theirs)
			pa, _ := parseJSON(ia.Stdout)
			pb, _ := parseJSON(ib.Stdout)
			for _, m := range []any{pa, pb} {
				if mm, ok := m.(map[string]any); ok {
					delete(mm, "filename")
					delete(mm, "actual-size")
					// qemu-img 8.0+ describes the host file too: its
					// name, allocation and length, which only the cases
					// marked identical share (their bytes are compared).
					delete(mm, "children")
				}
			}
			if d := jsonDiff(pb, pa); len(d) > 0 {
				t.Errorf("qemu-img info differs from qemu-img's own image: %s", strings.Join(d, "; "))
			}
		})
	}
	// Never overwrite; clear errors on bad input.
	for _, args := range [][]string{
		{"create", "base.qcow2", "1G"},
		{"create", "nosize.qcow2"},
		{"create", "-o", "cluster_size=3000", "x.qcow2", "1G"},
		{"create", "-b", "missing.qcow2", "y.qcow2"},
	} {
		before := mustRead(t, filepath.Join(dir, "base.qcow2"))
		r := fixtures.Run(ctx, dir, bin, args...)
		if r.ExitCode == 0 || strings.Count(strings.TrimSpace(string(r.Stderr)), "\n") != 0 {
			t.Errorf("%s: exit %d, stderr %q; want one error line", r.Cmd, r.ExitCode, r.Stderr)
		}
		if !bytes.Equal(before, mustRead(t, filepath.Join(dir, "base.qcow2"))) {
			t.Errorf("%s changed base.qcow2", r.Cmd)
		}
	}
}

// TestWriterRebase: `qchain rebase -u` writes the same header as
// `qemu-img rebase -u`, and refuses an image qemu holds.
func TestWriterRebase(t *testing.T) {
	bin := requireTools(t)
	ctx := context.Background()
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	q.Create("a.qcow2", "64M")
	q.Create("b.qcow2", "64M")
	q.Overlay("top.qcow2", "a.qcow2", "qcow2", "")
	q.IO("qcow2", filepath.Join(dir, "top.qcow2"), fixtures.Pattern{Off: 0, Len: 1 << 20, Byte: 0x42}.Cmd())
	q.Img("snapshot", "-c", "snap", "top.qcow2")
	// qemu-img moves the bitmap directory whenever it opens an image
	// read-write, so with bitmaps only the meaning can be compared.
	copyFile(t, filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "bm.qcow2"))
	q.Img("bitmap", "--add", "bm.qcow2", "bm0")
	for _, step := range []struct{ backing, format string }{{"b.qcow2", "qcow2"}, {"sub/../b.qcow2", ""}, {"", ""}, {"a.qcow2", "qcow2"}} {
		os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
		ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
		copyFile(t, filepath.Join(dir, "top.qcow2"), ours)
		copyFile(t, filepath.Join(dir, "top.qcow2"), theirs)
		args := []string{"rebase", "-u", "-b", step.backing}
		if step.format != "" {
			args = append(args, "-F", step.format)
		}
		if r := fixtures.Run(ctx, dir, bin, append(args, "ours.qcow2")...); r.ExitCode != 0 {
			t.Fatalf("%s: %s", r.Cmd, r.Stderr)
		}
		qargs := []string{"rebase", "-u", "-b", step.backing}
		if step.backing != "" {
			qargs = append(qargs, "-F", "qcow2")
		}
		q.Img(append(qargs, "theirs.qcow2")...)
		if !bytes.Equal(mustRead(t, ours), mustRead(t, theirs)) {
			t.Errorf("rebase to %q: header differs from qemu-img's", step.backing)
		}
		if r := fixtures.Run(ctx, dir, "qemu-img", "check", "ours.qcow2"); r.ExitCode != 0 {
			t.Errorf("qemu-img check after rebase: %s", r.Stdout)
		}
	}
	infoBefore := fixtures.Run(ctx, dir, "qemu-img", "info", "--output=json", "bm.qcow2")
	if r := fixtures.Run(ctx, dir, bin, "rebase", "-u", "-b", "b.qcow2", "bm.qcow2"); r.ExitCode != 0 {
		t.Fatalf("%s: %s", r.Cmd, r.Stderr)
	}
	infoAfter := fixtures.Run(ctx, dir, "qemu-img", "info", "--output=json", "bm.qcow2")
	pa, _ := parseJSON(infoBefore.Stdout)
	pb, _ := parseJSON(infoAfter.Stdout)
	d := jsonDiff(pa, pb)
	for _, line := range d {
		if !strings.Contains(line, "backing-filename") && !strings.Contains(line, "actual-size") {
			t.Errorf("rebase changed more than the backing file: %s", line)
		}
	}
	if r := fixtures.Run(ctx, dir, "qemu-img", "check", "bm.qcow2"); r.ExitCode != 0 {
		t.Errorf("qemu-img check after rebase of an image with bitmaps: %s", r.Stdout)
	}

	// In use: qemu-io holds the image open; rebase must refuse and change nothing.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	held := exec.CommandContext(cctx, "qemu-io", "-c", "sleep 20000", filepath.Join(dir, "top.qcow2"))
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { held.Process.Kill(); held.Wait() }()
	time.Sleep(500 * time.Millisecond)
	before := mustRead(t, filepath.Join(dir, "top.qcow2"))
	r := fixtures.Run(ctx, dir, bin, "rebase", "-u", "-b", "b.qcow2", "top.qcow2")
	if r.ExitCode == 0 || !strings.Contains(string(r.Stderr), "in use") {
		t.Errorf("rebase of an image qemu holds: exit %d, %q", r.ExitCode, r.Stderr)
	}
	if !bytes.Equal(before, mustRead(t, filepath.Join(dir, "top.qcow2"))) {
		t.Errorf("refused rebase changed the file")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.WriteFile(to, mustRead(t, from), 0o644); err != nil {
		t.Fatal(err)
	}
}
