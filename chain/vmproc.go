package chain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qchain/qchain/qmp"
	"golang.org/x/sys/unix"
)

// Timeouts of the VM processes qchain starts and stops.
const (
	// DefaultStartTimeout bounds the wait for a started qemu's QMP
	// monitor.
	DefaultStartTimeout = 60 * time.Second
	// DefaultStopTimeout is how long StopVM waits for the guest to power
	// off after system_powerdown before it quits qemu.
	DefaultStopTimeout = 60 * time.Second
	// quitTimeout bounds the wait for qemu to exit after quit.
	quitTimeout = 60 * time.Second
)

// VMProcess is the state of the qemu process qchain started for a VM.
type VMProcess struct {
	// Running is true while the process lives.
	Running bool
	// PID is its process id (0 when not running).
	PID int
	// Started is when qchain started it (zero when not running).
	Started time.Time
	// Log is the file that receives qemu's output.
	Log string
}

func (st *Store) pidPath(name string) string { return filepath.Join(st.vmDir(name), "qemu.pid") }

// LogPath returns the file a started VM's qemu writes its output to.
func (st *Store) LogPath(name string) string { return filepath.Join(st.vmDir(name), "qemu.log") }

// Process returns the state of the qemu qchain started for vm: running
// while its pid file names a live process whose command line holds the
// VM's QMP socket (so a pid reused by another program does not count), or
// else while a qemu with the -qmp option qchain gives the VM lives (one a
// killed qchain started before it wrote the pid file).
func (st *Store) Process(vm *VM) VMProcess {
	p := VMProcess{Log: st.LogPath(vm.Name)}
	if pid := st.pidFile(vm); pid > 0 {
		p.Running, p.PID = true, pid
		if fi, err := os.Stat(st.pidPath(vm.Name)); err == nil {
			p.Started = fi.ModTime()
		}
		return p
	}
	if pids := qemuPIDs(vm); len(pids) > 0 {
		p.Running, p.PID = true, pids[0]
		if fi, err := os.Stat(fmt.Sprintf("/proc/%d", pids[0])); err == nil {
			p.Started = fi.ModTime()
		}
	}
	return p
}

// pidFile returns the live qemu the VM's pid file names, 0 when none.
func (st *Store) pidFile(vm *VM) int {
	b, err := os.ReadFile(st.pidPath(vm.Name))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !qemuAlive(pid, vm.QMP) {
		return 0
	}
	return pid
}

// qemuAlive reports whether pid is a live (not zombie) process whose
// command line mentions the QMP socket.
func qemuAlive(pid int, sock string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte(qemuOptEscape(sock)))
}

// qmpOption is the -qmp option value qchain starts vm's qemu with.
func qmpOption(vm *VM) string {
	return "unix:" + qemuOptEscape(vm.QMP) + ",server=on,wait=off"
}

// qemuPIDs returns every live process whose command line holds the -qmp
// option qchain starts vm's qemu with: all the qemus qchain started for
// the VM, with a pid file or not (a qchain killed between starting qemu
// and writing the pid file leaves one without), reachable through the
// socket's path or not (a later qemu takes the path over).
func qemuPIDs(vm *VM) []int {
	if vm.QMP == "" {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	opt := []byte(qmpOption(vm))
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := bytes.Split(cmdline, []byte{0})
		for i := 1; i < len(args); i++ {
			if bytes.Equal(args[i], opt) && string(args[i-1]) == "-qmp" {
				if qemuAlive(pid, vm.QMP) {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids
}

// killQemus kills (SIGKILL) every qemu of vm but keep and waits for them
// to exit: qemus a killed qchain left beside the one the VM runs in.
func (m *Manager) killQemus(vm *VM, keep int) error {
	var left []int
	for _, pid := range qemuPIDs(vm) {
		if pid != keep {
			syscall.Kill(pid, syscall.SIGKILL)
			left = append(left, pid)
		}
	}
	for _, pid := range left {
		if !waitExit(pid, vm.QMP, quitTimeout) {
			return fmt.Errorf("VM %s: qemu (pid %d) did not exit within %s of SIGKILL", vm.Name, pid, quitTimeout)
		}
	}
	return nil
}

// waitExit waits up to d for qemu pid to exit (or become a zombie).
func waitExit(pid int, sock string, d time.Duration) bool {
	if !qemuAlive(pid, sock) {
		return true
	}
	return waitPID(context.Background(), pid, d)
}

// waitPID waits up to d, or until ctx ends, for process pid to exit (or
// become a zombie), and reports whether it did. It sleeps in poll(2) on a
// pidfd, woken by the exit itself; where the kernel has no pidfd (before
// 5.3) it looks every few milliseconds.
func waitPID(ctx context.Context, pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return true
		}
		for processAlive(pid) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return false
			}
			time.Sleep(5 * time.Millisecond)
		}
		return true
	}
	defer unix.Close(fd)
	for {
		// Short slices, so that ctx is seen within 100 ms.
		left := min(time.Until(deadline), 100*time.Millisecond)
		if left <= 0 || ctx.Err() != nil {
			return !processAlive(pid)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return !processAlive(pid)
		}
		if n > 0 {
			return true
		}
	}
}

