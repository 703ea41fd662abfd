package qmp

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// startMachineNone starts a qemu-system-x86_64 with no machine and a QMP
// socket, and returns a connection to it.
func startMachineNone(t *testing.T, extra ...string) *Conn {
	t.Helper()
	needBins(t, "qemu-system-x86_64")
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp")
	args := append([]string{"-machine", "none", "-nodefaults", "-display", "none", "-qmp", "unix:" + sock + ",server=on,wait=off"}, extra...)
	cmd := exec.Command("qemu-system-x86_64", args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx := testCtx(t, 30*time.Second)
	for {
		c, err := Dial(ctx, sock, Options{})
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMigrateToFd saves a (guestless) VM's state through a descriptor
// passed with getfd, which needs SCM_RIGHTS over the QMP socket, and loads
// it back in a second QEMU started with -incoming defer.
func TestMigrateToFd(t *testing.T) {
	c := startMachineNone(t)
	ctx := testCtx(t, time.Minute)
	path := filepath.Join(t.TempDir(), "state")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.GetFd(ctx, "state", f); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Migrate(ctx, "fd:state"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitMigration(ctx, MigrationCompleted); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("QEVM")) {
		t.Fatalf("state file starts with %q, want QEVM", b[:min(len(b), 8)])
	}
	st, err := c.QueryStatus(ctx)
	if err != nil || st.Status != "postmigrate" {
		t.Fatalf("status %+v, %v; want postmigrate", st, err)
	}

	in := startMachineNone(t, "-incoming", "defer")
	rf, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	if err := in.GetFd(ctx, "state", rf); err != nil {
		t.Fatal(err)
	}
	if err := in.MigrateIncoming(ctx, "fd:state"); err != nil {
		t.Fatal(err)
	}
	if _, err := in.WaitMigration(ctx, MigrationCompleted); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateTruncated loads a state file cut short: the migration fails
// with a *MigrationError (or QEMU exits), never hangs.
func TestMigrateTruncated(t *testing.T) {
	in := startMachineNone(t, "-incoming", "defer")
	ctx := testCtx(t, time.Minute)
	path := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(path, []byte("QEVM\x00\x00\x00\x03"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := in.GetFd(ctx, "state", f); err != nil {
		t.Fatal(err)
	}
	if err := in.MigrateIncoming(ctx, "fd:state"); err != nil {
		t.Fatal(err)
	}
	_, err = in.WaitMigration(ctx, MigrationCompleted)
	if err == nil {
		t.Fatal("a truncated state loaded")
	}
	t.Logf("as expected: %v", err)
}

// TestMigrationEvents checks what WaitMigration relies on to wake
// promptly: with CapEvents on, QEMU sends a MIGRATION event for each
// status, completed included.
func TestMigrationEvents(t *testing.T) {
	c := startMachineNone(t)
	ctx := testCtx(t, time.Minute)
	if err := c.MigrateSetCapabilities(ctx, []MigrationCapability{{Capability: CapEvents, State: true}}); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe(ctx, "MIGRATION")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.GetFd(ctx, "state", f); err != nil {
		t.Fatal(err)
	}
	if err := c.Migrate(ctx, "fd:state"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitMigration(ctx, MigrationCompleted); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for len(seen) == 0 || seen[len(seen)-1] != MigrationCompleted {
		select {
		case ev := <-sub.C():
			var d struct {
				Status string `json:"status"`
			}
			if err := ev.DecodeData(&d); err != nil {
				t.Fatal(err)
			}
			seen = append(seen, d.Status)
		case <-ctx.Done():
			t.Fatalf("no MIGRATION event with status completed; saw %v", seen)
		}
	}
	t.Logf("events: %v", seen)
}
