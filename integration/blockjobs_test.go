package integration

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// The block job commands against real QEMU: every job ends with the guest
// view equal to the expected raw image (qemu-img compare and qchain
// compare), the on-disk chain what the command promised (qemu-img info
// --backing-chain), and every file clean (qemu-img check).

// liveCase is one job on a -drive disk with guest writes while it runs.
type liveCase struct {
	name string
	cmd  []string // command and flags; --qmp SOCKET and the disk are added
	dest string   // blockcopy's DEST, in the chain's folder
	// top is the file that holds the guest view afterwards; chain its
	// on-disk chain, top first.
	top   string
	chain []string
	// alsoExpected are files that must also read as the guest view.
	alsoExpected []string
	// gone are files --delete must have removed.
	gone []string
}

var liveCases = []liveCase{
	{name: "pull-base", cmd: []string{"blockpull", "--base", "base.qcow2"},
		top: "active.qcow2", chain: []string{"active.qcow2", "base.qcow2"}},
	{name: "pull-all", cmd: []string{"blockpull"},
		top: "active.qcow2", chain: []string{"active.qcow2"}},
	{name: "commit-intermediate", cmd: []string{"blockcommit", "--top", "snap1.qcow2"},
		top: "active.qcow2", chain: []string{"active.qcow2", "base.qcow2"}},
	{name: "commit-active-pivot", cmd: []string{"blockcommit", "--active", "--pivot"},
		top: "base.qcow2", chain: []string{"base.qcow2"}},
	{name: "commit-active-delete", cmd: []string{"blockcommit", "--active", "--pivot", "--delete"},
		top: "base.qcow2", chain: []string{"base.qcow2"}, gone: []string{"active.qcow2", "snap1.qcow2"}},
	{name: "commit-active-keep", cmd: []string{"blockcommit", "--active", "--keep-overlay"},
		top: "active.qcow2", chain: []string{"active.qcow2", "snap1.qcow2", "base.qcow2"}, alsoExpected: []string{"base.qcow2"}},
	{name: "commit-shallow", cmd: []string{"blockcommit", "--active", "--shallow", "--pivot"},
		top: "snap1.qcow2", chain: []string{"snap1.qcow2", "base.qcow2"}},
	{name: "copy-full-finish", cmd: []string{"blockcopy", "--finish"}, dest: "copy.qcow2",
		top: "active.qcow2", chain: []string{"active.qcow2", "snap1.qcow2", "base.qcow2"}, alsoExpected: []string{"copy.qcow2"}},
	{name: "copy-shallow-pivot", cmd: []string{"blockcopy", "--shallow", "--pivot"}, dest: "copy.qcow2",
		top: "copy.qcow2", chain: []string{"copy.qcow2", "snap1.qcow2", "base.qcow2"}},
}

// TestBlockLiveDrive runs each job throttled on a -drive disk while the
// guest writes, then checks content and chains.
func TestBlockLiveDrive(t *testing.T) {
	runLiveCases(t, vmDrive)
}

// TestBlockLiveDevice runs each job throttled on a disk of -blockdev nodes
// behind a virtio-blk device (named by its qdev id) while the guest writes
// through the device, then checks content and chains.
func TestBlockLiveDevice(t *testing.T) {
	runLiveCases(t, vmDevice)
}