// adopt makes the qemu at the other end of conn the VM's: the pid file
// names it, and every other qemu of the VM is killed. A qchain killed while
// it started qemu may leave one without a pid file, or one whose socket
// path a second one took over.
func (m *Manager) adopt(vm *VM, conn *qmp.Conn) error {
	pid, err := conn.PeerPID()
	if err != nil {
		return fmt.Errorf("VM %s: which qemu answers on %s: %w", vm.Name, vm.QMP, err)
	}
	if !qemuAlive(pid, vm.QMP) {
		// Not one qchain started: leave it and its pid file alone.
		return nil
	}
	if m.Store.pidFile(vm) != pid {
		if err := writeAtomic(m.Store.pidPath(vm.Name), []byte(strconv.Itoa(pid)+"\n")); err != nil {
			return err
		}
	}
	return m.killQemus(vm, pid)
}

// StartOptions configure StartVM.
type StartOptions struct {
	// Paused starts the VM with its vCPUs stopped (QMP cont runs them).
	Paused bool
	// Timeout bounds the wait for the QMP monitor; zero means
	// DefaultStartTimeout.
	Timeout time.Duration
}

// StartVM starts the VM's qemu from its command line in the background
// (its own session, so it outlives qchain; output to LogPath) and returns
// once its QMP monitor answers.
func (m *Manager) StartVM(vmName string, o StartOptions) (*VMProcess, error) {
	l, err := m.Store.Lock(vmName, false)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	conn, err := m.launch(l.VM, LaunchOptions{Paused: o.Paused}, o.Timeout)
	if err != nil {
		return nil, err
	}
	conn.Close()
	p := m.Store.Process(l.VM)
	return &p, nil
}

