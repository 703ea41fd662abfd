package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// Limits every qchain run on a malformed image must keep.
const (
	malformedTimeout = 10 * time.Second
	malformedMaxRSS  = 64 << 20 // bytes
)

// malformedBinary returns the qchain binary to test: $QCHAIN_BIN, or one
// built from ./cli/qchain into a folder removed when t ends.
func malformedBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("QCHAIN_BIN"); bin != "" {
		return bin
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the module root")
	}
	root := filepath.Dir(filepath.Dir(file))
	bin := filepath.Join(t.TempDir(), "qchain")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cli/qchain")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building qchain: %v\n%s", err, out)
	}
	return bin
}

// malformedArgs returns the arguments of one command on image; export
// writes to out. -f qcow2 keeps a file without the qcow2 magic from being
// probed as raw.
func malformedArgs(command, image, out string) []string {
	switch command {
	case "map":
		return []string{"map", "--output=json", "-f", "qcow2", image}
	case "export":
		return []string{"export", "-o", out, "-f", "qcow2", image}
	}
	return []string{command, "-f", "qcow2", image}
}

// malformedRun is what one qchain run did.
type malformedRun struct {
	stdout, stderr string
	exit           int // -1: killed or not started
	elapsed        time.Duration
	maxRSS         int64 // bytes
	err            error
}

func runMalformed(bin, dir string, args []string) malformedRun {
	ctx, cancel := context.WithTimeout(context.Background(), malformedTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := malformedRun{stdout: stdout.String(), stderr: stderr.String(), exit: -1, elapsed: time.Since(start)}
	if ctx.Err() != nil {
		r.err = ctx.Err()
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		r.err = err
	}
	if ps := cmd.ProcessState; ps != nil {
		r.exit = ps.ExitCode()
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			r.maxRSS = int64(ru.Maxrss) * 1024 // KiB on Linux
		}
	}
	return r
}

// fileState is what must not change when qchain inspects a file.
type fileState struct {
	data  []byte
	mtime time.Time
}

func snapshotFolder(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]fileState, len(entries))
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = fileState{data: data, mtime: st.ModTime()}
	}
	return m
}

// TestMalformed runs every qchain reading command on every image of the
// malformed corpus: no panic, bounded time and memory, no file touched, and
// the case's command fails with a one-line error naming the problem.
func TestMalformed(t *testing.T) {
	bin := malformedBinary(t)
	for _, c := range fixtures.MalformedCases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			for _, name := range c.Order {
				if err := os.WriteFile(filepath.Join(dir, name), c.Files[name], 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// Older mtimes make a write visible even within the clock's
			// granularity.
			old := time.Now().Add(-time.Hour).Truncate(time.Second)
			for _, name := range c.Order {
				if err := os.Chtimes(filepath.Join(dir, name), old, old); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshotFolder(t, dir)
			image := filepath.Join(dir, c.Image())
			// Export writes outside the case's folder, which must not change.
			out := filepath.Join(t.TempDir(), "export.raw")

			for _, command := range []string{"info", "map", "check", "export"} {
				os.Remove(out)
				args := malformedArgs(command, image, out)
				r := runMalformed(bin, dir, args)
				what := "qchain " + strings.Join(args, " ")
				if r.err != nil {
					t.Errorf("%s: %v after %v\nstderr: %s", what, r.err, r.elapsed.Round(time.Millisecond), r.stderr)
					continue
				}
				if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine ") {
					t.Errorf("%s panicked:\n%s", what, r.stderr)
				}
				if r.exit < 0 {
					t.Errorf("%s was killed (exit %d)", what, r.exit)
				}
				if r.maxRSS > malformedMaxRSS {
					t.Errorf("%s: peak RSS %d MiB, limit %d MiB", what, r.maxRSS>>20, malformedMaxRSS>>20)
				}
				checkMalformedResult(t, c, command, what, r)
				after := snapshotFolder(t, dir)
				for name, b := range before {
					a, ok := after[name]
					switch {
					case !ok:
						t.Errorf("%s removed %s", what, name)
					case !bytes.Equal(a.data, b.data):
						t.Errorf("%s changed the bytes of %s", what, name)
					case !a.mtime.Equal(b.mtime):
						t.Errorf("%s changed the mtime of %s", what, name)
					}
				}
				for name := range after {
					if _, ok := before[name]; !ok {
						t.Errorf("%s created %s", what, name)
					}
				}
			}
		})
	}
}

// checkMalformedResult checks the outcome of command on case c.
func checkMalformedResult(t *testing.T, c fixtures.MalformedCase, command, what string, r malformedRun) {
	t.Helper()
	if command == "info" && c.InfoSucceeds {
		if r.exit != 0 {
			t.Errorf("%s: exit %d, want 0 (info describes images it cannot read)\nstderr: %s", what, r.exit, r.stderr)
		}
		if out := strings.ToLower(r.stdout + r.stderr); !strings.Contains(out, c.InfoWant) {
			t.Errorf("%s: output does not mention %q:\n%s%s", what, c.InfoWant, r.stdout, r.stderr)
		}
		return
	}
	if command != c.Command {
		return
	}
	if r.exit == 0 {
		t.Errorf("%s: exit 0, want failure mentioning %q\nstdout: %s", what, c.Want, r.stdout)
		return
	}
	if c.ExitCode != 0 && r.exit != c.ExitCode {
		t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, r.exit, c.ExitCode, r.stdout, r.stderr)
	}
	if command == "check" {
		// A check report may list several problems, on stdout or stderr.
		if out := strings.ToLower(r.stdout + r.stderr); !strings.Contains(out, c.Want) {
			t.Errorf("%s: report does not mention %q:\nstdout: %s\nstderr: %s", what, c.Want, r.stdout, r.stderr)
		}
		return
	}
	msg := strings.TrimRight(r.stderr, "\n")
	if msg == "" || strings.Contains(msg, "\n") {
		t.Errorf("%s: want a one-line error on stderr, got:\n%s", what, r.stderr)
	}
	if !strings.Contains(strings.ToLower(msg), c.Want) {
		t.Errorf("%s: error does not mention %q: %s", what, c.Want, msg)
	}
}
