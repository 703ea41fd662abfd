package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/qchain/qchain/qcow2"
)

// The checkpoint reference: a minimal QMP client driving a qemu that the
// bench starts itself with the command line qchain would give it, sending
// the commands qchain sends for a checkpoint (chain/checkpoint.go,
// chain/internal.go) and nothing else: no journal, no metadata, no checks
// of the state it finds.

// directPoll is how often the direct client polls a migration or a job.
const directPoll = 10 * time.Millisecond

// memoryFd is the name the direct client gives the memory file's
// descriptor in QEMU (getfd), as qchain does.
const memoryFd = "bench-memory"

// directVM is a qemu the bench started with the guest's command line and
// the -drive and -qmp options qchain adds.
type directVM struct {
	command []string // the guest's command line, binary first
	sock    string
	log     string
	proc    *exec.Cmd
	exited  chan struct{}
	// mappedRAM: this QEMU has the mapped-ram migration capability, so
	// the state is saved as qchain saves it there (file: URI).
	mappedRAM bool
}

// start starts qemu on disk, with -S -incoming defer when incoming.
func (d *directVM) start(disk string, incoming bool) error {
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
	d.proc = exec.Command(d.command[0], args...)
	d.proc.Stdout, d.proc.Stderr = logf, logf
	// Killed with the bench, should it be interrupted.
	d.proc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.proc.Start(); err != nil {
		return err
	}
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		close(exited)
	}(d.proc, d.exited)
	return nil
}

