package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qchain/qchain/qcow2"
)

// The checkpoint reference: a minimal QMP client driving a qemu that the
// bench starts itself with the command line qchain would give it, sending
// the commands qchain sends for a checkpoint (chain/checkpoint.go,
// chain/internal.go) and nothing else: no journal, no metadata, no checks
// of the state it finds. Each operation runs in a process of its own, a
// copy of the bench in client mode (checkpointclientmain.go) started
// through the launcher, so that it pays a process start as qchain does.

// memoryFd is the name the direct client gives the memory file's
// descriptor in QEMU (getfd), as qchain does.
const memoryFd = "bench-memory"

// directVM is a qemu started with the guest's command line and the -drive
// and -qmp options qchain adds: by the bench for the boot, by a client
// process for a revert. It is known by its pid, which pidfile holds (the
// qemu a revert starts is no child of the bench), and a pid is taken for
// the VM's only while that process's command line names sock.
type directVM struct {
	command []string // the guest's command line, binary first
	sock    string
	log     string
	pidfile string
	pid     int
	// mappedRAM: this QEMU has the mapped-ram migration capability, so
	// the state is saved as qchain saves it there (file: URI).
	mappedRAM bool
}

// start starts qemu on disk, with -S -incoming defer when incoming, and
// writes its pid to pidfile. detached, it runs in a session of its own
// and outlives the process that started it (a client's revert, as qchain's
// vm start); else it is this process's child, reaped here and killed with
// it (the bench's boot).
func (d *directVM) start(disk string, incoming, detached bool) error {
	args := slices.Clone(d.command[1:])
	args = append(args, "-drive", "if=none,id=vda,file="+strings.ReplaceAll(disk, ",", ",,")+",format=qcow2",
		"-qmp", "unix:"+strings.ReplaceAll(d.sock, ",", ",,")+",server=on,wait=off")
	if incoming {
		args = append(args, "-S", "-incoming", "defer")
	}
	os.Remove(d.sock)
	logf, err := os.OpenFile(d.log, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(d.command[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// Killed with the bench, should it be interrupted.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	d.pid = cmd.Process.Pid
	if detached {
		cmd.Process.Release()
	} else {
		go cmd.Wait()
	}
	return os.WriteFile(d.pidfile, []byte(strconv.Itoa(d.pid)+"\n"), 0o600)
}

// readPid takes the pid of the VM's qemu from pidfile (0 when there is
// none).
func (d *directVM) readPid() {
	d.pid = 0
	if b, err := os.ReadFile(d.pidfile); err == nil {
		d.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
}

// alive reports whether the VM's qemu runs: pid is a process, not a
// zombie, and its command line names the socket (else the pid is another
// process's now). An empty command line is taken for qemu's: a process
// has none for a moment while execve sets it up, after exec.Cmd.Start has
// returned.
func (d *directVM) alive() bool {
	if d.pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.pid))
	return err == nil && (len(cmdline) == 0 || bytes.Contains(cmdline, []byte(d.sock)))
}

// waitExit waits up to limit for the VM's qemu to exit, on a pidfd (the
// process need not be a child), as qchain waits; it reports whether it
// did.
func (d *directVM) waitExit(limit time.Duration) bool {
	fd, err := unix.PidfdOpen(d.pid, 0)
	if err != nil {
		return !d.alive()
	}
	defer unix.Close(fd)
	if !d.alive() { // opened on another process, or a zombie
		return true
	}
	deadline := time.Now().Add(limit)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return !d.alive()
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds())+1)
		if n > 0 || err != nil && !errors.Is(err, unix.EINTR) {
			return n > 0 || !d.alive()
		}
	}
}

// gone reports whether the VM's qemu has exited, as a pidfd says: the
// kernel's word, where alive's reading of /proc was seen to take a qemu
// that went on running for gone while it started.
func (d *directVM) gone() bool {
	fd, err := unix.PidfdOpen(d.pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH) || !d.alive()
	}
	defer unix.Close(fd)
	n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	return n > 0
}

// kill ends the qemu pidfile names if it still runs and waits for it.
func (d *directVM) kill() {
	d.readPid()
	if d.alive() {
		syscall.Kill(d.pid, syscall.SIGKILL)
		d.waitExit(10 * time.Second)
	}
	d.pid = 0
}

// logTail is the last line qemu printed, for errors.
func (d *directVM) logTail() string {
	b, _ := os.ReadFile(d.log)
	return firstLines(strings.TrimSpace(string(b)), 2)
}

