package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures/guest"
)

// guestVM is a VM of the state directory that qchain starts itself: the
// real guest writing records on vda, its console appended to console.
type guestVM struct {
	*scEnv
	name    string
	run     string
	console string
}

// guestWait bounds each wait for the guest: generous, the host's two cores
// are shared.
const guestWait = 3 * time.Minute

// defineGuestVM defines VM name on a new 64 MiB vda running the records
// workload of run (with delay between records), from the guest fixture's
// own command line (guest.VMCommand).
func defineGuestVM(t *testing.T, name, run string, delay time.Duration) *guestVM {
	e := newSCEnv(t)
	f := guest.ForTest(t)
	g := &guestVM{scEnv: e, name: name, run: run, console: filepath.Join(e.root, name+".console")}
	e.q.Create(name+"-vda.qcow2", "64M")
	ctx, cancel := context.WithTimeout(context.Background(), guestWait)
	defer cancel()
	cmd, err := guest.VMCommand(ctx, guest.Options{Fixture: f, Disks: []guest.Disk{{Path: "unused"}}, Workload: guest.Workload{Run: run, Delay: delay}}, g.console)
	if err != nil {
		t.Fatal(err)
	}
	e.ok(append([]string{"vm", "define", "--disk", "vda=" + name + "-vda.qcow2", name, "--"}, cmd...)...)
	t.Cleanup(g.kill)
	return g
}

// kill ends the VM's qemu if a test left it running (it runs in a
// session of its own and would outlive the test).
func (g *guestVM) kill() {
	b, _ := os.ReadFile(filepath.Join(g.scEnv.state, "vms", g.name, "qemu.pid"))
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
		if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil && strings.Contains(string(cmdline), g.scEnv.state) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// And any other qemu of the VM a failing test leaves.
	for _, pid := range g.qemus() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// consoleSize is how much the console log holds now: where to read on
// from.
func (g *guestVM) consoleSize() int64 {
	fi, err := os.Stat(g.console)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// waitAck waits for record n in the console from offset on.
func (g *guestVM) waitAck(offset int64, n uint64) *guest.ConsoleLog {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guestWait)
	defer cancel()
	c, err := guest.WaitConsoleAck(ctx, g.console, g.run, offset, n)
	if err != nil {
		g.t.Fatal(err)
	}
	return c
}

// vmState is `vm show --output=json`'s process part.
type vmState struct {
	State   string   `json:"state"`
	PID     int      `json:"pid"`
	Uptime  int64    `json:"uptime"`
	Command []string `json:"command"`
}

func (g *guestVM) vmState() vmState {
	g.t.Helper()
	var s vmState
	out := g.ok("vm", "show", "--output=json", g.name)
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		g.t.Fatalf("vm show --output=json: %v\n%s", err, out)
	}
	return s
}

// TestVMStartStop starts the real guest from its stored command line,
// checks that it writes records and that vm show says it runs, stops it
// (the busybox guest ignores the power button: quit after the timeout),
// and starts it again: it resumes from what its disk holds.
func TestVMStartStop(t *testing.T) {
	g := defineGuestVM(t, "g", "startstop", 0)
	if s := g.vmState(); s.State != "stopped" || s.PID != 0 || len(s.Command) == 0 {
		t.Fatalf("defined VM: %+v", s)
	}
	g.fails([]string{"VM g is not running"}, "vm", "stop", "g")
	out := g.ok("vm", "start", "g")
	if !strings.Contains(out, "VM g started (pid ") {
		t.Fatalf("vm start said %q", out)
	}
	s := g.vmState()
	if s.State != "running" || s.PID == 0 {
		t.Fatalf("started VM: %+v", s)
	}
	if !strings.Contains(g.ok("vm", "show", "g"), "state: running (pid "+strconv.Itoa(s.PID)) {
		t.Fatalf("vm show does not say running")
	}
	g.fails([]string{"VM g is already running"}, "vm", "start", "g")
	g.waitAck(0, 20)
	g.ok("vm", "stop", "--timeout", "2s", "g")
	if s := g.vmState(); s.State != "stopped" {
		t.Fatalf("stopped VM: %+v", s)
	}
	if err := syscall.Kill(s.PID, 0); err == nil {
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(s.PID) + "/cmdline"); strings.Contains(string(b), g.scEnv.state) {
			t.Fatalf("qemu (pid %d) still runs after vm stop", s.PID)
		}
	}
	c, err := guest.ReadConsoleLog(g.console, g.run, 0)
	if err != nil {
		t.Fatal(err)
	}
	acked := c.LastAck()
	if _, err := guest.CheckRecords(g.active("g", "vda"), g.run, acked); err != nil {
		t.Fatal(err)
	}

	// Started again, paused: nothing runs until cont; then it resumes
	// after what the disk holds.
	off := g.consoleSize()
	g.ok("vm", "start", "--paused", "g")
	time.Sleep(time.Second)
	if c, _ := guest.ReadConsoleLog(g.console, g.run, off); c != nil && c.Readies != 0 {
		t.Fatalf("a VM started --paused booted")
	}
	g.ok("vm", "stop", "--force", "g")
	g.ok("vm", "start", "g")
	c = g.waitAck(off, acked+5)
	if c.Readies != 1 || c.Next < acked+1 {
		t.Fatalf("the guest started again at %d (%d boots), want after %d", c.Next, c.Readies, acked)
	}
	g.ok("vm", "stop", "--force", "g")
}

// TestVMStartErrors: a VM without a command line cannot be started, and a
// qemu that exits at once is a one-line error naming its complaint.
func TestVMStartErrors(t *testing.T) {
	e := newSCEnv(t)
	e.define("plain")
	e.fails([]string{"VM plain has no qemu command line"}, "vm", "start", "plain")
	e.fails([]string{"VM plain is not running"}, "vm", "stop", "plain")
	e.fails([]string{"VM plain is not running", "a checkpoint with memory needs a running VM"}, "snapshot", "create", "--memory", "plain", "c")
	e.fails([]string{"VM plain is not running"}, "snapshot", "create", "--memory", "--internal", "plain", "c")
	e.fails([]string{"--live means nothing for a disk-only internal snapshot"}, "snapshot", "create", "--internal", "--live", "plain", "c")
	e.fails([]string{"--live needs --memory"}, "snapshot", "create", "--live", "plain", "c")
	e.fails([]string{"--quiesce and --memory exclude each other"}, "snapshot", "create", "--memory", "--quiesce", "plain", "c")
	e.q.Create("bad-vda.qcow2", "1M")
	e.ok("vm", "define", "--disk", "vda=bad-vda.qcow2", "bad", "--", "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-no-such-option")
	res := e.run("vm", "start", "bad")
	if res.ExitCode == 0 || !strings.Contains(string(res.Stderr), "qemu exited at start") || !strings.Contains(string(res.Stderr), "no-such-option") || strings.Count(string(res.Stderr), "\n") != 1 {
		t.Fatalf("vm start of a bad command line: exit %d, stderr %q", res.ExitCode, res.Stderr)
	}
	e.fails([]string{"-qmp is not allowed"}, "vm", "define", "--disk", "vda=bad-vda.qcow2", "bad2", "--", "qemu-system-x86_64", "-qmp", "unix:x")
}