// kill ends qemu if it still runs and waits for it.
func (d *directVM) kill() {
	if d.proc == nil {
		return
	}
	d.proc.Process.Kill()
	<-d.exited
	d.proc = nil
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
		select {
		case <-d.exited:
			return nil, fmt.Errorf("qemu exited: %s", d.logTail())
		case <-time.After(2 * time.Millisecond):
		}
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

// waitMigration polls query-migrate until the migration reaches want.
func (q *qmpLines) waitMigration(want string) error {
	for {
		ret, err := q.do("query-migrate", nil)
		if err != nil {
			return err
		}
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(ret, &mi); err != nil {
			return err
		}
		switch mi.Status {
		case want:
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		time.Sleep(directPoll)
	}
}

// runJob polls query-jobs until job id concludes, then dismisses it.
func (q *qmpLines) runJob(id string) error {
	for {
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
		time.Sleep(directPoll)
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
func (d *directVM) createCheckpoint(overlay, backing, mem string) (time.Duration, error) {
	start := time.Now()
	if err := qcow2.Create(overlay, qcow2.CreateOptions{BackingFile: backing, BackingFormat: "qcow2"}); err != nil {
		return 0, err
	}
	q, err := d.dial()
	if err != nil {
		return 0, err
	}
	defer q.conn.Close()
	caps := []map[string]any{{"capability": "pause-before-switchover", "state": true}}
	if d.mappedRAM {
		caps = append(caps, map[string]any{"capability": "mapped-ram", "state": true})
	}
	if _, err := q.do("migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
		return 0, err
	}
	if _, err := q.do("stop", nil); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(mem, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	uri := "fd:" + memoryFd
	if d.mappedRAM {
		uri = "file:" + mem
	} else if err := q.doFd("getfd", map[string]any{"fdname": memoryFd}, f); err != nil {
		return 0, err
	}
	if _, err := q.do("migrate", map[string]any{"uri": uri}); err != nil {
		return 0, err
	}
	if err := q.waitMigration("pre-switchover"); err != nil {
		return 0, err
	}
	node := "bench-snap-vda"
	if _, err := q.do("blockdev-add", map[string]any{"driver": "qcow2", "node-name": node, "backing": nil,
		"file": map[string]any{"driver": "file", "filename": overlay}}); err != nil {
		return 0, err
	}
	if _, err := q.do("transaction", map[string]any{"actions": []map[string]any{
		{"type": "blockdev-snapshot", "data": map[string]any{"node": "vda", "overlay": node}}}}); err != nil {
		return 0, err
	}
	if _, err := q.do("migrate-continue", map[string]any{"state": "pre-switchover"}); err != nil {
		return 0, err
	}
	if err := q.waitMigration("completed"); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	if _, err := q.do("cont", nil); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// revertCheckpoint is qchain's revert to an external checkpoint of a
// running VM: quit, a new overlay on the checkpoint's disk, qemu started
// on it with -S -incoming defer, the memory file loaded (getfd +
// migrate-incoming, or file: with mapped-ram), cont.
func (d *directVM) revertCheckpoint(overlay, backing, mem string) (time.Duration, error) {
	start := time.Now()
	q, err := d.dial()
	if err != nil {
		return 0, err
	}
	q.do("quit", nil) // qemu may close the socket before replying
	q.conn.Close()
	select {
	case <-d.exited:
		d.proc = nil
	case <-time.After(ckWait):
		return 0, errors.New("qemu did not exit after quit")
	}
	if err := qcow2.Create(overlay, qcow2.CreateOptions{BackingFile: backing, BackingFormat: "qcow2"}); err != nil {
		return 0, err
	}
	if err := d.start(overlay, true); err != nil {
		return 0, err
	}
	if q, err = d.dial(); err != nil {
		return 0, err
	}
	defer q.conn.Close()
	if d.mappedRAM {
		if _, err := q.do("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{{"capability": "mapped-ram", "state": true}}}); err != nil {
			return 0, err
		}
		if _, err := q.do("migrate-incoming", map[string]any{"uri": "file:" + mem}); err != nil {
			return 0, err
		}
	} else {
		f, err := os.Open(mem)
		if err != nil {
			return 0, err
		}
		err = q.doFd("getfd", map[string]any{"fdname": memoryFd}, f)
		f.Close()
		if err != nil {
			return 0, err
		}
		if _, err := q.do("migrate-incoming", map[string]any{"uri": "fd:" + memoryFd}); err != nil {
			return 0, err
		}
	}
	if err := q.waitMigration("completed"); err != nil {
		return 0, fmt.Errorf("%w: %s", err, d.logTail())
	}
	if _, err := q.do("cont", nil); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// internalCheckpoint runs a snapshot-save job (load false) or a
// snapshot-load job and cont (load true) on vda's node, as qchain does.
func (d *directVM) internalCheckpoint(tag string, load bool) (time.Duration, error) {
	start := time.Now()
	q, err := d.dial()
	if err != nil {
		return 0, err
	}
	defer q.conn.Close()
	node, err := q.vdaNode()
	if err != nil {
		return 0, err
	}
	cmd, id := "snapshot-save", "bench-save"
	if load {
		cmd, id = "snapshot-load", "bench-load"
	}
	if _, err := q.do(cmd, map[string]any{"job-id": id, "tag": tag, "vmstate": node, "devices": []string{node}}); err != nil {
		return 0, err
	}
	if err := q.runJob(id); err != nil {
		return 0, err
	}
	if load {
		if _, err := q.do("cont", nil); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// quit asks qemu to quit and waits for it (kill after a while).
func (d *directVM) quit() {
	if d.proc == nil {
		return
	}
	if q, err := d.dial(); err == nil {
		q.do("quit", nil)
		q.conn.Close()
	}
	select {
	case <-d.exited:
		d.proc = nil
	case <-time.After(10 * time.Second):
		d.kill()
	}
}

// directRun is one run of the reference: the same guest on a fresh disk,
// booted by the bench (the cold boot), then the same checkpoints as
// qchainRun's through the direct client. qemu is stopped at the end, also
// on failure.
func (e *ckEnv) directRun() (t [ckOps]time.Duration, err error) {
	dir, disk, err := e.newRunDir("direct")
	if err != nil {
		return t, err
	}
	defer os.RemoveAll(dir)
	console := filepath.Join(dir, "console.log")
	cmd, err := e.vmCommand(console)
	if err != nil {
		return t, err
	}
	d := &directVM{command: cmd, sock: filepath.Join(dir, "qmp.sock"), log: filepath.Join(dir, "qemu.log")}
	defer d.kill()
	start := time.Now()
	if err := d.start(disk, false); err != nil {
		return t, err
	}
	if err := waitReady(console, 0, d.exited); err != nil {
		return t, fmt.Errorf("%w: %s", err, d.logTail())
	}
	t[opBoot] = time.Since(start)
	if err := d.probeMappedRAM(); err != nil {
		return t, err
	}
	if err := waitRunning(console, 0, 3, false); err != nil {
		return t, err
	}
	if e.external {
		mem := filepath.Join(dir, "vda.ext.mem")
		if t[opCreate], err = d.createCheckpoint(filepath.Join(dir, "vda.ext.qcow2"), "vda.qcow2", mem); err != nil {
			return t, fmt.Errorf("checkpoint: %w", err)
		}
		if err := waitRunning(console, consoleSize(console), 3, false); err != nil {
			return t, fmt.Errorf("after the checkpoint: %w", err)
		}
		if t[opRevert], err = d.revertCheckpoint(filepath.Join(dir, "vda.revert.qcow2"), "vda.qcow2", mem); err != nil {
			return t, fmt.Errorf("revert: %w", err)
		}
		if err := waitRunning(console, consoleSize(console), 3, true); err != nil {
			return t, fmt.Errorf("after the revert: %w", err)
		}
	}
	if e.internal {
		if t[opInternalSave], err = d.internalCheckpoint("int", false); err != nil {
			return t, fmt.Errorf("internal checkpoint: %w", err)
		}
		if err := waitRunning(console, consoleSize(console), 3, false); err != nil {
			return t, fmt.Errorf("after the internal checkpoint: %w", err)
		}
		if t[opInternalLoad], err = d.internalCheckpoint("int", true); err != nil {
			return t, fmt.Errorf("internal revert: %w", err)
		}
		if err := waitRunning(console, consoleSize(console), 3, true); err != nil {
			return t, fmt.Errorf("after the internal revert: %w", err)
		}
	}
	d.quit()
	return t, nil
}
