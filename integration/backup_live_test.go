package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/qmp"
)

// bkQemu is the VM's qemu (machine none, its disks as -drive backends)
// with a second QMP monitor for the test.
type bkQemu struct {
	cmd    *exec.Cmd
	exited chan struct{}
	mon    *qmp.Conn
	sock   string // the VM's QMP socket (qchain's)
}

// newLiveBKEnv is newBKEnvSized with the VM running: a qemu on its disks
// with its QMP socket in a short temporary folder.
func newLiveBKEnv(t *testing.T, mib int) (*bkEnv, *bkQemu) {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "qbk-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "qmp")
	e := newBKEnvSized(t, mib, "--qmp", sock)
	return e, startBKQemu(t, e, sock)
}

func startBKQemu(t *testing.T, e *bkEnv, sock string) *bkQemu {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	var drives [][2]string
	for _, d := range e.show(e.vm).Disks {
		drives = append(drives, [2]string{d.Target, d.Active})
	}
	return startDrivesQemu(t, sock, drives)
}

// startDrivesQemu starts a qemu (-machine none) with a -drive per {target,
// active image} of drives and QMP on sock (for qchain) and on sock-test
// (for the test), and waits until both answer.
func startDrivesQemu(t *testing.T, sock string, drives [][2]string) *bkQemu {
	t.Helper()
	testSock := sock + "-test"
	args := []string{"-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:" + sock + ",server=on,wait=off", "-qmp", "unix:" + testSock + ",server=on,wait=off"}
	for _, d := range drives {
		args = append(args, "-drive", "if=none,id="+d[0]+",format=qcow2,file="+d[1])
	}
	q := &bkQemu{cmd: exec.Command("qemu-system-x86_64", args...), exited: make(chan struct{}), sock: sock}
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { q.cmd.Wait(); close(q.exited) }()
	t.Cleanup(func() { q.cmd.Process.Kill(); <-q.exited }) // the qemu this test started
	scWaitQMP(t, testSock, q.exited)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if q.mon, err = qmp.Dial(ctx, testSock, qmp.Options{}); err != nil {
		t.Fatal(err)
	}
	scWaitQMP(t, sock, q.exited)
	return q
}

// hmp runs HMP qemu-io commands on a disk, then flushes it so that the
// image read from outside is current.
func (q *bkQemu) io(t *testing.T, disk string, cmds ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range append(cmds, "flush") {
		line := fmt.Sprintf("qemu-io %s %q", disk, c)
		out, err := q.mon.HumanMonitorCommand(ctx, line)
		if err != nil || strings.Contains(out, "rror") || strings.Contains(out, "failed") {
			t.Fatalf("%s: %v %s", line, err, out)
		}
	}
}

func (q *bkQemu) quit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q.mon.Quit(ctx)
	select {
	case <-q.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("qemu did not quit")
	}
}

// TestBackupLive takes points of a running VM (HMP qemu-io writes between
// them and during one), checks that a point is the content at its start,
// then goes on offline after qemu quits, and after qemu is killed.
func TestBackupLive(t *testing.T) {
	e, q := newLiveBKEnv(t, 64)

	p1, _ := e.backup()
	if p := e.point(p1); p.kind != "full" || !p.live {
		t.Fatalf("first live backup: %+v", p)
	}
	q.io(t, "vda", "write -P 0x31 8M 64k")
	q.io(t, "vdb", "write -P 0x32 4M 128k")
	p2, _ := e.backup()
	if p := e.point(p2); p.kind != "incremental" || !p.live || p.copied["vda"] != 64<<10 || p.copied["vdb"] != 128<<10 {
		t.Errorf("live incremental: %+v", p)
	}

	// Writes while a slow incremental runs do not reach its point.
	q.io(t, "vda", "write -P 0x33 40M 4M")
	before := map[string]string{"vda": e.content("vda"), "vdb": e.content("vdb")}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bg := exec.CommandContext(ctx, e.bin, "backup", "create", "--to", e.dir, "--bandwidth", "1", e.vm)
	bg.Env = append(os.Environ(), "QCHAIN_STATE_DIR="+e.state)
	out := &strings.Builder{}
	bg.Stdout, bg.Stderr = out, out
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	bkWaitRunning(t, ctx, q, "vda")
	q.io(t, "vda", "write -P 0x34 43M 1M", "write -P 0x35 50M 64k")
	q.io(t, "vdb", "write -P 0x36 0 64k")
	if err := bg.Wait(); err != nil {
		t.Fatalf("backup create --bandwidth 1: %v\n%s", err, out)
	}
	t.Logf("slow backup: %s", out)
	l := e.list()
	p3 := l.Points[len(l.Points)-1].Point
	e.expect[p3] = before
	if p := e.point(p3); p.kind != "incremental" || p.copied["vda"] != 4<<20 {
		t.Errorf("slow live incremental: %+v", p)
	}
	// The writes made during it are in the next point.
	p4, _ := e.backup()
	if p := e.point(p4); p.kind != "incremental" || p.copied["vda"] != (1<<20)+(64<<10) || p.copied["vdb"] != 64<<10 {
		t.Errorf("incremental after the writes during a backup: %+v", p)
	}

	// A qchain killed during a backup: the next run removes what it
	// left (its job in qemu, its node, its file, its new bitmap), says
	// so, and makes an incremental point with everything since p4.
	q.io(t, "vda", "write -P 0x3a 44M 4M")
	kill := exec.CommandContext(ctx, e.bin, "backup", "create", "--to", e.dir, "--bandwidth", "1", e.vm)
	kill.Env = bg.Env
	if err := kill.Start(); err != nil {
		t.Fatal(err)
	}
	bkWaitRunning(t, ctx, q, "vda")
	kill.Process.Kill()
	kill.Wait()
	p5k, msg := e.backup()
	if p := e.point(p5k); p5k != p4+1 || p.kind != "incremental" || p.copied["vda"] != 4<<20 || !strings.Contains(msg, "interrupted run left .vda.") {
		t.Errorf("backup after a killed one: point %d %+v %q", p5k, p, msg)
	}

	// qemu stores the bitmaps when it quits: the next point, offline, is
	// incremental.
	q.quit(t)
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x37 60M 64k")
	p5, _ := e.backup()
	if p := e.point(p5); p.kind != "incremental" || p.live || p.copied["vda"] != 64<<10 {
		t.Errorf("offline incremental after a live one: %+v", p)
	}
	q = startBKQemu(t, e, q.sock)
	q.io(t, "vdb", "write -P 0x38 8M 64k")
	p6, _ := e.backup()
	if p := e.point(p6); p.kind != "incremental" || !p.live {
		t.Errorf("live incremental after an offline one: %+v", p)
	}
	q.quit(t)
	// A killed qemu leaves the bitmaps it loaded inconsistent: full, and
	// why.
	q = startBKQemu(t, e, q.sock)
	q.io(t, "vda", "write -P 0x39 12M 64k")
	q.cmd.Process.Kill()
	<-q.exited
	p7, msg := e.backup() // offline
	if p := e.point(p7); p.kind != "full" || !strings.Contains(msg, "inconsistent") {
		t.Errorf("backup after qemu was killed: %+v %q", p, msg)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)
}

