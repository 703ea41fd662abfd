package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
	"github.com/qchain/qchain/fixtures/guest"
)

// ckInfo is `snapshot info --output=json` of a checkpoint.
type ckInfo struct {
	Name       string `json:"name"`
	Memory     bool   `json:"memory"`
	Internal   bool   `json:"internal"`
	MemoryFile string `json:"memory_file"`
	Format     string `json:"memory_format"`
	Disks      []struct {
		Target string `json:"target"`
		File   string `json:"file"`
	} `json:"disks"`
}

func (g *guestVM) ckInfo(snap string) ckInfo {
	g.t.Helper()
	var s ckInfo
	out := g.ok("snapshot", "info", "--output=json", g.name, snap)
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		g.t.Fatalf("snapshot info --output=json: %v\n%s", err, out)
	}
	return s
}

// checkpoint takes checkpoint snap with memory and returns the last record
// its disk holds: the guest had acknowledged that record or the one
// before when the checkpoint froze it.
func (g *guestVM) checkpoint(snap string, extra ...string) (last uint64, info ckInfo) {
	g.t.Helper()
	g.ok(append(append([]string{"snapshot", "create", "--memory"}, extra...), g.name, snap)...)
	return g.checkpointState(snap)
}

// checkpointState checks checkpoint snap's info and memory file and
// returns the last record its disk holds.
func (g *guestVM) checkpointState(snap string) (last uint64, info ckInfo) {
	g.t.Helper()
	info = g.ckInfo(snap)
	if !info.Memory || info.Internal || info.MemoryFile == "" || len(info.Disks) != 1 {
		g.t.Fatalf("checkpoint %s: info %+v", snap, info)
	}
	if fi, err := os.Stat(info.MemoryFile); err != nil || fi.Size() == 0 || filepath.Dir(info.MemoryFile) != g.img {
		g.t.Fatalf("checkpoint %s: memory file %s: %v (want a file beside the disks)", snap, info.MemoryFile, err)
	}
	// qemu-img and qemu-system come from one QEMU in the tests' PATH.
	qemuVersionOnce.Do(func() { qemuVersion, qemuVersionErr = fixtures.QemuImgVersion(context.Background()) })
	if qemuVersionErr != nil {
		g.t.Fatal(qemuVersionErr)
	}
	if want := map[bool]string{true: "mapped-ram", false: "stream"}[qemuVersion.AtLeast(9, 0)]; info.Format != want {
		g.t.Fatalf("checkpoint %s saved as %q with QEMU %s, want %q", snap, info.Format, qemuVersion, want)
	}
	last, err := guest.CheckRecords(info.Disks[0].File, g.run, 0)
	if err != nil {
		g.t.Fatal(err)
	}
	if last == 0 {
		g.t.Fatalf("checkpoint %s holds no record", snap)
	}
	return last, info
}

