package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StorageDaemonBinary is the program StartStorageDaemon runs when
// StorageDaemonOptions.Binary is empty; it is looked up in PATH.
const StorageDaemonBinary = "qemu-storage-daemon"

// DefaultQuitTimeout bounds how long StorageDaemon.Close waits for the
// daemon to exit after quit before killing it.
const DefaultQuitTimeout = 10 * time.Second

// exitGrace is how long a failed start waits for the daemon to exit so
// that its error message can be reported.
const exitGrace = time.Second

// stderrLimit bounds how much of the daemon's stderr is kept for error
// messages.
const stderrLimit = 64 << 10

// DaemonMallocTunables keeps the C library's allocator of a daemon qchain
// starts from handing QEMU's job buffers (512 KiB for a stream, more for a
// mirror) back to the kernel after every chunk: glibc serves such sizes
// with mmap and munmap by default, so each chunk copied touches fresh pages,
// and on hosts where a page fault is expensive (virtual machines with
// shadow page tables) an offline pull or commit took several times as long
// as qemu-img doing the same copy (7.5 s against 0.8 s for 1 GiB here).
// With these settings the buffers stay in the heap and are reused.
const DaemonMallocTunables = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"

// DaemonEnv returns env for a daemon qchain starts: env with
// GLIBC_TUNABLES set to DaemonMallocTunables, unless env sets it already
// (the user's own tuning wins).
func DaemonEnv(env []string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "GLIBC_TUNABLES=") {
			return env
		}
	}
	return append(env[:len(env):len(env)], "GLIBC_TUNABLES="+DaemonMallocTunables)
}

// StorageDaemonOptions configure StartStorageDaemon. The zero value starts
// an empty daemon from PATH with its socket in a fresh temporary folder.
type StorageDaemonOptions struct {
	// Binary is the qemu-storage-daemon program: a path, or a name looked
	// up in PATH. Empty means StorageDaemonBinary.
	Binary string
	// Blockdevs are added with --blockdev at start, each either a string
	// in QEMU's key=value syntax or a value marshalled to JSON (for
	// example a map[string]any).
	Blockdevs []any
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// SocketPath is where the QMP socket is created. Empty means a new
	// temporary folder (removed by Close).
	SocketPath string
	// Stderr, if set, also receives the daemon's stderr.
	Stderr io.Writer
	// Conn configures the QMP connection.
	Conn Options
	// QuitTimeout is how long Close waits after quit before killing the
	// daemon. Zero means DefaultQuitTimeout.
	QuitTimeout time.Duration
	// DieWithParent kills the daemon when the process that started it
	// dies (a killed qchain must not leave it holding image locks; the
	// caller's journal redoes the job instead of attaching to it).
	DieWithParent bool
	// DeathSignal is the signal DieWithParent sends; zero means SIGKILL.
	// With syscall.SIGTERM the daemon finishes the QMP command it runs,
	// then quits and closes its images cleanly: for commands that QEMU
	// does not make crash-safe (internal snapshots), which killed half-way
	// leave leaked clusters and COPIED flags qemu-img check calls errors.
	DeathSignal syscall.Signal
}

// StorageDaemon is a private qemu-storage-daemon process and a QMP
// connection to it, used to run block jobs on images no VM has open.
type StorageDaemon struct {
	// Conn is the connected QMP monitor.
	Conn *Conn
	// SocketPath is the QMP socket's path.
	SocketPath string

	cmd         *exec.Cmd
	tmpDir      string
	quitTimeout time.Duration
	exited      chan struct{}
	waitErr     error
	stderr      *tailBuffer
	closeOnce   sync.Once
	closeErr    error
}

// StartStorageDaemon runs qemu-storage-daemon with a QMP monitor on a unix
// socket (--chardev socket,...,server=on,wait=off --monitor chardev=...),
// waits for the socket, and connects. ctx bounds the start only; the
// daemon runs until Close. If the binary is missing, the error wraps
// ErrNoBinary and names the binary.
func StartStorageDaemon(ctx context.Context, opts StorageDaemonOptions) (_ *StorageDaemon, err error) {
	bin := opts.Binary
	if bin == "" {
		bin = StorageDaemonBinary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%w: %s (install it, e.g. Debian's qemu-system-common, or set StorageDaemonOptions.Binary): %w", ErrNoBinary, bin, err)
	}

	d := &StorageDaemon{quitTimeout: opts.QuitTimeout, exited: make(chan struct{}), stderr: &tailBuffer{max: stderrLimit}}
	if d.quitTimeout <= 0 {
		d.quitTimeout = DefaultQuitTimeout
	}
	sock := opts.SocketPath
	if sock == "" {
		d.tmpDir, err = os.MkdirTemp("", "qchain-qsd-")
		if err != nil {
			return nil, fmt.Errorf("qmp: storage daemon: %w", err)
		}
		sock = filepath.Join(d.tmpDir, "qmp.sock")
	}
	d.SocketPath = sock
	defer func() {
		if err != nil {
			d.kill()
			d.removeTemp()
		}
	}()

	args := []string{
		"--chardev", "socket,path=" + escapeOpt(sock) + ",server=on,wait=off,id=" + daemonMonitorID,
		"--monitor", "chardev=" + daemonMonitorID,
	}
	for _, b := range opts.Blockdevs {
		s, ok := b.(string)
		if !ok {
			js, err := json.Marshal(b)
			if err != nil {
				return nil, fmt.Errorf("qmp: storage daemon: encoding --blockdev: %w", err)
			}
			s = string(js)
		}
		args = append(args, "--blockdev", s)
	}
	args = append(args, opts.ExtraArgs...)

	d.cmd = exec.Command(path, args...)
	// Its own process group: a Ctrl-C meant for qchain must not kill the
	// daemon in the middle of a job; qchain aborts the job and quits it.
	// The daemon is not killed with its parent either, so that a job it
	// runs can be attached to again through a known SocketPath.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if opts.DieWithParent {
		d.cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		if opts.DeathSignal != 0 {
			d.cmd.SysProcAttr.Pdeathsig = opts.DeathSignal
		}
	}
	d.cmd.Env = DaemonEnv(os.Environ())
	var stderr io.Writer = d.stderr
	if opts.Stderr != nil {
		stderr = io.MultiWriter(d.stderr, opts.Stderr)
	}
	d.cmd.Stderr = stderr
	d.cmd.Stdout = stderr
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("qmp: starting %s: %w", path, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()

	// Wait for the socket: it exists once the daemon has parsed its
	// options; a daemon that fails exits instead.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: waiting for %s socket: %w", bin, ctx.Err())
		case <-d.exited:
			return nil, fmt.Errorf("qmp: %s exited at start (%v): %s", bin, d.waitErr, d.stderr.String())
		case <-tick.C:
		}
	}
	// The socket file appears at bind(), a moment before listen():
	// retry a refused connection until the daemon listens.
	for {
		d.Conn, err = Dial(ctx, sock, opts.Conn)
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			// The monitor is set up before the block devices, so a
			// daemon that fails on a --blockdev may have accepted the
			// connection and then exited: prefer its own message.
			select {
			case <-d.exited:
				return nil, fmt.Errorf("qmp: %s exited at start (%v): %s", bin, d.waitErr, d.stderr.String())
			case <-time.After(exitGrace):
			}
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-d.exited:
			return nil, fmt.Errorf("qmp: %s exited at start (%v): %s", bin, d.waitErr, d.stderr.String())
		case <-tick.C:
		}
	}
}