// launch starts qemu for vm (whose disks may differ from the stored
// metadata's: a revert starts the new ones) and returns a connection to
// its monitor. It refuses a VM that runs already.
func (m *Manager) launch(vm *VM, lo LaunchOptions, timeout time.Duration) (*qmp.Conn, error) {
	args, err := vm.QemuArgs(lo)
	if err != nil {
		return nil, err
	}
	if lo.noneRunning {
		// The caller stopped the VM's qemus under the lock it holds.
	} else if p := m.Store.Process(vm); p.Running {
		return nil, fmt.Errorf("VM %s is already running (pid %d)", vm.Name, p.PID)
	}
	if conn, err := DialVM(m.ctx(), vm); err == nil {
		conn.Close()
		return nil, fmt.Errorf("VM %s is already running: its QMP socket %s answers", vm.Name, vm.QMP)
	}
	if err := Verify(vm); err != nil {
		return nil, err
	}
	os.Remove(vm.QMP) // a stale socket of a qemu that died
	logf, err := os.OpenFile(m.Store.LogPath(vm.Name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(vm.Command[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own: no signal to qchain's terminal or process
	// group reaches it, and it outlives qchain.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("VM %s: starting %s: %w", vm.Name, vm.Command[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it while this process lives
	if err := writeAtomic(m.Store.pidPath(vm.Name), []byte(strconv.Itoa(cmd.Process.Pid)+"\n")); err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(m.ctx(), timeout)
	defer cancel()
	// The socket appears some milliseconds after the exec: dial soon and
	// then less often (a revert's whole load can take less than 100 ms).
	pause := time.Millisecond
	for {
		select {
		case err := <-exited:
			os.Remove(m.Store.pidPath(vm.Name))
			return nil, fmt.Errorf("VM %s: qemu exited at start (%v): %s", vm.Name, err, m.logTail(vm.Name))
		default:
		}
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := qmp.Dial(dctx, vm.QMP, qmp.Options{})
		dcancel()
		if err == nil {
			if pid, perr := conn.PeerPID(); perr != nil || pid != cmd.Process.Pid {
				// Another process took the socket's path over: never two
				// qemus of one VM.
				conn.Close()
				cmd.Process.Kill()
				<-exited
				os.Remove(m.Store.pidPath(vm.Name))
				if perr != nil {
					return nil, fmt.Errorf("VM %s: which qemu answers on %s: %w (qemu killed)", vm.Name, vm.QMP, perr)
				}
				return nil, fmt.Errorf("VM %s: another process (pid %d) answers on its QMP socket %s, not the qemu started (qemu killed)", vm.Name, pid, vm.QMP)
			}
			return conn, nil
		}
		select {
		case <-ctx.Done():
			cmd.Process.Kill()
			<-exited
			os.Remove(m.Store.pidPath(vm.Name))
			return nil, fmt.Errorf("VM %s: qemu's QMP socket %s did not answer within %s (qemu killed): %v", vm.Name, vm.QMP, timeout, err)
		case <-time.After(pause):
			pause = min(2*pause, dialPause)
		}
	}
}

// logTail returns the last non-empty line of the VM's qemu log, for
// one-line errors.
func (m *Manager) logTail(name string) string {
	b, _ := os.ReadFile(m.Store.LogPath(name))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return "no output (log " + m.Store.LogPath(name) + ")"
	}
	return last
}

// StopOptions configure StopVM.
type StopOptions struct {
	// Timeout is how long the guest has to power off after
	// system_powerdown before qemu is told to quit; zero means
	// DefaultStopTimeout.
	Timeout time.Duration
	// Force quits qemu at once, without asking the guest.
	Force bool
}

// StopVM asks the guest to power off (system_powerdown), quits qemu when
// it has not after o.Timeout (at once with o.Force), and waits for qemu
// to exit.
func (m *Manager) StopVM(vmName string, o StopOptions) error {
	l, err := m.Store.Lock(vmName, false)
	if err != nil {
		return err
	}
	defer l.Unlock()
	return m.stopQemu(l.VM, o)
}

// errNotRunning reports a VM whose QMP socket does not answer.
var errNotRunning = errors.New("is not running")

func (m *Manager) stopQemu(vm *VM, o StopOptions) error {
	p := m.Store.Process(vm)
	conn, err := DialVM(m.ctx(), vm)
	if err != nil {
		if p.Running {
			return fmt.Errorf("VM %s: qemu (pid %d) runs but its QMP socket %s does not answer: %v", vm.Name, p.PID, vm.QMP, err)
		}
		return fmt.Errorf("VM %s %w", vm.Name, errNotRunning)
	}
	return m.stopQemuOn(vm, o, conn)
}

// stopQemuOn is stopQemu through conn, a connection to vm's monitor,
// which it closes.
func (m *Manager) stopQemuOn(vm *VM, o StopOptions, conn *qmp.Conn) error {
	defer conn.Close()
	// The qemu that answers, by its pid: the socket closes before the
	// process has exited, and the pid file may name another one.
	pid, err := conn.PeerPID()
	if err != nil {
		return fmt.Errorf("VM %s: which qemu answers on %s: %w", vm.Name, vm.QMP, err)
	}
	// Any other qemu of the VM (a killed qchain's) goes too. The search
	// reads every process's command line: it runs while this one stops
	// (none can start meanwhile, the VM is locked).
	strays := make(chan error, 1)
	go func() { strays <- m.killQemus(vm, pid) }()
	defer func() {
		if strays != nil {
			<-strays
		}
	}()
	// Gone: the monitor closed, then the process exited.
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-conn.Done():
		case <-t.C:
			return false
		case <-m.ctx().Done():
			return false
		}
		return waitPID(m.ctx(), pid, quitTimeout)
	}
	stopped := func() error {
		err := <-strays
		strays = nil
		if err != nil {
			return err
		}
		os.Remove(m.Store.pidPath(vm.Name))
		return nil
	}
	if !o.Force {
		if o.Timeout <= 0 {
			o.Timeout = DefaultStopTimeout
		}
		if err := conn.SystemPowerdown(m.ctx()); err != nil && !qmp.IsClosed(err) {
			return fmt.Errorf("VM %s: system_powerdown: %w", vm.Name, err)
		}
		if wait(o.Timeout) {
			return stopped()
		}
	}
	if err := conn.Quit(m.ctx()); err != nil && !qmp.IsClosed(err) {
		return fmt.Errorf("VM %s: quit: %w", vm.Name, err)
	}
	if !wait(quitTimeout) {
		return fmt.Errorf("VM %s: qemu (pid %d) did not exit within %s of quit", vm.Name, pid, quitTimeout)
	}
	return stopped()
}

// processAlive reports whether pid is a live process (not a zombie).
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

// Answers reports whether the VM's QMP socket answers (a VM started by
// qchain or elsewhere runs).
func (m *Manager) Answers(vm *VM) bool {
	conn, err := DialVM(m.ctx(), vm)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// dialStarted connects to the VM's monitor, waiting (up to
// DefaultStartTimeout) while a qemu qchain started still starts: a qchain
// killed right after launching it leaves one whose socket may not answer
// yet, perhaps without a pid file. The qemu that answers is adopted (the
// pid file names it) and any other of the VM killed. It fails when no
// such qemu runs.
func (m *Manager) dialStarted(vm *VM) (*qmp.Conn, error) {
	deadline := time.Now().Add(DefaultStartTimeout)
	pause := time.Millisecond
	for {
		conn, err := DialVM(m.ctx(), vm)
		if err == nil {
			if err := m.adopt(vm, conn); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		}
		if !m.Store.Process(vm).Running || time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-m.ctx().Done():
			return nil, m.ctx().Err()
		case <-time.After(pause):
			pause = min(2*pause, dialPause)
		}
	}
}

// dialPause is the longest pause between two dials of a starting qemu's
// monitor.
const dialPause = 5 * time.Millisecond