// checkResumed checks the console from offset on after a revert to a
// checkpoint whose disk ends at record last: no boot (the RAM was
// restored), acknowledgements continuing from the checkpoint's count one
// by one. It waits for n more records. Acknowledgements the old qemu
// printed before the revert quit it come first in the log; the restored
// guest's start where the numbers fall back.
func (g *guestVM) checkResumed(offset int64, last, n uint64) []uint64 {
	g.t.Helper()
	deadline := time.Now().Add(guestWait)
	for {
		c, err := guest.ReadConsoleLog(g.console, g.run, offset)
		if err != nil {
			g.t.Fatal(err)
		}
		if c.Readies != 0 {
			g.t.Fatalf("the guest booted after the revert (READY %d): its memory was not restored", c.Next)
		}
		acks := c.Acks
		for i := 1; i < len(acks); i++ {
			if acks[i] <= acks[i-1] {
				acks = acks[i:]
				break
			}
		}
		if len(acks) > 0 && acks[0] <= last+1 {
			if f := acks[0]; f != last && f != last+1 {
				g.t.Fatalf("after the revert the guest acknowledged %d first, want %d or %d (the checkpoint's disk ends at record %d)", f, last, last+1, last)
			}
			for i := 1; i < len(acks); i++ {
				if acks[i] != acks[i-1]+1 {
					g.t.Fatalf("acknowledgements after the revert jump from %d to %d", acks[i-1], acks[i])
				}
			}
			if acks[len(acks)-1] >= last+n {
				return acks
			}
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("no %d records acknowledged after the revert within %s (checkpoint at %d; log from offset %d: %v)", n, guestWait, last, offset, c.Acks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkDisk stops the VM and checks that its disk holds exactly the
// records the guest acknowledged since offset (the last one, perhaps one
// more), none of the discarded branch's beyond.
func (g *guestVM) checkDisk(offset int64) {
	g.t.Helper()
	g.ok("vm", "stop", "--force", g.name)
	c, err := guest.ReadConsoleLog(g.console, g.run, offset)
	if err != nil {
		g.t.Fatal(err)
	}
	acked := c.LastAck()
	last, err := guest.CheckRecords(g.active(g.name, "vda"), g.run, acked)
	if err != nil {
		g.t.Fatal(err)
	}
	if last != acked && last != acked+1 {
		g.t.Fatalf("the disk holds records up to %d, the guest acknowledged %d: records of the discarded branch remain", last, acked)
	}
}

// TestCheckpointGuest proves checkpoints with memory with the real guest
// writing records: a checkpoint taken with the vCPUs stopped and one
// taken live, each reverted (the first while the VM runs on past it, the
// second after the VM was stopped: qchain starts it); after each revert
// the guest does not boot but acknowledges records from the checkpoint's
// count on, and the disk holds exactly those records.
func TestCheckpointGuest(t *testing.T) {
	g := defineGuestVM(t, "ck", "ckpt", 10*time.Millisecond)
	g.ok("vm", "start", "ck")
	g.waitAck(0, 20)

	// Checkpoint with the vCPUs stopped; the guest runs on past it.
	last1, c1 := g.checkpoint("c1")
	pre := g.waitAck(0, last1+40)
	g.failsRunning([]string{"holds changes no snapshot keeps", "--force"}, "snapshot", "revert", "ck", "c1")
	if s := g.vmState(); s.State != "running" {
		t.Fatalf("a refused revert left the VM %s", s.State)
	}
	off := g.consoleSize()
	g.ok("snapshot", "revert", "--force", "ck", "c1")
	if s := g.vmState(); s.State != "running" {
		t.Fatalf("after the revert the VM is %s", s.State)
	}
	acks := g.checkResumed(off, last1, 20)
	if acks[0] >= pre.LastAck() {
		t.Fatalf("the guest acknowledged %d before the revert and %d first after: no rewind", pre.LastAck(), acks[0])
	}
	g.checkDisk(off)

	// A live checkpoint, reverted after the VM stopped: qchain starts it.
	off = g.consoleSize()
	g.ok("vm", "start", "ck")
	c := g.waitAck(off, 1)
	g.waitAck(off, c.LastAck()+20)
	last2, _ := g.checkpoint("c2", "--live")
	g.waitAck(off, last2+20)
	g.ok("vm", "stop", "--force", "ck")
	off = g.consoleSize()
	g.ok("snapshot", "revert", "--force", "ck", "c2")
	g.checkResumed(off, last2, 20)
	g.checkDisk(off)

	// Reverted --paused, the guest stays where the checkpoint left it.
	off = g.consoleSize()
	g.ok("snapshot", "revert", "--force", "--paused", "ck", "c2")
	time.Sleep(2 * time.Second)
	if c, err := guest.ReadConsoleLog(g.console, g.run, off); err != nil || len(c.Acks) != 0 || c.Readies != 0 {
		t.Fatalf("a VM reverted --paused ran: %+v, %v", c, err)
	}
	g.ok("vm", "stop", "--force", "ck")

	// A truncated memory state is refused before anything changes.
	if err := os.Truncate(c1.MemoryFile, 4096); err != nil {
		t.Fatal(err)
	}
	g.fails([]string{"checkpoint c1", "truncated"}, "snapshot", "revert", "--force", "ck", "c1")
	moved := c1.MemoryFile + ".moved"
	if err := os.Rename(c1.MemoryFile, moved); err != nil {
		t.Fatal(err)
	}
	g.fails([]string{"checkpoint c1", "memory state", "no such file"}, "snapshot", "revert", "--force", "ck", "c1")
	if err := os.Rename(moved, c1.MemoryFile); err != nil {
		t.Fatal(err)
	}

	// Deleting a checkpoint removes its memory state.
	g.ok("snapshot", "delete", "ck", "c1")
	if _, err := os.Stat(c1.MemoryFile); !os.IsNotExist(err) {
		t.Fatalf("the memory state of the deleted checkpoint c1 is still there: %v", err)
	}

	// An internal checkpoint: inside the active image, no overlay.
	g.ok("vm", "start", "ck")
	active := g.active("ck", "vda")
	if out := g.ok("snapshot", "create", "--memory", "--internal", "ck", "i1"); !strings.Contains(out, "Internal checkpoint i1 created") {
		t.Fatalf("snapshot create --internal said %q", out)
	}
	if info := g.ckInfo("i1"); !info.Internal || !info.Memory || info.Format != "internal" || info.Disks[0].File != active || g.active("ck", "vda") != active {
		t.Fatalf("internal checkpoint: %+v (active %s)", info, g.active("ck", "vda"))
	}
	if out := g.ok("snapshot", "list", "ck"); !strings.Contains(out, "internal") {
		t.Fatalf("snapshot list does not give the kind:\n%s", out)
	}
	// Once the guest wrote after i1, its disk holds changes no snapshot
	// keeps: the revert needs --force.
	g.waitAck(g.consoleSize(), 3)
	g.failsRunning([]string{"holds changes no snapshot keeps", "--force"}, "snapshot", "revert", "ck", "i1")
	off = g.consoleSize()
	g.ok("snapshot", "revert", "--force", "ck", "i1")
	g.waitAck(off, 1)
	g.ok("snapshot", "delete", "ck", "i1")
	g.ok("vm", "stop", "--force", "ck")
	if out, err := exec.Command("qemu-img", "snapshot", "-l", active).CombinedOutput(); err != nil || strings.Contains(string(out), "i1") {
		t.Fatalf("qemu-img snapshot -l after the delete: %v\n%s", err, out)
	}
}

// failsRunning runs a command that must fail with a one-line error
// containing every part of want, while the guest runs (and writes).
func (g *guestVM) failsRunning(want []string, args ...string) {
	g.t.Helper()
	res := g.scEnv.run(args...)
	msg := string(res.Stderr)
	if res.Err != nil || res.ExitCode == 0 || strings.Count(msg, "\n") != 1 {
		g.t.Fatalf("%s: exit %d (%v), stderr %q: want a one-line failure", res.Cmd, res.ExitCode, res.Err, msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			g.t.Errorf("%s: error %q does not mention %q", res.Cmd, strings.TrimSpace(msg), w)
		}
	}
}

// TestCheckpointKill9 kills qchain (SIGKILL) at several moments of a
// checkpoint's save, the migration going on in qemu without it, then
// runs recover: the VM runs, and the checkpoint exists with its memory
// (reverted to, the guest runs on from it) or, killed before its journal
// was written, does not exist at all.
func TestCheckpointKill9(t *testing.T) {
	g := defineGuestVM(t, "k9", "kill9", 10*time.Millisecond)
	g.ok("vm", "start", "k9")
	g.waitAck(0, 10)
	journal := filepath.Join(g.scEnv.state, "vms", "k9", "journal.json")
	for i, c := range []struct {
		delay time.Duration
		live  bool
	}{{0, false}, {100 * time.Millisecond, false}, {400 * time.Millisecond, false}, {0, true}, {300 * time.Millisecond, true}} {
		name := fmt.Sprintf("c%d", i)
		args := []string{"snapshot", "create", "--memory"}
		if c.live {
			args = append(args, "--live")
		}
		next := g.killAfterJournal(journal, c.delay, append(args, "k9", name)...)
		t.Logf("%s (delay %s, live %t): killed with the journal's next step %s", name, c.delay, c.live, next)
		g.ok("recover", "k9")
		if s := g.vmState(); s.State != "running" {
			t.Fatalf("%s: after recover the VM is %s", name, s.State)
		}
		g.checkOneQemu(name + ": after recover")
		var list []ckInfo
		if err := json.Unmarshal([]byte(g.ok("snapshot", "list", "--output=json", "k9")), &list); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, s := range list {
			if s.Name == name {
				found = true
				if !s.Memory {
					t.Fatalf("%s: recovered as a disk-only snapshot", name)
				}
			}
		}
		g.waitAck(g.consoleSize(), 1) // it runs on
		if !found {
			continue
		}
		last, _ := g.checkpointState(name)
		off := g.consoleSize()
		g.ok("snapshot", "revert", "--force", "k9", name)
		g.checkResumed(off, last, 10)
	}

	// Reverts killed at several moments, recovered: the guest runs on
	// from the checkpoint.
	last, _ := g.checkpoint("r")
	// Between 20 and 80 ms qchain is often killed while it starts the
	// checkpoint's qemu: finely, for a qemu started but not yet recorded.
	delays := []time.Duration{0}
	for ms := 20; ms <= 80; ms += 10 {
		delays = append(delays, time.Duration(ms)*time.Millisecond)
	}
	delays = append(delays, 100*time.Millisecond, 150*time.Millisecond)
	for _, delay := range delays {
		g.waitAck(g.consoleSize(), 1)
		off := g.consoleSize()
		next := g.killAfterJournal(journal, delay, "snapshot", "revert", "--force", "k9", "r")
		t.Logf("revert (delay %s): killed with the journal's next step %s", delay, next)
		g.ok("recover", "k9")
		if s := g.vmState(); s.State != "running" {
			t.Fatalf("revert killed (delay %s), recovered: the VM is %s", delay, s.State)
		}
		g.checkOneQemu(fmt.Sprintf("revert killed (delay %s), recovered", delay))
		g.checkResumed(off, last, 10)
	}
	g.ok("vm", "stop", "--force", "k9")
}

// qemus returns the live processes whose command line holds the VM's
// state folder (where its QMP socket is): its qemus.
func (g *guestVM) qemus() []int {
	dir := filepath.Join(g.scEnv.state, "vms", g.name) + string(filepath.Separator)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		g.t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), dir) {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if i := strings.LastIndexByte(string(stat), ')'); err != nil || i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// checkOneQemu fails unless exactly one qemu of the VM runs, the one vm
// show names.
func (g *guestVM) checkOneQemu(when string) {
	g.t.Helper()
	pids := g.qemus()
	s := g.vmState()
	if len(pids) != 1 || pids[0] != s.PID {
		for _, pid := range pids {
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			g.t.Logf("qemu pid %d: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
		g.t.Fatalf("%s: %d qemus of VM %s run (%v); vm show names pid %d: want exactly that one", when, len(pids), g.name, pids, s.PID)
	}
}

// killAfterJournal runs qchain with args, kills it (SIGKILL) delay after
// its journal appears (or once it exits), and returns the journal's next
// step then.
func (g *guestVM) killAfterJournal(journal string, delay time.Duration, args ...string) string {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guestWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.bin, args...)
	cmd.Dir = g.img
	cmd.Env = append(os.Environ(), "QCHAIN_STATE_DIR="+g.scEnv.state)
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
wait:
	for {
		if _, err := os.Stat(journal); err == nil {
			break
		}
		select {
		case <-exited:
			exited <- nil
			break wait
		case <-time.After(time.Millisecond):
		}
	}
	time.Sleep(delay)
	cmd.Process.Kill() // the qchain this test started
	<-exited
	return journalNext(journal)
}

// journalNext names the first unfinished step of the journal.
func journalNext(journal string) string {
	var j struct {
		Steps []struct {
			Kind string `json:"kind"`
			Done bool   `json:"done"`
		} `json:"steps"`
	}
	b, err := os.ReadFile(journal)
	if err != nil || json.Unmarshal(b, &j) != nil {
		return "none (no journal)"
	}
	for _, s := range j.Steps {
		if !s.Done {
			return s.Kind
		}
	}
	return "all done"
}