func runLiveCases(t *testing.T, kind vmKind) {
	bin := requireTools(t)
	t.Parallel()
	for _, tc := range liveCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newBlockChain(t)
			vm := startVM(t, c, kind, "")
			args := append([]string{tc.cmd[0], "--qmp", vm.sock, "--wait", "--bandwidth", "1"}, tc.cmd[1:]...)
			args = append(args, vm.disk)
			if tc.dest != "" {
				args = append(args, c.path(tc.dest))
			}
			job := startQchain(t, bin, c.dir, args...)
			vm.waitJob(t, "running", job)
			// Guest writes: over data of every layer, and where nothing
			// was allocated.
			vm.guestWrite(t, c, 1<<20, 64<<10, 0x55)
			vm.guestWrite(t, c, 3<<20+4096, 8192, 0x56)
			vm.guestWrite(t, c, 12<<20, 128<<10, 0x57)
			// Behind a device, the old top and snap1 stay open in QEMU as
			// the -blockdev nodes the user made: --delete must refuse
			// them (after the commit) rather than delete open layers.
			keep := kind == vmDevice && len(tc.gone) > 0
			code := job.wait(t)
			switch {
			case keep && (code != 1 || !strings.Contains(job.stderr.String(), "not deleting")):
				t.Fatalf("qchain %v: exit %d, want 1 refusing to delete files QEMU still holds\nstderr: %s", args, code, job.stderr)
			case !keep && code != 0:
				t.Fatalf("qchain %v: exit %d\nstdout: %s\nstderr: %s", args, code, job.stdout, job.stderr)
			}
			if strings.Contains(job.stderr.String(), "QEMU kept") {
				// A device's disk follows a pivot; qchain must see that.
				t.Errorf("qchain %v reports a pivot that did not happen:\n%s", args, job.stderr)
			}
			if keep {
				for _, g := range tc.gone {
					if _, err := os.Stat(c.path(g)); err != nil {
						t.Errorf("%s deleted although QEMU holds it: %v", g, err)
					}
				}
				tc.gone = nil
			}
			if jobs := vm.jobs(t); len(jobs) != 0 {
				t.Errorf("jobs left in QEMU: %+v", jobs)
			}
			if tc.dest != "" && strings.Contains(vm.stderr.String(), "Formatting") {
				// QEMU created DEST and said so on its own output, which is
				// often qchain's terminal: qchain creates it.
				t.Errorf("qchain %v let QEMU create DEST:\n%s", args, vm.stderr)
			}
			// What QEMU now uses, as qchain disks reports it.
			r := mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock, "--output=json")
			if got := disksTop(t, r.Stdout, vm.disk); got != tc.top {
				t.Errorf("disks: %s's active layer is %s, want %s", vm.disk, got, tc.top)
			}
			vm.quit()
			c.checkChain(t, c.path(tc.top), tc.chain...)
			c.checkContent(t, bin, c.path(tc.top))
			for _, f := range tc.alsoExpected {
				c.checkContent(t, bin, c.path(f))
			}
			for _, g := range tc.gone {
				if _, err := os.Stat(c.path(g)); !os.IsNotExist(err) {
					t.Errorf("%s not deleted: %v", g, err)
				}
			}
		})
	}
}