// dial connects to the monitor (retrying every few milliseconds while
// qemu starts), reads the greeting and negotiates capabilities.
func (d *directVM) dial() (*qmpLines, error) {
	deadline := time.Now().Add(ckWait)
	for {
		conn, err := net.Dial("unix", d.sock)
		if err == nil {
			conn.SetDeadline(deadline)
			q := &qmpLines{conn: conn, r: bufio.NewReader(conn)}
			if _, err := q.r.ReadBytes('\n'); err != nil {
				conn.Close()
				return nil, fmt.Errorf("QMP greeting: %w", err)
			}
			if _, err := q.do("qmp_capabilities", nil); err != nil {
				conn.Close()
				return nil, err
			}
			return q, nil
		}
		if d.gone() {
			return nil, fmt.Errorf("qemu exited: %s", d.logTail())
		}
		time.Sleep(2 * time.Millisecond)
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no QMP socket: %w", err)
		}
	}
}

// doFd runs a command passing f's descriptor along (getfd).
func (q *qmpLines) doFd(name string, args any, f *os.File) error {
	b, _ := json.Marshal(map[string]any{"execute": name, "arguments": args})
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return errors.New("getfd needs a unix socket")
	}
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), syscall.UnixRights(int(f.Fd())), nil); err != nil {
		return err
	}
	_, err := q.reply(name)
	return err
}

// waitMigration waits for the MIGRATION event that says the migration
// reached want (the events capability is on, as qchain sets it).
func (q *qmpLines) waitMigration(want string) error {
	return q.waitEvent(func(ev qmpEvent) (bool, error) {
		if ev.Event != "MIGRATION" {
			return false, nil
		}
		var d struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return false, err
		}
		switch d.Status {
		case want:
			return true, nil
		case "failed", "cancelled":
			return false, fmt.Errorf("migration %s", d.Status)
		}
		return false, nil
	})
}

