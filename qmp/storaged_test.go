package qmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStorageDaemonMissingBinary(t *testing.T) {
	for _, bin := range []string{"qchain-no-such-daemon", "/nonexistent/qemu-storage-daemon"} {
		_, err := StartStorageDaemon(context.Background(), StorageDaemonOptions{Binary: bin})
		if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), bin) {
			t.Errorf("%s: %v, want ErrNoBinary naming the binary", bin, err)
		}
	}
}

func TestStorageDaemonStartFailure(t *testing.T) {
	needBins(t, "qemu-storage-daemon")
	_, err := StartStorageDaemon(testCtx(t, 10*time.Second), StorageDaemonOptions{
		Blockdevs: []any{"driver=qcow2,node-name=x,file.driver=file,file.filename=/nonexistent.qcow2"},
	})
	if err == nil || !strings.Contains(err.Error(), "nonexistent.qcow2") {
		t.Fatalf("err %v, want the daemon's message", err)
	}
}

func TestStorageDaemonLifecycle(t *testing.T) {
	needBins(t, "qemu-storage-daemon")
	d, err := StartStorageDaemon(testCtx(t, 10*time.Second), StorageDaemonOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Conn.Greeting().Version.QEMU.Major == 0 {
		t.Errorf("greeting %+v", d.Conn.Greeting())
	}
	if _, own := os.LookupEnv("GLIBC_TUNABLES"); !own {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", d.Pid()))
		// glibc cuts the variable at the first ':' in place once parsed.
		first, _, _ := strings.Cut(DaemonMallocTunables, ":")
		if err != nil || !strings.Contains(string(env), "\x00GLIBC_TUNABLES="+first) {
			t.Errorf("daemon environment lacks the allocator settings (%v): %q", err, env)
		}
	}
	sock := d.SocketPath
	if err := d.Close(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Exited():
	default:
		t.Fatal("daemon still running after Close")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind: %v", sock, err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestDaemonEnv: the allocator settings are added unless the caller's
// environment has its own GLIBC_TUNABLES, and the caller's slice is not
// written to.
func TestDaemonEnv(t *testing.T) {
	base := make([]string, 1, 4)
	base[0] = "PATH=/bin"
	got := DaemonEnv(base)
	if len(got) != 2 || got[1] != "GLIBC_TUNABLES="+DaemonMallocTunables {
		t.Fatalf("DaemonEnv = %q", got)
	}
	if len(base[:cap(base)][1]) != 0 {
		t.Fatal("DaemonEnv wrote into the caller's backing array")
	}
	own := []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=1", "PATH=/bin"}
	if got := DaemonEnv(own); len(got) != 2 || got[0] != own[0] {
		t.Fatalf("DaemonEnv overrode the user's GLIBC_TUNABLES: %q", got)
	}
}

// TestDaemonsOn finds a storage daemon by an image it opens (the image's
// name with a quote and a comma in it), not by another, and no more once
// it has quit.
func TestDaemonsOn(t *testing.T) {
	needBins(t, "qemu-storage-daemon", "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, `a "b",c.qcow2`)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	d, err := StartStorageDaemon(testCtx(t, 10*time.Second), StorageDaemonOptions{Blockdevs: []any{map[string]any{
		"driver": "qcow2", "node-name": "n", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": img}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := DaemonsOn([]string{filepath.Join(dir, "other.qcow2"), img}); !slices.Equal(got, []int{d.cmd.Process.Pid}) {
		t.Errorf("DaemonsOn(the image): %v, want [%d]", got, d.cmd.Process.Pid)
	}
	if got := DaemonsOn([]string{filepath.Join(dir, "other.qcow2")}); len(got) != 0 {
		t.Errorf("DaemonsOn(another image): %v, want none", got)
	}
	if err := d.Close(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := DaemonsOn([]string{img}); len(got) != 0 {
		t.Errorf("DaemonsOn after Close: %v, want none", got)
	}
}