// disksTop returns the base name of the active layer of disk in qchain
// disks --output=json.
func disksTop(t *testing.T, out []byte, disk string) string {
	t.Helper()
	var rep struct {
		Disks []struct {
			Name  string `json:"name"`
			QDev  string `json:"qdev"`
			Chain []struct {
				Filename string `json:"filename"`
			} `json:"chain"`
		} `json:"disks"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("disks --output=json: %v\n%s", err, out)
	}
	for _, d := range rep.Disks {
		if (d.Name == disk || d.QDev == "/machine/peripheral/"+disk+"/virtio-backend") && len(d.Chain) > 0 {
			return filepath.Base(d.Chain[0].Filename)
		}
	}
	t.Fatalf("disks: no disk %s in %s", disk, out)
	return ""
}

// TestBlockLiveBlockdev runs jobs on a disk opened with explicit -blockdev
// nodes and no device (no guest writes: HMP qemu-io needs a -drive or a
// device; TestBlockLiveDevice has both).
func TestBlockLiveBlockdev(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	c := newBlockChain(t)
	vm := startVM(t, c, vmBlockdev, "")

	r := mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock)
	if !strings.Contains(string(r.Stdout), "base.qcow2 <- snap1.qcow2 <- active.qcow2*") {
		t.Errorf("disks does not draw the chain:\n%s", r.Stdout)
	}
	mustQchain(t, bin, c.dir, "blockcopy", "--qmp", vm.sock, "--finish", "top", c.path("copy.qcow2"))
	mustQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--wait", "--top", "snap1", "top")
	r = mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock, "--output=json")
	if got := disksTop(t, r.Stdout, "top"); got != "active.qcow2" {
		t.Errorf("after the commit top's active layer is %s", got)
	}
	// An active commit on a root node no device uses: QEMU 7.2's pivot
	// changes nothing in the graph, but the data is committed.
	mustQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--active", "--pivot", "top")
	vm.quit()
	c.checkChain(t, c.active, "active.qcow2", "base.qcow2")
	c.checkContent(t, bin, c.active)
	c.checkContent(t, bin, c.base)
	c.checkChain(t, c.path("copy.qcow2"), "copy.qcow2")
	c.checkContent(t, bin, c.path("copy.qcow2"))
}

// TestBlockLiveShallowCopyThenCommit: a shallow copy pivoted on a disk of
// -blockdev nodes gets the disk's own backing node as its backing, so a
// later commit into the backing chain can write. qchain's drive-mirror
// onto the DEST it made had QEMU open DEST's backing chain a second time
// at the pivot; with the user's nodes of those files still open, QEMU's
// locks then refused the commit ("Failed to get "write" lock"). The node
// qchain added for DEST goes once the commit took it out of the chain.
func TestBlockLiveShallowCopyThenCommit(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	c := newBlockChain(t)
	vm := startVM(t, c, vmDevice, "")
	mustQchain(t, bin, c.dir, "blockcopy", "--qmp", vm.sock, "--shallow", "--pivot", vm.disk, c.path("copy.qcow2"))
	vm.guestWrite(t, c, 5<<20, 64<<10, 0x71)
	mustQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--active", "--pivot", vm.disk)
	r := mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock, "--output=json")
	if got := disksTop(t, r.Stdout, vm.disk); got != "base.qcow2" {
		t.Errorf("after the commit %s runs on %s, want base.qcow2", vm.disk, got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), blockTimeout)
	defer cancel()
	nodes, err := vm.mon.QueryNamedBlockNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "qchain-") {
			t.Errorf("node %s (%s) left in QEMU", n.NodeName, n.File)
		}
	}
	vm.quit()
	c.checkChain(t, c.base, "base.qcow2")
	c.checkContent(t, bin, c.base)
	c.checkChain(t, c.path("copy.qcow2"), "copy.qcow2", "snap1.qcow2", "base.qcow2")
}

// TestBlockOffline runs the jobs on image paths through a private
// qemu-storage-daemon.
func TestBlockOffline(t *testing.T) {
	bin := requireTools(t)
	haveStorageDaemon(t)
	t.Parallel()
	tests := []struct {
		name  string
		args  []string // DISK (active.qcow2) and DEST are added
		dest  string
		top   string // holds the guest view afterwards
		chain []string
		gone  []string // files --delete removed
	}{
		{"pull-base", []string{"blockpull", "--base", "base.qcow2"}, "", "active.qcow2", []string{"active.qcow2", "base.qcow2"}, nil},
		{"pull-all", []string{"blockpull"}, "", "active.qcow2", []string{"active.qcow2"}, nil},
		{"commit-intermediate", []string{"blockcommit", "--top", "snap1.qcow2"}, "", "active.qcow2", []string{"active.qcow2", "base.qcow2"}, nil},
		{"commit-active-delete", []string{"blockcommit", "--active", "--delete"}, "", "base.qcow2", []string{"base.qcow2"}, []string{"active.qcow2", "snap1.qcow2"}},
		{"commit-active", []string{"blockcommit", "--active", "--pivot"}, "", "base.qcow2", []string{"base.qcow2"}, nil},
		{"commit-shallow", []string{"blockcommit", "--active", "--shallow"}, "", "snap1.qcow2", []string{"snap1.qcow2", "base.qcow2"}, nil},
		{"copy-full", []string{"blockcopy"}, "copy.qcow2", "copy.qcow2", []string{"copy.qcow2"}, nil},
		{"copy-shallow", []string{"blockcopy", "--shallow"}, "copy.qcow2", "copy.qcow2", []string{"copy.qcow2", "snap1.qcow2", "base.qcow2"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newBlockChain(t)
			before, err := fingerprint(c.dir)
			if err != nil {
				t.Fatal(err)
			}
			args := append(append([]string{}, tt.args...), "--verbose", c.active)
			if tt.dest != "" {
				args = append(args, c.path(tt.dest))
			}
			r := mustQchain(t, bin, c.dir, args...)
			if !strings.Contains(string(r.Stderr), "100%") {
				t.Errorf("--verbose drew no finished progress bar: %q", r.Stderr)
			}
			if strings.Contains(string(r.Stderr), "\r") {
				// stderr is a pipe here: plain lines, no redrawn bar.
				t.Errorf("--verbose redrew a bar into a pipe: %q", r.Stderr)
			}
			c.checkChain(t, c.path(tt.top), tt.chain...)
			c.checkContent(t, bin, c.path(tt.top))
			for _, g := range tt.gone {
				if _, err := os.Stat(c.path(g)); !os.IsNotExist(err) {
					t.Errorf("%s not deleted: %v", g, err)
				}
			}
			if strings.HasPrefix(tt.name, "commit-active") && tt.gone == nil {
				// Without --delete the top is left exactly as it was.
				after, err := fingerprint(c.dir)
				if err != nil {
					t.Fatal(err)
				}
				if b, a := before["active.qcow2"], after["active.qcow2"]; b.SHA256 != a.SHA256 || b.Size != a.Size {
					t.Errorf("active.qcow2 changed: %+v -> %+v", b, a)
				}
				c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
				c.checkContent(t, bin, c.active)
			}
		})
	}

	t.Run("interrupt", func(t *testing.T) {
		c := newBlockChain(t)
		job := startQchain(t, bin, c.dir, "blockcommit", "--bandwidth", "1", "--verbose", "--top", "snap1.qcow2", c.active)
		job.waitStderr(t, "%") // the progress bar: the job runs
		_ = job.cmd.Process.Signal(syscall.SIGINT)
		if code := job.wait(t); code != exitInterruptedCode {
			t.Errorf("exit %d after SIGINT, want %d; stderr: %s", code, exitInterruptedCode, job.stderr)
		}
		if msg := job.stderr.String(); !strings.Contains(msg, "interrupted") || !strings.Contains(msg, "aborted cleanly") {
			t.Errorf("stderr does not say the job was aborted: %q", msg)
		}
		c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
		c.checkContent(t, bin, c.active)
	})
}

// exitInterruptedCode is qchain's exit code after SIGINT aborted a job.
const exitInterruptedCode = 130

// TestBlockJobControl: a job started without --wait runs on in QEMU;
// blockjob shows it, aborts it, and finishes one whose qchain was killed;
// Ctrl-C aborts cleanly.
func TestBlockJobControl(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()

	t.Run("no-wait-then-abort", func(t *testing.T) {
		t.Parallel()
		c := newBlockChain(t)
		vm := startVM(t, c, vmDrive, "")
		r := mustQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--bandwidth", "1", "--top", "snap1.qcow2", "vda")
		if !strings.Contains(string(r.Stdout), "qchain-commit-vda") {
			t.Errorf("start message does not name the job: %s", r.Stdout)
		}
		r = mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "vda")
		if !strings.Contains(string(r.Stdout), "qchain-commit-vda: commit running") {
			t.Errorf("blockjob --info: %s", r.Stdout)
		}
		r = mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock)
		if !strings.Contains(string(r.Stdout), "job qchain-commit-vda: commit") {
			t.Errorf("disks does not show the job:\n%s", r.Stdout)
		}
		r = mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "--pause", "vda")
		if !strings.Contains(string(r.Stdout), "paused") {
			t.Errorf("blockjob --pause: %s", r.Stdout)
		}
		r = mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "--resume", "--bandwidth", "2", "vda")
		if !strings.Contains(string(r.Stdout), "running") || !strings.Contains(string(r.Stdout), "limit 2.0 MiB/s") {
			t.Errorf("blockjob --resume --bandwidth 2: %s", r.Stdout)
		}
		// A second job on the busy disk is refused.
		r = qchainRun(bin, c.dir, "blockpull", "--qmp", vm.sock, "--wait", "vda")
		wantOneLineError(t, r, 1, "vda", "busy", "qchain-commit-vda")
		r = mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "--abort", "vda")
		if !strings.Contains(string(r.Stdout), "aborted") {
			t.Errorf("blockjob --abort: %s", r.Stdout)
		}
		if jobs := vm.jobs(t); len(jobs) != 0 {
			t.Errorf("jobs left after --abort: %+v", jobs)
		}
		r = mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "vda")
		if !strings.Contains(string(r.Stdout), "no block job") {
			t.Errorf("blockjob after abort: %s", r.Stdout)
		}
		vm.quit()
		c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
		c.checkContent(t, bin, c.active)
	})

	t.Run("kill-qchain-then-pivot", func(t *testing.T) {
		t.Parallel()
		c := newBlockChain(t)
		vm := startVM(t, c, vmDrive, "")
		job := startQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--active", "--pivot", "--bandwidth", "1", "--verbose", "vda")
		vm.waitJob(t, "running", job)
		vm.guestWrite(t, c, 5<<20, 64<<10, 0x66)
		_ = job.cmd.Process.Signal(syscall.SIGKILL)
		job.wait(t)
		if len(vm.jobs(t)) != 1 {
			t.Fatalf("the job did not survive its qchain: %+v", vm.jobs(t))
		}
		vm.guestWrite(t, c, 9<<20, 64<<10, 0x67)
		r := mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "--bandwidth", "0", "--wait", "--pivot", "vda")
		if !strings.Contains(string(r.Stdout), "complete") {
			t.Errorf("blockjob --pivot: %s", r.Stdout)
		}
		r = mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock, "--output=json")
		if got := disksTop(t, r.Stdout, "vda"); got != "base.qcow2" {
			t.Errorf("after the pivot vda is on %s, want base.qcow2", got)
		}
		vm.quit()
		c.checkChain(t, c.base, "base.qcow2")
		c.checkContent(t, bin, c.base)
	})

	t.Run("interrupt", func(t *testing.T) {
		t.Parallel()
		c := newBlockChain(t)
		vm := startVM(t, c, vmDrive, "")
		job := startQchain(t, bin, c.dir, "blockpull", "--qmp", vm.sock, "--wait", "--bandwidth", "1", "vda")
		vm.waitJob(t, "running", job)
		_ = job.cmd.Process.Signal(syscall.SIGINT)
		if code := job.wait(t); code != exitInterruptedCode {
			t.Errorf("exit %d after SIGINT, want %d; stderr: %s", code, exitInterruptedCode, job.stderr)
		}
		if msg := job.stderr.String(); !strings.Contains(msg, "interrupted") || !strings.Contains(msg, "aborted cleanly") {
			t.Errorf("stderr does not say the job was aborted: %q", msg)
		}
		if jobs := vm.jobs(t); len(jobs) != 0 {
			t.Errorf("jobs left after the interrupt: %+v", jobs)
		}
		vm.quit()
		c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
		c.checkContent(t, bin, c.active)
	})

	t.Run("qemu-dies", func(t *testing.T) {
		t.Parallel()
		c := newBlockChain(t)
		vm := startVM(t, c, vmDrive, "")
		job := startQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--wait", "--bandwidth", "1", "--top", "snap1.qcow2", "vda")
		vm.waitJob(t, "running", job)
		vm.kill(t)
		code := job.wait(t)
		r := fixtures.Result{Cmd: "qchain blockcommit (QEMU killed)", ExitCode: code, Stderr: []byte(job.stderr.String())}
		wantOneLineError(t, r, 1, "vda", "went away", "qchain-commit-vda")
		c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
		c.checkContent(t, bin, c.active)
	})
}

// TestBlockAutoFinalize: the jobs qchain starts run with auto-finalize as
// planned: on for an active commit (once completed nothing is left to
// decide, and a pending active commit holds the disk drained and not yet
// switched), off for an intermediate commit and a pull, which qchain
// finalizes itself; a copy keeps QEMU's default (on).
func TestBlockAutoFinalize(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	tests := []struct {
		name string
		args []string // --qmp SOCKET and the disk are added; DEST after it
		dest string
		want bool
	}{
		{"active-commit", []string{"blockcommit", "--active"}, "", true},
		{"intermediate-commit", []string{"blockcommit", "--top", "snap1.qcow2"}, "", false},
		{"pull", []string{"blockpull"}, "", false},
		{"copy", []string{"blockcopy"}, "copy.qcow2", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newBlockChain(t)
			vm := startVM(t, c, vmDrive, "")
			args := append([]string{tc.args[0], "--qmp", vm.sock, "--bandwidth", "1"}, tc.args[1:]...)
			args = append(args, "vda")
			if tc.dest != "" {
				args = append(args, c.path(tc.dest))
			}
			mustQchain(t, bin, c.dir, args...)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			bjobs, err := vm.mon.QueryBlockJobs(ctx)
			if err != nil || len(bjobs) != 1 {
				t.Fatalf("query-block-jobs: %+v %v", bjobs, err)
			}
			if bjobs[0].AutoFinalize != tc.want || bjobs[0].AutoDismiss {
				t.Errorf("%s: auto-finalize %t, auto-dismiss %t; want %t, false", bjobs[0].Device, bjobs[0].AutoFinalize, bjobs[0].AutoDismiss, tc.want)
			}
			mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "--abort", "vda")
			vm.quit()
			c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
			c.checkContent(t, bin, c.active)
		})
	}
}

// TestBlockErrors: bad input and failing jobs give one clear line and
// leave the files consistent.
func TestBlockErrors(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	c := newBlockChain(t)
	vm := startVM(t, c, vmDrive, "")
	other := fixtures.NewQemu(t, c.dir).Create("other.qcow2", "16M")

	// A unix socket that answers like no QMP server.
	junk := filepath.Join(t.TempDir(), "junk.sock")
	ln, err := net.Listen("unix", junk)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = nc.Write([]byte("220 hello, this is not QEMU\r\n"))
			nc.Close()
		}
	}()

	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no-socket", []string{"blockpull", "--qmp", c.path("nope.sock"), "vda"}, 1, []string{"nope.sock", "no such socket"}},
		{"not-qmp", []string{"blockpull", "--qmp", junk, "vda"}, 1, []string{"junk.sock", "not a QMP monitor"}},
		{"plain-file", []string{"disks", "--qmp", c.base}, 1, []string{"base.qcow2", "connection refused"}},
		{"unknown-disk", []string{"blockpull", "--qmp", vm.sock, "vdz"}, 1, []string{`"vdz"`, "vda"}},
		{"base-not-in-chain", []string{"blockpull", "--qmp", vm.sock, "--base", other, "vda"}, 1, []string{"vda", "other.qcow2", "not in the chain"}},
		{"top-not-in-chain", []string{"blockcommit", "--qmp", vm.sock, "--top", other, "vda"}, 1, []string{"vda", "other.qcow2", "not in the chain"}},
		{"active-needs-flag", []string{"blockcommit", "--qmp", vm.sock, "vda"}, 1, []string{"vda", "active.qcow2", "--active"}},
		{"base-above-top", []string{"blockcommit", "--qmp", vm.sock, "--top", "snap1.qcow2", "--base", "active.qcow2", "vda"}, 1, []string{"vda", "not below"}},
		{"dest-exists", []string{"blockcopy", "--qmp", vm.sock, "vda", c.snap1}, 1, []string{"vda", "snap1.qcow2", "in the chain"}},
		{"dest-exists-other", []string{"blockcopy", "--qmp", vm.sock, "vda", other}, 1, []string{"vda", "other.qcow2", "exists"}},
		{"no-job", []string{"blockjob", "--qmp", vm.sock, "--pivot", "vda"}, 1, []string{"vda", "no block job"}},
		{"offline-in-use", []string{"blockpull", c.active}, 1, []string{"active.qcow2", "in use"}},
		{"offline-no-daemon", []string{"blockpull", "--storage-daemon", "/nonexistent/qsd", c.active}, 1, []string{"active.qcow2", "qemu-storage-daemon", "/nonexistent/qsd"}},
		{"offline-no-image", []string{"blockpull", c.path("missing.qcow2")}, 1, []string{"missing.qcow2", "no such image"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := qchainRun(bin, c.dir, tt.args...)
			wantOneLineError(t, r, tt.code, tt.want...)
		})
	}
	// --timeout gives up and aborts the job cleanly.
	r := qchainRun(bin, c.dir, "blockcommit", "--qmp", vm.sock, "--bandwidth", "1", "--timeout", "1", "--top", "snap1.qcow2", "vda")
	wantOneLineError(t, r, 1, "vda", "--timeout 1s", "aborted cleanly")
	if jobs := vm.jobs(t); len(jobs) != 0 {
		t.Errorf("jobs left after --timeout: %+v", jobs)
	}
	r = mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "--info", "vda")
	if !strings.Contains(string(r.Stdout), "no block job") {
		t.Errorf("blockjob --info with no job: %s", r.Stdout)
	}
	vm.quit()
	c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
	c.checkContent(t, bin, c.active)
}

// TestBlockJobFailure: the copy's target cannot grow past 1 MiB (a file
// size limit on QEMU stands in for a full disk: EFBIG instead of ENOSPC,
// the same path through QEMU's job), so the job fails in QEMU; qchain
// says so in one line and the disk and its files are as before.
func TestBlockJobFailure(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	c := newBlockChain(t)
	// dash counts ulimit -f in 512-byte blocks: 2048 is 1 MiB. SIGXFSZ is
	// ignored so that the write fails instead of killing QEMU.
	vm := startVM(t, c, vmDrive, `trap "" XFSZ; ulimit -f 2048;`)
	dest := c.path("full.qcow2")
	r := qchainRun(bin, c.dir, "blockcopy", "--qmp", vm.sock, "--finish", "vda", dest)
	wantOneLineError(t, r, 1, "vda", "full.qcow2", "failed", "File too large")
	if jobs := vm.jobs(t); len(jobs) != 0 {
		t.Errorf("jobs left after the failure: %+v", jobs)
	}
	r = mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock, "--output=json")
	if got := disksTop(t, r.Stdout, "vda"); got != "active.qcow2" {
		t.Errorf("after the failed copy vda is on %s", got)
	}
	vm.quit()
	c.checkChain(t, c.active, "active.qcow2", "snap1.qcow2", "base.qcow2")
	c.checkContent(t, bin, c.active)
}
