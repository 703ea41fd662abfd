package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// QEMU's own share of a checkpoint operation, by QEMU's clock. The time a
// snapshot job takes, or a new qemu's start and the state load of an
// external revert, varies from run to run by more than the 5% the
// overhead goal allows; measured on both sides and taken out of the wall
// time, what is left is the tools' own time. Both sides run the guest with
// the same command line (vmCommand): the binary started through this
// program's exec stamp (stampMain), which notes when qemu is executed, and
// QEMU logging, with its wall-clock timestamps (-msg timestamp=on), the
// trace events below into one file per process (-D with %d).

// ckStampArg, first on the command line, switches this program into the
// exec stamp's mode: ckStampArg FILE QEMU ARGS... appends "PID UNIX-NANOS"
// to FILE and executes QEMU with ARGS in the same process.
const ckStampArg = "-qchain-bench-stamp"

// qemuTraceEvents are the events the guest's qemu logs: job state changes
// (the snapshot jobs' spans), QMP commands as they arrive and the replies
// and events QEMU sends (the greeting among them), the migration's states
// (the load's span) and device resets (the machine's reset ends qemu's
// start-up, just before its main loop runs the first QMP command; the
// monitor's own thread may greet a client before that).
var qemuTraceEvents = []string{"job_state_transition", "handle_qmp_command", "monitor_qmp_respond", "migrate_set_state", "resettable_reset"}

// The exec stamp executes qemu from the main thread: when another thread
// of a process executes a program, the process shows as a zombie for a
// moment (its leader waits for the new program to take its pid), and
// whoever watches it, the direct client for one, takes it for gone.
func init() {
	if len(os.Args) > 1 && os.Args[1] == ckStampArg {
		runtime.LockOSThread()
	}
}

// stampMain runs the exec stamp: it returns only on failure.
func stampMain(args []string) int {
	now := time.Now().UnixNano()
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "bench stamp: usage: "+ckStampArg+" FILE QEMU ARGS...")
		return 2
	}
	f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err == nil {
		_, err = fmt.Fprintf(f, "%d %d\n", os.Getpid(), now)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench stamp:", err)
		return 1
	}
	err = syscall.Exec(args[1], args[1:], os.Environ())
	fmt.Fprintf(os.Stderr, "bench stamp: executing %s: %v\n", args[1], err)
	return 1
}

// qemuTracing returns the command line prefix (the stamp and the binary)
// and the options that make a qemu in dir log what qemuSpans reads.
func qemuTracing(client, bin, dir string) (prefix, opts []string) {
	prefix = []string{client, ckStampArg, stampFile(dir), bin}
	opts = []string{"-msg", "timestamp=on"}
	for _, e := range qemuTraceEvents {
		opts = append(opts, "-trace", "enable="+e)
	}
	return prefix, append(opts, "-D", filepath.Join(dir, "qemu-%d.trace"))
}

func stampFile(dir string) string { return filepath.Join(dir, "qemu.starts") }

// traceOf is the trace file of the qemu with pid in dir.
func traceOf(dir string, pid int) string {
	return filepath.Join(dir, "qemu-"+strconv.Itoa(pid)+".trace")
}

// traceEvent is one line of a QEMU trace log: "PID@SEC.USEC:NAME REST".
type traceEvent struct {
	At   time.Time
	Name string
	Rest string
}

