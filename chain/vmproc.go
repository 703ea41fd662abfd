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
// VM's QMP socket (so a pid reused by another program does not count).
func (st *Store) Process(vm *VM) VMProcess {
	p := VMProcess{Log: st.LogPath(vm.Name)}
	b, err := os.ReadFile(st.pidPath(vm.Name))
	if err != nil {
		return p
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !qemuAlive(pid, vm.QMP) {
		return p
	}
	p.Running, p.PID = true, pid
	if fi, err := os.Stat(st.pidPath(vm.Name)); err == nil {
		p.Started = fi.ModTime()
	}
	return p
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
	if p := m.Store.Process(vm); p.Running {
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
			return conn, nil
		}
		select {
		case <-ctx.Done():
			cmd.Process.Kill()
			<-exited
			os.Remove(m.Store.pidPath(vm.Name))
			return nil, fmt.Errorf("VM %s: qemu's QMP socket %s did not answer within %s (qemu killed): %v", vm.Name, vm.QMP, timeout, err)
		case <-time.After(50 * time.Millisecond):
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
	defer conn.Close()
	gone := func() bool {
		select {
		case <-conn.Done():
			return !p.Running || !qemuAlive(p.PID, vm.QMP)
		default:
			return false
		}
	}
	wait := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			if gone() {
				return true
			}
			select {
			case <-m.ctx().Done():
				return false
			case <-time.After(50 * time.Millisecond):
			}
		}
		return gone()
	}
	if !o.Force {
		if o.Timeout <= 0 {
			o.Timeout = DefaultStopTimeout
		}
		if err := conn.SystemPowerdown(m.ctx()); err != nil && !qmp.IsClosed(err) {
			return fmt.Errorf("VM %s: system_powerdown: %w", vm.Name, err)
		}
		if wait(o.Timeout) {
			os.Remove(m.Store.pidPath(vm.Name))
			return nil
		}
	}
	if err := conn.Quit(m.ctx()); err != nil {
		return fmt.Errorf("VM %s: quit: %w", vm.Name, err)
	}
	if !wait(quitTimeout) {
		return fmt.Errorf("VM %s: qemu did not exit within %s of quit", vm.Name, quitTimeout)
	}
	os.Remove(m.Store.pidPath(vm.Name))
	return nil
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
// yet. It fails when no such qemu runs.
func (m *Manager) dialStarted(vm *VM) (*qmp.Conn, error) {
	deadline := time.Now().Add(DefaultStartTimeout)
	for {
		conn, err := DialVM(m.ctx(), vm)
		if err == nil {
			return conn, nil
		}
		if !m.Store.Process(vm).Running || time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-m.ctx().Done():
			return nil, m.ctx().Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