// waitFinishMigrate waits, as qchain does, until the run state is no
// longer finish-migrate: a migration reports completed before its
// clean-up ends, and cont fails until then.
func (q *qmpLines) waitFinishMigrate() error {
	pause := time.Millisecond
	for {
		ret, err := q.do("query-status", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(ret, &st); err != nil || st.Status != "finish-migrate" {
			return err
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// runJob waits for job id's JOB_STATUS_CHANGE to concluded, reads its
// error (query-jobs) and dismisses it, as qchain does.
func (q *qmpLines) runJob(id string) error {
	for {
		err := q.waitEvent(func(ev qmpEvent) (bool, error) {
			var d struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			}
			if ev.Event != "JOB_STATUS_CHANGE" || json.Unmarshal(ev.Data, &d) != nil {
				return false, nil
			}
			return d.ID == id && d.Status == "concluded", nil
		})
		if err != nil {
			return err
		}
		ret, err := q.do("query-jobs", nil)
		if err != nil {
			return err
		}
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(ret, &jobs); err != nil {
			return err
		}
		for _, j := range jobs {
			if j.ID != id || j.Status != "concluded" {
				continue
			}
			if j.Error != "" {
				return fmt.Errorf("job %s: %s", id, j.Error)
			}
			_, err := q.do("job-dismiss", map[string]any{"id": id})
			return err
		}
	}
}

// vdaNode returns the format node of disk vda (snapshot-save and -load
// take node names, not drive ids).
func (q *qmpLines) vdaNode() (string, error) {
	ret, err := q.do("query-block", nil)
	if err != nil {
		return "", err
	}
	var devs []struct {
		Device   string `json:"device"`
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(ret, &devs); err != nil {
		return "", err
	}
	for _, d := range devs {
		if d.Device == "vda" && d.Inserted != nil {
			return d.Inserted.NodeName, nil
		}
	}
	return "", errors.New("query-block: no vda")
}

// probeMappedRAM records whether qemu has the mapped-ram capability
// (untimed: the minimal client is taken to know its QEMU).
func (d *directVM) probeMappedRAM() error {
	q, err := d.dial()
	if err != nil {
		return err
	}
	defer q.conn.Close()
	ret, err := q.do("query-migrate-capabilities", nil)
	if err != nil {
		return err
	}
	d.mappedRAM = strings.Contains(string(ret), `"mapped-ram"`)
	return nil
}

// createCheckpoint is qchain's external checkpoint with memory (not
// live): the overlay, then pause-before-switchover, stop, migrate to the
// memory file, the disk switch at the paused switchover, migrate-continue,
// fsync, cont.
func (d *directVM) createCheckpoint(overlay, backing, mem string) error {
	if err := qcow2.Create(overlay, qcow2.CreateOptions{BackingFile: backing, BackingFormat: "qcow2"}); err != nil {
		return err
	}
	q, err := d.dial()
	if err != nil {
		return err
	}
	defer q.conn.Close()
	q.keepEvents = true
	caps := []map[string]any{{"capability": "pause-before-switchover", "state": true}, {"capability": "events", "state": true}}
	if d.mappedRAM {
		caps = append(caps, map[string]any{"capability": "mapped-ram", "state": true})
	}
	if _, err := q.do("migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
		return err
	}
	if _, err := q.do("stop", nil); err != nil {
		return err
	}
	f, err := os.OpenFile(mem, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	uri := "fd:" + memoryFd
	if d.mappedRAM {
		uri = "file:" + mem
	} else if err := q.doFd("getfd", map[string]any{"fdname": memoryFd}, f); err != nil {
		return err
	}
	if _, err := q.do("migrate", map[string]any{"uri": uri}); err != nil {
		return err
	}
	if err := q.waitMigration("pre-switchover"); err != nil {
		return err
	}
	node := "bench-snap-vda"
	if _, err := q.do("blockdev-add", map[string]any{"driver": "qcow2", "node-name": node, "backing": nil,
		"file": map[string]any{"driver": "file", "filename": overlay}}); err != nil {
		return err
	}
	if _, err := q.do("transaction", map[string]any{"actions": []map[string]any{
		{"type": "blockdev-snapshot", "data": map[string]any{"node": "vda", "overlay": node}}}}); err != nil {
		return err
	}
	if _, err := q.do("migrate-continue", map[string]any{"state": "pre-switchover"}); err != nil {
		return err
	}
	if err := q.waitMigration("completed"); err != nil {
		return err
	}
	if err := q.waitFinishMigrate(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if _, err := q.do("cont", nil); err != nil {
		return err
	}
	return nil
}

// revertCheckpoint is qchain's revert to an external checkpoint of a
// running VM: quit, a new overlay on the checkpoint's disk, qemu started
// on it with -S -incoming defer, the memory file loaded (getfd +
// migrate-incoming, or file: with mapped-ram), cont.
func (d *directVM) revertCheckpoint(overlay, backing, mem string) error {
	q, err := d.dial()
	if err != nil {
		return err
	}
	q.do("quit", nil) // qemu may close the socket before replying
	q.conn.Close()
	if !d.waitExit(ckWait) {
		return errors.New("qemu did not exit after quit")
	}
	if err := qcow2.Create(overlay, qcow2.CreateOptions{BackingFile: backing, BackingFormat: "qcow2"}); err != nil {
		return err
	}
	if err := d.start(overlay, true, true); err != nil {
		return err
	}
	if q, err = d.dial(); err != nil {
		return err
	}
	defer q.conn.Close()
	q.keepEvents = true
	caps := []map[string]any{{"capability": "events", "state": true}}
	if d.mappedRAM {
		caps = append(caps, map[string]any{"capability": "mapped-ram", "state": true})
	}
	if _, err := q.do("migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
		return err
	}
	if d.mappedRAM {
		if _, err := q.do("migrate-incoming", map[string]any{"uri": "file:" + mem}); err != nil {
			return err
		}
	} else {
		f, err := os.Open(mem)
		if err != nil {
			return err
		}
		err = q.doFd("getfd", map[string]any{"fdname": memoryFd}, f)
		f.Close()
		if err != nil {
			return err
		}
		if _, err := q.do("migrate-incoming", map[string]any{"uri": "fd:" + memoryFd}); err != nil {
			return err
		}
	}
	if err := q.waitMigration("completed"); err != nil {
		return fmt.Errorf("%w: %s", err, d.logTail())
	}
	if err := q.waitFinishMigrate(); err != nil {
		return err
	}
	if _, err := q.do("cont", nil); err != nil {
		return err
	}
	return nil
}

// internalCheckpoint runs a snapshot-save job (load false) or a
// snapshot-load job and cont (load true) on vda's node, as qchain does.
func (d *directVM) internalCheckpoint(tag string, load bool) error {
	q, err := d.dial()
	if err != nil {
		return err
	}
	defer q.conn.Close()
	node, err := q.vdaNode()
	if err != nil {
		return err
	}
	q.keepEvents = true
	cmd, id := "snapshot-save", "bench-save"
	if load {
		cmd, id = "snapshot-load", "bench-load"
	}
	if _, err := q.do(cmd, map[string]any{"job-id": id, "tag": tag, "vmstate": node, "devices": []string{node}}); err != nil {
		return err
	}
	if err := q.runJob(id); err != nil {
		return err
	}
	if load {
		if _, err := q.do("cont", nil); err != nil {
			return err
		}
	}
	return nil
}

// quit asks the qemu pidfile names to quit and waits for it (kill after a
// while).
func (d *directVM) quit() {
	d.readPid()
	if !d.alive() {
		return
	}
	if q, err := d.dial(); err == nil {
		q.do("quit", nil)
		q.conn.Close()
	}
	if !d.waitExit(10 * time.Second) {
		d.kill()
	}
}

// directRun is one run of the reference: the same guest on a fresh disk,
// booted by the bench (the cold boot), then the same checkpoints as
// qchainRun's, each by a client process (runClient). The qemu running at
// the end (the revert's, started by a client) is stopped, also on failure
// or when the bench is interrupted.
func (e *ckEnv) directRun() (t, jobs [ckOps]time.Duration, err error) {
	dir, disk, err := e.newRunDir("direct")
	if err != nil {
		return t, jobs, err
	}
	defer os.RemoveAll(dir)
	console := filepath.Join(dir, "console.log")
	cmd, err := e.vmCommand(console)
	if err != nil {
		return t, jobs, err
	}
	d := &directVM{command: cmd, sock: filepath.Join(dir, "qmp.sock"), log: filepath.Join(dir, "qemu.log"),
		pidfile: filepath.Join(dir, "qemu.pid")}
	b, err := json.Marshal(cmd)
	if err != nil {
		return t, jobs, err
	}
	cmdFile := filepath.Join(dir, "command.json")
	if err := os.WriteFile(cmdFile, b, 0o600); err != nil {
		return t, jobs, err
	}
	stop := func() { (&directVM{sock: d.sock, pidfile: d.pidfile}).kill() }
	e.running.Store(&stop)
	defer func() {
		d.kill()
		e.running.Store(nil)
	}()
	start := time.Now()
	if err := d.start(disk, false, false); err != nil {
		return t, jobs, err
	}
	if err := waitReady(console, 0, d.alive); err != nil {
		return t, jobs, fmt.Errorf("%w: %s", err, d.logTail())
	}
	t[opBoot] = time.Since(start)
	if err := d.probeMappedRAM(); err != nil {
		return t, jobs, err
	}
	if err := waitRunning(console, 0, 3, false); err != nil {
		return t, jobs, err
	}
	var started time.Time // the last client's start
	client := func(op string, args ...string) (time.Duration, error) {
		argv := []string{e.client, ckClientArg, "-op", op, "-sock", d.sock, "-pidfile", d.pidfile, "-log", d.log}
		if d.mappedRAM {
			argv = append(argv, "-mapped-ram")
		}
		run, err := runTool(e.timeout, append(argv, args...))
		if err != nil {
			return 0, err
		}
		started = run.Start
		return run.Wall, nil
	}
	if e.external {
		mem := filepath.Join(dir, "vda.ext.mem")
		if t[opCreate], err = client("create", "-overlay", filepath.Join(dir, "vda.ext.qcow2"), "-backing", "vda.qcow2", "-mem", mem); err != nil {
			return t, jobs, fmt.Errorf("checkpoint: %w", err)
		}
		if jobs[opCreate], err = createSpan(dir, pidIn(d.pidfile)); err != nil {
			return t, jobs, err
		}
		if err := waitRunning(console, consoleSize(console), 3, false); err != nil {
			return t, jobs, fmt.Errorf("after the checkpoint: %w", err)
		}
		oldPid := pidIn(d.pidfile)
		w, err := watchExit(oldPid)
		if err != nil {
			return t, jobs, err
		}
		if t[opRevert], err = client("revert", "-overlay", filepath.Join(dir, "vda.revert.qcow2"), "-backing", "vda.qcow2", "-mem", mem, "-command", cmdFile); err != nil {
			return t, jobs, fmt.Errorf("revert: %w", err)
		}
		// The client started the new qemu and named it in the pid file.
		if d.readPid(); !d.alive() {
			return t, jobs, fmt.Errorf("revert: no qemu runs after it: %s", d.logTail())
		}
		if e.revert, err = revertTimes(dir, oldPid, d.pid, w, started, t[opRevert]); err != nil {
			return t, jobs, err
		}
		jobs[opRevert] = e.revert.qemu()
		if err := waitRunning(console, consoleSize(console), 3, true); err != nil {
			return t, jobs, fmt.Errorf("after the revert: %w", err)
		}
	}
	if e.internal {
		if t[opInternalSave], err = client("save", "-tag", "int"); err != nil {
			return t, jobs, fmt.Errorf("internal checkpoint: %w", err)
		}
		if jobs[opInternalSave], err = lastJobSpan(dir, pidIn(d.pidfile)); err != nil {
			return t, jobs, err
		}
		if err := waitRunning(console, consoleSize(console), 3, false); err != nil {
			return t, jobs, fmt.Errorf("after the internal checkpoint: %w", err)
		}
		if t[opInternalLoad], err = client("load", "-tag", "int"); err != nil {
			return t, jobs, fmt.Errorf("internal revert: %w", err)
		}
		if jobs[opInternalLoad], err = lastJobSpan(dir, pidIn(d.pidfile)); err != nil {
			return t, jobs, err
		}
		if err := waitRunning(console, consoleSize(console), 3, true); err != nil {
			return t, jobs, fmt.Errorf("after the internal revert: %w", err)
		}
	}
	d.quit()
	return t, jobs, nil
}