// escapeOpt doubles commas, QEMU's escape inside a key=value option.
func escapeOpt(s string) string {
	return string(bytes.ReplaceAll([]byte(s), []byte(","), []byte(",,")))
}

// Pid returns the daemon's process id.
func (d *StorageDaemon) Pid() int { return d.cmd.Process.Pid }

// Exited returns a channel closed when the daemon process has exited.
func (d *StorageDaemon) Exited() <-chan struct{} { return d.exited }

// Stderr returns the last part of what the daemon wrote to stderr.
func (d *StorageDaemon) Stderr() string { return d.stderr.String() }

// Close asks the daemon to quit over QMP, waits up to the quit timeout (or
// ctx's end, whichever is first) for it to exit, kills it otherwise, and
// removes the temporary socket folder. Jobs still running are cancelled
// by the daemon's exit. Close may be called more than once.
func (d *StorageDaemon) Close(ctx context.Context) error {
	d.closeOnce.Do(func() {
		defer d.removeTemp()
		ctx, cancel := context.WithTimeout(ctx, d.quitTimeout)
		defer cancel()
		if d.Conn != nil {
			quitErr := d.Conn.Quit(ctx)
			_ = d.Conn.Disconnect()
			if quitErr != nil && !errors.Is(quitErr, context.DeadlineExceeded) {
				d.closeErr = quitErr
			}
		}
		select {
		case <-d.exited:
			return
		case <-ctx.Done():
		}
		d.kill()
		if d.closeErr == nil {
			d.closeErr = fmt.Errorf("qmp: storage daemon pid %d did not quit, killed", d.cmd.Process.Pid)
		}
	})
	return d.closeErr
}

// Kill ends the daemon with SIGKILL, without asking it to quit, as the
// death of its parent does (DieWithParent): what it held in memory (jobs,
// bitmaps not yet stored) is lost. Tests use it to play a crash; Close
// after Kill does nothing.
func (d *StorageDaemon) Kill() {
	d.closeOnce.Do(func() {
		defer d.removeTemp()
		d.kill()
		if d.Conn != nil {
			_ = d.Conn.Disconnect()
		}
	})
}

func (d *StorageDaemon) kill() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
}

func (d *StorageDaemon) removeTemp() {
	if d.tmpDir != "" {
		_ = os.RemoveAll(d.tmpDir)
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.buf))
}

// daemonMonitorID is the chardev id of the monitor of every storage
// daemon StartStorageDaemon starts: DaemonsOn tells them by it.
const daemonMonitorID = "qchain-mon"

// DaemonsOn returns the pids of live storage daemons that
// StartStorageDaemon started, in this process or any other, whose
// --blockdev options open one of files (absolute paths). A qchain that
// dies leaves such a daemon to quit on its own (DieWithParent): the
// daemon may still hold its images' locks for a moment, and may even
// open them only after its parent died (it reads its options in order,
// the monitor's first).
func DaemonsOn(files []string) []int {
	if len(files) == 0 {
		return nil
	}
	var needles [][]byte
	for _, f := range files {
		js, err := json.Marshal(f)
		if err != nil {
			continue
		}
		needles = append(needles, append([]byte(`"filename":`), js...))
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	mon := []byte("id=" + daemonMonitorID)
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, mon) {
			continue
		}
		args := bytes.Split(cmdline, []byte{0})
		ours, opens := false, false
		for i := 1; i < len(args); i++ {
			switch string(args[i-1]) {
			case "--chardev":
				ours = ours || bytes.HasSuffix(args[i], mon)
			case "--blockdev":
				for _, n := range needles {
					opens = opens || bytes.Contains(args[i], n)
				}
			}
		}
		if ours && opens && processLive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// processLive reports whether pid is a live process (not a zombie).
func processLive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}
