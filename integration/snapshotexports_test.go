package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/qmp"
)

// TestSnapshotCLIExports: deleting a snapshot of a running VM commits or
// pulls on its disks, so it is refused up front while a block export can
// write to one of them (the error names that export, not a read-only one
// on another disk; nothing changes, no journal is left), rotate too;
// --force-export deletes anyway, and with only a read-only export left a
// delete runs.
func TestSnapshotCLIExports(t *testing.T) {
	e := newSCEnv(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	sockDir, err := os.MkdirTemp("", "qcs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock, mon := filepath.Join(sockDir, "qmp"), filepath.Join(sockDir, "mon")
	e.define("vm1", "--qmp", sock)
	e.ok("snapshot", "create", "vm1", "s1") // offline: the socket does not answer
	e.write("vm1", 0x11)
	e.ok("snapshot", "create", "vm1", "s2")
	e.write("vm1", 0x12)
	e.ok("snapshot", "create", "vm1", "s3")
	e.write("vm1", 0x13)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:" + sock + ",server=on,wait=off", "-qmp", "unix:" + mon + ",server=on,wait=off"}
	for _, d := range e.show("vm1").Disks {
		args = append(args, "-drive", "if=none,id="+d.Target+",format=qcow2,file="+d.Active)
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }() // the qemu this test started
	scWaitQMP(t, sock, exited)
	scWaitQMP(t, mon, exited)
	c, err := qmp.Dial(ctx, mon, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	blocks, err := c.QueryBlock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	top := make(map[string]string)
	for _, b := range blocks {
		if b.Inserted != nil {
			top[b.Device] = b.Inserted.NodeName
		}
	}
	if err := c.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": filepath.Join(sockDir, "nbd")}}}, nil); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		id, disk string
		writable bool
	}{{"backup-vda", "vda", true}, {"ro-vdb", "vdb", false}} {
		if err := c.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": x.id, "name": x.id, "node-name": top[x.disk], "writable": x.writable}, nil); err != nil {
			t.Fatal(err)
		}
	}

	for _, merge := range []string{"commit", "pull"} {
		msg := e.fails([]string{"vm1", "vda", "s3", `"backup-vda"`, "writable", "--force-export"},
			"snapshot", "delete", "--merge="+merge, "vm1", "s3")
		t.Logf("delete --merge=%s: %s", merge, msg)
		if strings.Contains(msg, "ro-vdb") {
			t.Errorf("the read-only export is named: %s", msg)
		}
	}
	e.fails([]string{"vm1", `"backup-vda"`, "--force-export"}, "snapshot", "rotate", "--keep", "1", "vm1")
	if jobs, err := c.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("jobs after the refusals: %+v %v", jobs, err)
	}
	if _, err := os.Stat(filepath.Join(e.state, "vms", "vm1", "journal.json")); !os.IsNotExist(err) {
		t.Errorf("a journal after the refusals: %v", err)
	}

	e.ok("snapshot", "delete", "--force-export", "--merge=commit", "vm1", "s3")
	if err := c.Execute(ctx, "block-export-del", map[string]any{"id": "backup-vda"}, nil); err != nil {
		t.Fatal(err)
	}
	for {
		exps, err := c.QueryBlockExports(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(exps, func(x qmp.BlockExport) bool { return x.ID == "backup-vda" }) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.ok("snapshot", "delete", "vm1", "s2") // only vdb's read-only export left
	out := e.ok("snapshot", "list", "vm1")
	if strings.Contains(out, "s2") || strings.Contains(out, "s3") || !strings.Contains(out, "s1") {
		t.Errorf("snapshot list after the deletes:\n%s", out)
	}
}
