package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
	"github.com/qchain/qchain/qmp"
)

// The block job tests' fixtures: a three-layer chain with known content
// and its expected guest view as a raw file, a real qemu-system-x86_64
// (-drive or -blockdev) with a second QMP monitor for guest writes, and
// checks of content, on-disk chains and consistency.

// blockTimeout bounds every wait of the block job tests.
const blockTimeout = 30 * time.Second

// blockChain is base.qcow2 <- snap1.qcow2 <- active.qcow2 (16 MiB, relative
// backing names) and expected.raw, the guest view, kept up to date by
// guestWrite.
type blockChain struct {
	dir, base, snap1, active, expected string
}

// Layer content: base 0x11 at 0-4M, snap1 0x22 at 1M-3M, active 0x33 at
// 2M-4M and 8M-9M, so a pull moves 2 MiB, an intermediate commit 2 MiB and
// an active commit 4 MiB: a few seconds each at --bandwidth 1.
func newBlockChain(t *testing.T) *blockChain {
	t.Helper()
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	c := &blockChain{dir: dir}
	c.base = q.Create("base.qcow2", "16M")
	q.IO("qcow2", c.base, "write -q -P 0x11 0 4M")
	c.snap1 = q.Overlay("snap1.qcow2", "base.qcow2", "qcow2", "")
	q.IO("qcow2", c.snap1, "write -q -P 0x22 1M 2M")
	c.active = q.Overlay("active.qcow2", "snap1.qcow2", "qcow2", "")
	q.IO("qcow2", c.active, "write -q -P 0x33 2M 2M", "write -q -P 0x33 8M 1M")
	c.expected = filepath.Join(dir, "expected.raw")
	q.Img("convert", "-O", "raw", c.active, c.expected)
	return c
}

// path names a file of the chain's folder.
func (c *blockChain) path(name string) string { return filepath.Join(c.dir, name) }

// expectWrite records a guest write of n bytes of b at off in expected.raw.
func (c *blockChain) expectWrite(t *testing.T, off, n int64, b byte) {
	t.Helper()
	f, err := os.OpenFile(c.expected, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = b
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatal(err)
	}
}