// readTrace reads a trace log; lines that are no event (the rest of a
// message that held a newline) are skipped.
func readTrace(path string) ([]traceEvent, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var evs []traceEvent
	for _, line := range strings.Split(string(b), "\n") {
		head, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		_, stamp, ok := strings.Cut(head, "@")
		if !ok {
			continue
		}
		sec, usec, _ := strings.Cut(stamp, ".")
		si, err1 := strconv.ParseInt(sec, 10, 64)
		ui, err2 := strconv.ParseInt(usec, 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		name, rest, _ := strings.Cut(rest, " ")
		if name == "" {
			continue
		}
		evs = append(evs, traceEvent{At: time.Unix(si, ui*1000), Name: name, Rest: rest})
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("%s: no timestamped trace events (-msg timestamp=on)", path)
	}
	return evs, nil
}

// lastJobSpan returns how long the last job in the trace of qemu pid in
// dir took from created to concluded, by QEMU's clock. Its lines look like
// "job_state_transition job 0x... (ret: 0) attempting allowed transition
// (undefined-->created)".
func lastJobSpan(dir string, pid int) (time.Duration, error) {
	trace := traceOf(dir, pid)
	evs, err := readTrace(trace)
	if err != nil {
		return 0, err
	}
	var created, concluded time.Time
	var job string
	for _, e := range evs {
		if e.Name != "job_state_transition" {
			continue
		}
		id, _, _ := strings.Cut(strings.TrimPrefix(e.Rest, "job "), " ")
		switch {
		case strings.HasSuffix(e.Rest, "-->created)"):
			created, concluded, job = e.At, time.Time{}, id
		case strings.HasSuffix(e.Rest, "-->concluded)") && id == job:
			concluded = e.At
		}
	}
	if created.IsZero() || concluded.IsZero() {
		return 0, fmt.Errorf("%s: no job from created to concluded", trace)
	}
	return concluded.Sub(created), nil
}

// isCommand reports whether e is QEMU receiving command name.
func (e traceEvent) isCommand(name string) bool {
	return e.Name == "handle_qmp_command" && strings.Contains(e.Rest, `"execute": "`+name+`"`)
}

// exitWatch notes when a process exits, on a pidfd (it need not be a
// child of the bench).
type exitWatch struct {
	done chan struct{}
	at   time.Time
}

// watchExit starts watching pid.
func watchExit(pid int) (*exitWatch, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("watching qemu (pid %d): %w", pid, err)
	}
	w := &exitWatch{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer unix.Close(fd)
		for {
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
			if n > 0 || err != nil && !errors.Is(err, unix.EINTR) {
				w.at = time.Now()
				return
			}
		}
	}()
	return w, nil
}

// exited returns when the process exited, waiting up to limit.
func (w *exitWatch) exited(limit time.Duration) (time.Time, error) {
	select {
	case <-w.done:
		return w.at, nil
	case <-time.After(limit):
		return time.Time{}, errors.New("the old qemu had not exited after the revert")
	}
}

// revertParts is an external revert, timed in parts, by QEMU's clock and
// (the old qemu's exit, the tool's start and end) the bench's. QEMU's
// own parts alternate with the tool's.
type revertParts struct {
	ToQuit  time.Duration // tool: started to quit received by the old qemu
	Exit    time.Duration // QEMU: quit received to the old qemu gone
	Between time.Duration // tool: the old qemu gone to the new one executed
	Start   time.Duration // QEMU: exec to the machine's reset (the end of its start-up)
	ToLoad  time.Duration // tool: the reset to migrate-incoming received
	Load    time.Duration // QEMU: migrate-incoming received to the state loaded
	ToCont  time.Duration // tool: the state loaded to cont received
	Cont    time.Duration // QEMU: cont received to its reply
	After   time.Duration // tool: the reply to the tool's exit
}

// qemu is QEMU's own time in the revert.
func (p revertParts) qemu() time.Duration { return p.Exit + p.Start + p.Load + p.Cont }

