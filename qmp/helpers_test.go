package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// needBins skips the test unless every program is in PATH.
func needBins(t testing.TB, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
}

// run runs a program, time-boxed, and returns its stdout; it fails the
// test on a non-zero exit.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runExit(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runExit(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// chainFiles is a 3-layer qcow2 chain base <- mid <- top with known data,
// and expected.raw, the guest-visible content of top.
//
//	base: 0x11 over [0, 2M)
//	mid:  0x22 over [512k, 1M)
//	top:  0x33 over [1M, 1M+256k)
type chainFiles struct {
	dir, base, mid, top, expected string
}

const chainSize = 2 << 20

func buildChain(t testing.TB) chainFiles {
	t.Helper()
	needBins(t, "qemu-img", "qemu-io")
	d := t.TempDir()
	c := chainFiles{
		dir:      d,
		base:     filepath.Join(d, "base.qcow2"),
		mid:      filepath.Join(d, "mid.qcow2"),
		top:      filepath.Join(d, "top.qcow2"),
		expected: filepath.Join(d, "expected.raw"),
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", c.base, "2M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 2M", c.base)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", c.base, "-F", "qcow2", c.mid)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512k 512k", c.mid)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", c.mid, "-F", "qcow2", c.top)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 256k", c.top)
	run(t, "qemu-img", "convert", "-O", "raw", c.top, c.expected)
	return c
}

// rawWrite applies a guest write to the expected raw content.
func rawWrite(t testing.TB, raw, cmd string) {
	t.Helper()
	run(t, "qemu-io", "-f", "raw", "-c", cmd, raw)
}

// assertSameContent checks with qemu-img compare that img shows the guest
// the same bytes as raw.
func assertSameContent(t testing.TB, img, raw string) {
	t.Helper()
	out, err := runExit("qemu-img", "compare", "-U", "-F", "raw", img, raw)
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", img, raw, err, out)
	}
}

// backingChain returns the filenames of img's chain from qemu-img info
// --backing-chain, top first.
func backingChain(t testing.TB, img string) []string {
	t.Helper()
	out := run(t, "qemu-img", "info", "-U", "--backing-chain", "--output=json", img)
	var infos []struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", img, err, out)
	}
	var names []string
	for _, i := range infos {
		names = append(names, i.Filename)
	}
	return names
}

func assertChain(t testing.TB, img string, want ...string) {
	t.Helper()
	if got := backingChain(t, img); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("backing chain of %s:\n got %q\nwant %q", img, got, want)
	}
}

// blockdevChain returns -blockdev JSON definitions of the chain with
// explicit node names "base", "mid" and "top".
func blockdevChain(c chainFiles) []map[string]any {
	layer := func(name, file string, backing any) map[string]any {
		return map[string]any{
			"driver": "qcow2", "node-name": name, "backing": backing,
			"file": map[string]any{"driver": "file", "filename": file},
		}
	}
	return []map[string]any{
		layer("base", c.base, nil),
		layer("mid", c.mid, "base"),
		layer("top", c.top, "mid"),
	}
}

// target is a process running block jobs on the chain: a
// qemu-storage-daemon, or qemu-system-x86_64 with -drive or -blockdev.
type target struct {
	kind string
	conn *Conn
	// hmp is a second QMP monitor for human-monitor-command (nil for the
	// storage daemon, which has no HMP).
	hmp *Conn
	// disk names the disk in job commands: the -drive id or the top node.
	disk string
	// sock is the first monitor's socket path.
	sock string
	stop func()
	once sync.Once
}

const (
	kindQSD      = "qsd"
	kindDrive    = "drive"
	kindBlockdev = "blockdev"
)

var targetKinds = []string{kindQSD, kindDrive, kindBlockdev}

func startTarget(t testing.TB, kind string, c chainFiles) *target {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if kind == kindQSD {
		needBins(t, "qemu-storage-daemon")
		var bds []any
		for _, b := range blockdevChain(c) {
			bds = append(bds, b)
		}
		d, err := StartStorageDaemon(ctx, StorageDaemonOptions{Blockdevs: bds})
		if err != nil {
			t.Fatal(err)
		}
		tg := &target{kind: kind, conn: d.Conn, disk: "top", sock: d.SocketPath}
		tg.stop = func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := d.Close(ctx); err != nil {
				t.Errorf("closing storage daemon: %v", err)
			}
		}
		t.Cleanup(tg.quit)
		return tg
	}

	needBins(t, "qemu-system-x86_64")
	dir, err := os.MkdirTemp("", "qchain-qmp-test-")
	if err != nil {
		t.Fatal(err)
	}
	s1, s2 := filepath.Join(dir, "m1.sock"), filepath.Join(dir, "m2.sock")
	args := []string{
		"-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:" + s1 + ",server=on,wait=off",
		"-qmp", "unix:" + s2 + ",server=on,wait=off",
	}
	tg := &target{kind: kind, sock: s1}
	switch kind {
	case kindDrive:
		args = append(args, "-drive", "if=none,id=vda,format=qcow2,file="+c.top)
		tg.disk = "vda"
	case kindBlockdev:
		for _, b := range blockdevChain(c) {
			js, _ := json.Marshal(b)
			args = append(args, "-blockdev", string(js))
		}
		tg.disk = "top"
	default:
		t.Fatalf("unknown target kind %q", kind)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tg.stop = func() {
		if tg.conn != nil {
			qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = tg.conn.Quit(qctx)
			cancel()
			tg.conn.Close()
		}
		if tg.hmp != nil {
			tg.hmp.Close()
		}
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		os.RemoveAll(dir)
	}
	t.Cleanup(tg.quit)

	dial := func(path string) *Conn {
		for {
			conn, err := Dial(ctx, path, Options{})
			if err == nil {
				return conn
			}
			select {
			case <-exited:
				t.Fatalf("qemu exited: %s", stderr.String())
			case <-ctx.Done():
				t.Fatalf("connecting to %s: %v", path, err)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	tg.conn = dial(s1)
	tg.hmp = dial(s2)
	return tg
}

// hmpQemuIO runs HMP `qemu-io DISK "CMD"` on the second monitor.
func (tg *target) hmpQemuIO(t testing.TB, disk, cmd string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := tg.hmp.HumanMonitorCommand(ctx, fmt.Sprintf("qemu-io %s %q", disk, cmd))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(out), "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io %s %q: %s", disk, cmd, out)
	}
}

// quit stops the target so that its images can be read from outside with
// all metadata written.
func (tg *target) quit() { tg.once.Do(tg.stop) }

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func isAborted(err error) bool { return errors.Is(err, ErrJobAborted) }