// bkWaitRunning waits until the backup job of disk runs in q.
func bkWaitRunning(t *testing.T, ctx context.Context, q *bkQemu, disk string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		jobs, err := q.mon.QueryJobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.ID == qmp.JobID("backup", disk) && j.Status == "running" {
				t.Logf("during the backup: job %s %s %d/%d", j.ID, j.Status, j.CurrentProgress, j.TotalProgress)
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no backup job running")
}

// TestBackupLiveQemuKilled kills the VM's qemu (SIGKILL) while a live
// backup job runs in it: backup create fails with one line that says so,
// the folder is as it was (the new point's file removed), the images are
// clean, and the next point, offline, is full because the killed qemu
// never stored the bitmap of point 1, and says so; the one after is
// incremental again; every point restores to its content.
func TestBackupLiveQemuKilled(t *testing.T) {
	e, q := newLiveBKEnv(t, 64)
	p1, _ := e.backup()
	if p := e.point(p1); p.kind != "full" || !p.live {
		t.Fatalf("first live backup: %+v", p)
	}
	q.io(t, "vda", "write -P 0x51 40M 4M")
	before := mustFingerprint(t, e.dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bg := exec.CommandContext(ctx, e.bin, "backup", "create", "--to", e.dir, "--bandwidth", "1", e.vm)
	bg.Env = append(os.Environ(), "QCHAIN_STATE_DIR="+e.state)
	var stdout, stderr strings.Builder
	bg.Stdout, bg.Stderr = &stdout, &stderr
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	bkWaitRunning(t, ctx, q, "vda")
	q.cmd.Process.Kill() // the qemu this test started
	<-q.exited
	err := bg.Wait()
	msg := stderr.String()
	if err == nil {
		t.Fatalf("backup create while its qemu was killed succeeded: %s", stdout.String())
	}
	t.Logf("qemu killed: %s", strings.TrimSpace(msg))
	if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "qchain: ") || !strings.Contains(msg, "qemu") || !strings.Contains(msg, "exited") {
		t.Errorf("backup create while its qemu was killed: want one line that says qemu exited, got %q", msg)
	}
	if d := fingerprintDiff(before, mustFingerprint(t, e.dir)); d != "" {
		t.Errorf("the backup folder changed:\n%s", d)
	}
	if ents, _ := os.ReadDir(e.dir); len(ents) != 4 { // backup.json, backup.lock, vda.1, vdb.1
		var names []string
		for _, d := range ents {
			names = append(names, d.Name())
		}
		t.Errorf("the backup folder holds %v", names)
	}
	for _, disk := range []string{"vda", "vdb"} {
		e.q.Img("check", e.active(e.vm, disk))
	}
	p2, msg := e.backup() // offline
	// The bitmap of point 1 was added live and never stored (qemu
	// stores persistent bitmaps when it closes the image): none, or an
	// inconsistent one if qemu had stored it before.
	if p := e.point(p2); p2 != p1+1 || p.kind != "full" || !strings.Contains(msg, "qemu did not close the image") {
		t.Errorf("backup after qemu was killed during one: point %d %+v %q", p2, p, msg)
	}
	e.q.IO("qcow2", e.active(e.vm, "vda"), "write -q -P 0x52 44M 64k")
	p3, _ := e.backup()
	if p := e.point(p3); p.kind != "incremental" || p.copied["vda"] != 64<<10 || p.copied["vdb"] != 0 {
		t.Errorf("the incremental after the full one: %+v", p)
	}
	e.restoreAll()
	e.ok("backup", "verify", e.dir)
}