// revertSpan times the parts of the external revert in dir that ran from
// start to end and replaced qemu oldPid, which exited at oldExit, by
// newPid.
func revertSpan(dir string, oldPid, newPid int, start, oldExit, end time.Time) (p revertParts, err error) {
	old, err := readTrace(traceOf(dir, oldPid))
	if err != nil {
		return p, err
	}
	var quit time.Time
	for _, e := range old {
		if e.isCommand("quit") {
			quit = e.At
		}
	}
	if quit.IsZero() {
		return p, fmt.Errorf("%s: no quit received", traceOf(dir, oldPid))
	}
	p.ToQuit, p.Exit = quit.Sub(start), oldExit.Sub(quit)
	exec, err := execStamp(dir, newPid)
	if err != nil {
		return p, err
	}
	evs, err := readTrace(traceOf(dir, newPid))
	if err != nil {
		return p, err
	}
	var reset, incoming, loaded, cont, contReply time.Time
	answered := false
	for _, e := range evs {
		switch {
		case e.Name == "resettable_reset" && !answered:
			reset = e.At
		case e.Name == "monitor_qmp_respond" && strings.Contains(e.Rest, `resp: {"return"`) && !answered:
			answered = true
		case e.isCommand("migrate-incoming"):
			incoming = e.At
		case e.Name == "migrate_set_state" && strings.HasSuffix(e.Rest, " completed") && !incoming.IsZero():
			loaded = e.At
		case e.isCommand("cont"):
			cont, contReply = e.At, time.Time{}
		case e.Name == "monitor_qmp_respond" && strings.Contains(e.Rest, `resp: {"return"`) && !cont.IsZero() && contReply.IsZero():
			contReply = e.At
		}
	}
	if reset.IsZero() || loaded.IsZero() || contReply.IsZero() {
		return p, fmt.Errorf("%s: no reset before the first reply, load or cont reply", traceOf(dir, newPid))
	}
	p.Between, p.Start, p.ToLoad = exec.Sub(oldExit), reset.Sub(exec), incoming.Sub(reset)
	p.Load, p.ToCont, p.Cont, p.After = loaded.Sub(incoming), cont.Sub(loaded), contReply.Sub(cont), end.Sub(contReply)
	return p, nil
}

// execStamp returns when the exec stamp in dir started qemu pid.
func execStamp(dir string, pid int) (time.Time, error) {
	b, err := os.ReadFile(stampFile(dir))
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		var p int
		var ns int64
		if _, err := fmt.Sscan(line, &p, &ns); err == nil && p == pid {
			return time.Unix(0, ns), nil
		}
	}
	return time.Time{}, fmt.Errorf("%s: no start of pid %d", stampFile(dir), pid)
}

// pidIn reads a pid file (0 when there is none).
func pidIn(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// revertTimes times the parts of the external revert in dir that started
// at start, took wall and replaced qemu oldPid (watched by w) by newPid.
func revertTimes(dir string, oldPid, newPid int, w *exitWatch, start time.Time, wall time.Duration) (revertParts, error) {
	at, err := w.exited(5 * time.Second)
	if err != nil {
		return revertParts{}, err
	}
	return revertSpan(dir, oldPid, newPid, start, at, start.Add(wall))
}

// createSpan is QEMU's time in the last external checkpoint with memory
// that qemu pid in dir took: migrate received to the migration paused
// before the switchover (the RAM written), and migrate-continue received
// to the migration completed (the device state written). Between the two
// the tool switches the disks.
func createSpan(dir string, pid int) (time.Duration, error) {
	evs, err := readTrace(traceOf(dir, pid))
	if err != nil {
		return 0, err
	}
	var migrate, paused, cont, done time.Time
	for _, e := range evs {
		switch {
		case e.isCommand("migrate"):
			migrate, paused, cont, done = e.At, time.Time{}, time.Time{}, time.Time{}
		case e.Name == "migrate_set_state" && strings.HasSuffix(e.Rest, " pre-switchover") && !migrate.IsZero():
			paused = e.At
		case e.isCommand("migrate-continue"):
			cont = e.At
		case e.Name == "migrate_set_state" && strings.HasSuffix(e.Rest, " completed") && !cont.IsZero():
			done = e.At
		}
	}
	if paused.IsZero() || done.IsZero() {
		return 0, fmt.Errorf("%s: no migration paused before the switchover and completed", traceOf(dir, pid))
	}
	return paused.Sub(migrate) + done.Sub(cont), nil
}