// checkContent compares the guest view of img with expected.raw, with
// qemu-img compare and with qchain compare.
func (c *blockChain) checkContent(t *testing.T, bin, img string) {
	t.Helper()
	ctx := context.Background()
	if r := fixtures.Run(ctx, c.dir, "qemu-img", "compare", "-U", img, c.expected); r.ExitCode != 0 {
		t.Errorf("qemu-img compare %s expected.raw: exit %d %v: %s%s", filepath.Base(img), r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	if r := fixtures.Run(ctx, c.dir, bin, "compare", img, c.expected); r.ExitCode != 0 {
		t.Errorf("qchain compare %s expected.raw: exit %d %v: %s%s", filepath.Base(img), r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
}

// checkChain compares the on-disk chain of img (qemu-img info
// --backing-chain) with want, file names top first, and checks that every
// file of it is clean (qemu-img check exit 0).
func (c *blockChain) checkChain(t *testing.T, img string, want ...string) {
	t.Helper()
	got := diskChainFiles(t, c.dir, img)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("on-disk chain of %s: %v, want %v", filepath.Base(img), got, want)
	}
	for _, f := range got {
		checkClean(t, c.dir, f)
	}
}

// diskChainFiles lists img's chain, base names top first, as qemu-img sees it.
func diskChainFiles(t *testing.T, dir, img string) []string {
	t.Helper()
	r := fixtures.Run(context.Background(), dir, "qemu-img", "info", "-U", "--backing-chain", "--output=json", img)
	if r.ExitCode != 0 {
		t.Fatalf("%s: exit %d %v: %s", r.Cmd, r.ExitCode, r.Err, r.Stderr)
	}
	var infos []struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal(r.Stdout, &infos); err != nil {
		t.Fatalf("%s: %v", r.Cmd, err)
	}
	var out []string
	for _, i := range infos {
		out = append(out, filepath.Base(i.Filename))
	}
	return out
}

// checkClean runs qemu-img check on one file and wants exit 0.
func checkClean(t *testing.T, dir, file string) {
	t.Helper()
	if r := fixtures.Run(context.Background(), dir, "qemu-img", "check", "-U", file); r.ExitCode != 0 {
		t.Errorf("qemu-img check %s: exit %d %v: %s%s", file, r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
}

// blockVM is a qemu-system-x86_64 with no guest (-machine none) that has
// the chain open, a QMP socket for qchain and a second monitor for the
// test.
type blockVM struct {
	sock   string    // the monitor qchain uses
	mon    *qmp.Conn // the test's own monitor (guest writes, query-jobs)
	disk   string    // vda for -drive, top for -blockdev, vd0 for a device
	ioDev  string    // what HMP qemu-io writes to: a drive or, with -d, a device
	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once
	stderr *lockedBuffer
}

type vmKind int

const (
	vmDrive    vmKind = iota // -drive if=none,id=vda
	vmBlockdev               // one -blockdev per layer: base, snap1, top
	// vmDevice is vmBlockdev with a virtio-blk device (id vd0) on the top
	// node, on a q35 machine that never runs (-S): a device is what HMP
	// qemu-io can write through when there is no -drive.
	vmDevice
	// vmDeviceShared is vmDevice with share-rw=on, so that other users
	// (a writable block export) may write to the node too.
	vmDeviceShared
)

// startVM runs QEMU on c's chain. wrap, if set, is a shell command line
// prefix for QEMU (used to set resource limits).
func startVM(t *testing.T, c *blockChain, kind vmKind, wrap string) *blockVM {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	sockDir, err := os.MkdirTemp("", "qchain-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	vm := &blockVM{sock: filepath.Join(sockDir, "m1"), exited: make(chan struct{}), stderr: &lockedBuffer{}}
	s2 := filepath.Join(sockDir, "m2")
	machine := "none"
	if kind == vmDevice || kind == vmDeviceShared {
		machine = "q35,accel=tcg"
	}
	args := []string{"-machine", machine, "-nodefaults", "-display", "none",
		"-qmp", "unix:" + vm.sock + ",server=on,wait=off",
		"-qmp", "unix:" + s2 + ",server=on,wait=off"}
	switch kind {
	case vmDrive:
		args = append(args, "-drive", "if=none,id=vda,format=qcow2,file="+c.active)
		vm.disk, vm.ioDev = "vda", "vda"
	case vmBlockdev, vmDevice, vmDeviceShared:
		args = append(args,
			"-blockdev", "driver=qcow2,node-name=base,read-only=on,file.driver=file,file.filename="+c.base,
			"-blockdev", "driver=qcow2,node-name=snap1,read-only=on,backing=base,file.driver=file,file.filename="+c.snap1,
			"-blockdev", "driver=qcow2,node-name=top,backing=snap1,file.driver=file,file.filename="+c.active)
		vm.disk = "top"
		if kind == vmDevice || kind == vmDeviceShared {
			dev := "virtio-blk-pci,drive=top,id=vd0"
			if kind == vmDeviceShared {
				dev += ",share-rw=on"
			}
			args = append(args, "-S", "-device", dev)
			vm.disk, vm.ioDev = "vd0", "-d vd0/virtio-backend"
		}
	}
	name := "qemu-system-x86_64"
	if wrap != "" {
		args = append([]string{"-c", wrap + ` exec "$@"`, "sh", name}, args...)
		name = "sh"
	}
	vm.cmd = exec.Command(name, args...)
	vm.cmd.Dir = c.dir
	vm.cmd.Stderr = vm.stderr
	vm.cmd.Stdout = vm.stderr
	if err := vm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = vm.cmd.Wait(); close(vm.exited) }()
	t.Cleanup(vm.quit)

	ctx, cancel := context.WithTimeout(context.Background(), blockTimeout)
	defer cancel()
	for {
		// Each attempt bounded on its own: a connection made while qemu
		// starts must not use up the whole wait.
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := qmp.Dial(actx, s2, qmp.Options{})
		acancel()
		if err == nil {
			vm.mon = conn
			break
		}
		select {
		case <-vm.exited:
			t.Fatalf("qemu exited at start: %s", vm.stderr)
		case <-ctx.Done():
			t.Fatalf("connecting to qemu: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	for { // QEMU creates the monitors in order: the first is up too
		if _, err := os.Stat(vm.sock); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no QMP socket %s: %s", vm.sock, vm.stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return vm
}

// quit stops QEMU cleanly (its images are then complete on disk).
func (vm *blockVM) quit() {
	vm.once.Do(func() {
		if vm.mon != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = vm.mon.Quit(ctx)
			cancel()
			vm.mon.Close()
		}
		select {
		case <-vm.exited:
		case <-time.After(10 * time.Second):
			_ = vm.cmd.Process.Kill()
			<-vm.exited
		}
	})
}

// kill kills QEMU with SIGKILL.
func (vm *blockVM) kill(t *testing.T) {
	t.Helper()
	vm.once.Do(func() {
		_ = vm.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-vm.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("qemu did not die")
		}
		vm.mon.Close()
	})
}

// guestWrite writes as the guest would, through HMP qemu-io on the second
// monitor, and records it in expected.raw.
func (vm *blockVM) guestWrite(t *testing.T, c *blockChain, off, n int64, b byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), blockTimeout)
	defer cancel()
	if vm.ioDev == "" {
		t.Fatalf("guest writes need a -drive or a device")
	}
	line := fmt.Sprintf(`qemu-io %s "write -P 0x%02x %d %d"`, vm.ioDev, b, off, n)
	out, err := vm.mon.HumanMonitorCommand(ctx, line)
	if err != nil || strings.Contains(out, "rror") || strings.Contains(out, "failed") {
		t.Fatalf("%s: %v %s", line, err, out)
	}
	c.expectWrite(t, off, n, b)
}

// waitJob waits until query-jobs lists a job with status want; by, if
// set, is the qchain that starts it, which must not end first.
func (vm *blockVM) waitJob(t *testing.T, want string, by *bgQchain) qmp.JobInfo {
	t.Helper()
	deadline := time.Now().Add(blockTimeout)
	for time.Now().Before(deadline) {
		if by != nil {
			select {
			case <-by.done:
				t.Fatalf("qchain %v ended (exit %d) before its job was %s\nstdout: %s\nstderr: %s",
					by.cmd.Args[1:], by.code, want, by.stdout, by.stderr)
			default:
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		jobs, err := vm.mon.QueryJobs(ctx)
		cancel()
		if err != nil {
			t.Fatalf("query-jobs: %v", err)
		}
		for _, j := range jobs {
			if j.Status == want {
				return j
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no job reached %q within %v", want, blockTimeout)
	return qmp.JobInfo{}
}

// jobs returns query-jobs.
func (vm *blockVM) jobs(t *testing.T) []qmp.JobInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	jobs, err := vm.mon.QueryJobs(ctx)
	if err != nil {
		t.Fatalf("query-jobs: %v", err)
	}
	return jobs
}

// lockedBuffer collects QEMU's output from its goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// qchainRun runs qchain in dir and returns what it did.
func qchainRun(bin, dir string, args ...string) fixtures.Result {
	return fixtures.Run(context.Background(), dir, bin, args...)
}

// mustQchain runs qchain and fails the test unless it exits 0.
func mustQchain(t *testing.T, bin, dir string, args ...string) fixtures.Result {
	t.Helper()
	r := qchainRun(bin, dir, args...)
	if r.ExitCode != 0 {
		t.Fatalf("qchain %s: exit %d %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	return r
}

// wantOneLineError checks a failed qchain run: exit code, one line on
// stderr that contains every part of want.
func wantOneLineError(t *testing.T, r fixtures.Result, code int, want ...string) {
	t.Helper()
	msg := strings.TrimSpace(string(r.Stderr))
	if r.ExitCode != code {
		t.Errorf("%s: exit %d, want %d; stderr: %s", r.Cmd, r.ExitCode, code, msg)
	}
	if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "qchain: ") {
		t.Errorf("%s: stderr is not one qchain: line: %q", r.Cmd, msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: stderr %q does not mention %q", r.Cmd, msg, w)
		}
	}
}

// bgQchain is a qchain process running in the background.
type bgQchain struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	done           chan struct{}
	code           int
}

func startQchain(t *testing.T, bin, dir string, args ...string) *bgQchain {
	t.Helper()
	b := &bgQchain{cmd: exec.Command(bin, args...), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	b.cmd.Dir = dir
	b.cmd.Stdout, b.cmd.Stderr = b.stdout, b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = b.cmd.Wait()
		b.code = b.cmd.ProcessState.ExitCode()
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	})
	return b
}

// waitStderr waits until the process has written want to stderr.
func (b *bgQchain) waitStderr(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(blockTimeout)
	for !strings.Contains(b.stderr.String(), want) {
		select {
		case <-b.done:
			t.Fatalf("qchain %v ended (exit %d) before writing %q\nstdout: %s\nstderr: %s", b.cmd.Args[1:], b.code, want, b.stdout, b.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("qchain %v wrote no %q within %v", b.cmd.Args[1:], want, blockTimeout)
		}
	}
}

// wait waits for the process to end and returns its exit code (-1 when
// killed by a signal).
func (b *bgQchain) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-b.done:
		return b.code
	case <-time.After(blockTimeout):
		_ = b.cmd.Process.Kill()
		<-b.done
		t.Fatalf("qchain %v did not end within %v; stderr: %s", b.cmd.Args[1:], blockTimeout, b.stderr)
		return -1
	}
}

// haveStorageDaemon skips offline tests when qemu-storage-daemon is missing.
func haveStorageDaemon(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		t.Skip("qemu-storage-daemon not on PATH")
	}
}
