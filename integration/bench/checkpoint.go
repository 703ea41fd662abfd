package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qchain/qchain/fixtures/guest"
)

// Checkpoint cases (issue 10): whole-VM checkpoints of the real test guest
// (fixtures/guest) that qchain starts itself, through the CLI, against a
// minimal QMP client sending the commands qchain sends (chain/checkpoint.go,
// chain/internal.go) to a qemu started with the same command line, one
// process per operation timed as qchain's are, and against a cold boot of
// the same guest to its READY line. Each run starts from a fresh disk and
// a fresh state folder, and every qemu started is stopped, also when a run
// fails.

// internalRevertGoal is the goal for reverting an internal
// checkpoint of a running VM: well under a second.
const internalRevertGoal = time.Second

// ckRun is the guest's records workload: run id and the pause after each
// record, which leaves the host's CPUs to qemu's migration thread.
const (
	ckRun   = "bench"
	ckDelay = 20 * time.Millisecond
)

// ckWait bounds every wait for the guest (a boot under TCG, a few records).
const ckWait = 3 * time.Minute

// ckOp is one timed operation of a checkpoint run.
type ckOp int

const (
	opBoot         ckOp = iota // qemu start to the READY line
	opCreate                   // external checkpoint with memory
	opRevert                   // revert to it, the VM running
	opInternalSave             // internal checkpoint
	opInternalLoad             // revert to it, the VM running
	ckOps
)

// ckCase is one row of the checkpoint table.
type ckCase struct {
	Name string
	Op   ckOp
}

// CheckpointResult is what the runs of one guest memory size gave: per
// operation, qchain's and the direct client's timed runs.
type CheckpointResult struct {
	MemMiB         int
	Cases          []ckCase
	Qchain, Direct [ckOps]Sample
	// QchainJob and DirectJob are, per run, QEMU's own time in an
	// operation, by QEMU's clock: an internal one's snapshot job (created
	// to concluded), an external revert's parts (revertParts).
	QchainJob, DirectJob [ckOps][]time.Duration
	// Reverts are the external reverts in parts, qchain's then the
	// client's.
	Reverts [2][]revertParts
	Err     error
}

// ckCases returns the rows for a guest of mem MiB.
func ckCases(mem int) []ckCase {
	g := fmt.Sprintf(", %d MiB guest", mem)
	return []ckCase{
		{"checkpoint: cold boot to READY (vm start vs qemu start)" + g, opBoot},
		{"checkpoint create --memory (external), qchain vs direct QMP" + g, opCreate},
		{"checkpoint revert (external), qchain vs direct QMP" + g, opRevert},
		{"checkpoint create --internal, qchain vs direct QMP" + g, opInternalSave},
		{"checkpoint revert (internal), qchain vs direct QMP" + g, opInternalLoad},
	}
}

// ckEnv is what every run of one memory size shares.
type ckEnv struct {
	qchain string
	// client is the bench's own binary, copied, that runs the direct
	// client's operations (checkpointclientmain.go).
	client  string
	fixture *guest.Fixture
	mem     int
	work    string
	timeout time.Duration
	// external and internal say which operations the -run filter chose.
	external, internal bool
	// running stops the qemu of the run in progress when the bench is
	// interrupted: qchain's and the one a client's revert started run in
	// sessions of their own and would outlive it.
	running *atomic.Pointer[func()]
	// revert is the last run's external revert, in parts.
	revert revertParts
}

// runCheckpointBench measures the checkpoint cases the filter selects:
// guests of 256 MiB and 1 GiB (256 MiB only with quick), one untimed run
// of each side first (none with quick), then runs timed runs of each,
// alternating which side goes first. ok is false when the guest cannot be
// built.
func runCheckpointBench(qchain string, runs int, quick bool, timeout time.Duration, selected func(string) bool, qemu string) (results []*CheckpointResult, ok bool) {
	mems := []int{256, 1024}
	if quick {
		mems = mems[:1]
	}
	type plan struct {
		mem                int
		cases              []ckCase
		external, internal bool
	}
	var plans []plan
	for _, mem := range mems {
		p := plan{mem: mem}
		for _, c := range ckCases(mem) {
			if !selected(c.Name) {
				continue
			}
			p.cases = append(p.cases, c)
			switch c.Op {
			case opCreate, opRevert:
				p.external = true
			case opInternalSave, opInternalLoad:
				p.internal = true
			}
		}
		if len(p.cases) > 0 {
			plans = append(plans, p)
		}
	}
	if len(plans) == 0 {
		return nil, true
	}
	fmt.Printf("\n## Checkpoints of the test guest (%s)\n", qemu)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	f, err := guest.Build(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: building the test guest:", err)
		return nil, false
	}
	work, err := ckWorkDir(mems[len(plans)-1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return nil, false
	}
	defer os.RemoveAll(work)
	client, err := copyClient()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: the direct client's binary:", err)
		return nil, false
	}
	defer os.RemoveAll(filepath.Dir(client))
	// Interrupted, the bench stops the qemu of the run in progress before
	// it exits.
	var running atomic.Pointer[func()]
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	stop := make(chan struct{})
	defer func() { signal.Stop(sigs); close(stop) }()
	go func() {
		select {
		case sig := <-sigs:
			if stop := running.Load(); stop != nil {
				(*stop)()
			}
			os.RemoveAll(work)
			os.RemoveAll(filepath.Dir(client))
			fmt.Fprintf(os.Stderr, "bench: %v: stopped\n", sig)
			os.Exit(2)
		case <-stop:
		}
	}()
	fmt.Printf("- guest: %s, %s; records workload (one record every %v at most), fresh 64 MiB vda each run\n", f.Kernel, f.Initrd, ckDelay)
	fmt.Printf("- work folder: %s (fresh state folder and disk each run, removed after it)\n", work)
	warm := 1
	if quick {
		warm = 0
	}
	fmt.Printf("- %d untimed run(s) of each side, then %d timed runs each, alternating which side goes first\n", warm, runs)
	fmt.Println("- qchain: vm define + vm start (untimed define), snapshot create --memory, snapshot revert --force, snapshot create --internal, snapshot revert --force")
	fmt.Println("- direct QMP client: qemu started by the bench with the command line qchain gives it; per operation a process (this bench's binary in client mode, copied to " + client + ", " + linkage(client) + "), started and timed through the same launcher as qchain, that connects (greeting, qmp_capabilities) and sends the commands qchain sends, waiting on QEMU's events (MIGRATION, JOB_STATUS_CHANGE) as qchain does")
	for _, p := range plans {
		env := &ckEnv{qchain: qchain, client: client, fixture: f, mem: p.mem, work: work, timeout: timeout, external: p.external, internal: p.internal, running: &running}
		r := &CheckpointResult{MemMiB: p.mem, Cases: p.cases}
		results = append(results, r)
		fmt.Printf("\n%d MiB guest:\n", p.mem)
		for i := -warm; i < runs && r.Err == nil; i++ {
			for k := 0; k < 2; k++ {
				side := k
				if i%2 != 0 {
					side = 1 - k
				}
				run, what := env.qchainRun, "qchain"
				if side == 1 {
					run, what = env.directRun, "direct"
				}
				env.revert = revertParts{}
				times, jobs, err := run()
				if err != nil {
					r.Err = fmt.Errorf("%s run: %w", what, err)
					break
				}
				fmt.Printf("    %s run %d: %s\n", what, i+1, fmtOps(times, jobs, p.external, p.internal))
				if i < 0 {
					continue
				}
				dst, dstJob := &r.Qchain, &r.QchainJob
				if side == 1 {
					dst, dstJob = &r.Direct, &r.DirectJob
				}
				if env.revert != (revertParts{}) {
					r.Reverts[side] = append(r.Reverts[side], env.revert)
				}
				for op, d := range times {
					if d > 0 {
						dst[op].Walls = append(dst[op].Walls, d)
					}
					if jobs[op] > 0 {
						dstJob[op] = append(dstJob[op], jobs[op])
					}
				}
			}
		}
		if r.Err != nil {
			fmt.Printf("    ERROR: %v\n", r.Err)
		}
	}
	return results, true
}

func fmtOps(t, jobs [ckOps]time.Duration, external, internal bool) string {
	op := func(name string, o ckOp) string {
		s := fmt.Sprintf(", %s %v", name, t[o].Round(time.Millisecond))
		if jobs[o] > 0 {
			s += fmt.Sprintf(" (QEMU %v)", jobs[o].Round(time.Millisecond))
		}
		return s
	}
	s := "boot " + t[opBoot].Round(time.Millisecond).String()
	if external {
		s += op("create", opCreate) + op("revert", opRevert)
	}
	if internal {
		s += op("internal save", opInternalSave) + op("load", opInternalLoad)
	}
	return s
}

// ckWorkDir makes the folder the runs work in: on /dev/shm when it has
// room for a disk and two memory states of a guest of mem MiB (the host
// disk's write-back would add its own noise), else under $TMPDIR.
func ckWorkDir(mem int) (string, error) {
	need := uint64(3*mem+256) << 20
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Bavail*uint64(st.Bsize) > need {
		if d, err := os.MkdirTemp("/dev/shm", "qchain-bench-ck-"); err == nil {
			return d, nil
		}
	}
	return os.MkdirTemp("", "qchain-bench-ck-")
}

// vmCommand returns the guest's command line (binary first) with its
// console appended to console, started through the exec stamp and logging
// QEMU's trace events into the console's folder (qemutrace.go).
func (e *ckEnv) vmCommand(console string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ckWait)
	defer cancel()
	cmd, err := guest.VMCommand(ctx, guest.Options{Fixture: e.fixture, MemoryMiB: e.mem,
		Disks: []guest.Disk{{Path: "unused"}}, Workload: guest.Workload{Run: ckRun, Delay: ckDelay}}, console)
	if err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(cmd[0])
	if err != nil {
		return nil, err
	}
	prefix, opts := qemuTracing(e.client, bin, filepath.Dir(console))
	return append(append(prefix, cmd[1:]...), opts...), nil
}

// newRunDir makes a fresh folder with an empty 64 MiB vda.qcow2.
func (e *ckEnv) newRunDir(side string) (dir, disk string, err error) {
	if dir, err = os.MkdirTemp(e.work, side+"-"); err != nil {
		return "", "", err
	}
	disk = filepath.Join(dir, "vda.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("qemu-img create: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return dir, disk, nil
}

// consoleSize is how much the console log holds: where to read on from.
func consoleSize(console string) int64 {
	fi, err := os.Stat(console)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// waitReady polls the console from offset on for the READY line, every
// few milliseconds (the cold boot is timed to it); alive, when not nil,
// says whether qemu still runs.
func waitReady(console string, offset int64, alive func() bool) error {
	deadline := time.Now().Add(ckWait)
	for {
		if c, err := guest.ReadConsoleLog(console, ckRun, offset); err == nil {
			if c.Failed != "" {
				return fmt.Errorf("guest: %s", c.Failed)
			}
			if c.Readies > 0 {
				return nil
			}
		}
		if alive != nil && !alive() {
			return errors.New("qemu exited before the guest was ready")
		}
		time.Sleep(5 * time.Millisecond)
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest was not ready within %s", ckWait)
		}
	}
}

// waitRunning waits until the guest acknowledged n records after offset,
// and refuses a boot there: after a revert the guest must run on from the
// restored RAM, not start again.
func waitRunning(console string, offset int64, n int, afterRevert bool) error {
	deadline := time.Now().Add(ckWait)
	for {
		c, err := guest.ReadConsoleLog(console, ckRun, offset)
		if err == nil {
			switch {
			case c.Failed != "":
				return fmt.Errorf("guest: %s", c.Failed)
			case afterRevert && c.Readies > 0:
				return errors.New("the guest booted after the revert: its memory was not restored")
			case c.Ended != "":
				return fmt.Errorf("the workload ended: %s", c.Ended)
			case len(c.Acks) >= n:
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest did not acknowledge %d records within %s", n, ckWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// qchainRun is one run through the CLI: define and start the VM, wait
// until it writes records, then take and revert the checkpoints, waiting
// for records after each. The VM is stopped (killed if need be) at the
// end.
func (e *ckEnv) qchainRun() (t, jobs [ckOps]time.Duration, err error) {
	dir, disk, err := e.newRunDir("qchain")
	if err != nil {
		return t, jobs, err
	}
	defer os.RemoveAll(dir)
	state, console := filepath.Join(dir, "state"), filepath.Join(dir, "console.log")
	pidFile := filepath.Join(state, "vms", ckRun, "qemu.pid")
	cmd, err := e.vmCommand(console)
	if err != nil {
		return t, jobs, err
	}
	var started time.Time // the last q's start
	q := func(args ...string) (time.Duration, error) {
		argv := append([]string{e.qchain, args[0], args[1], "--state-dir", state}, args[2:]...)
		run, err := runTool(e.timeout, argv)
		if err != nil {
			return 0, err
		}
		started = run.Start
		return run.Wall, nil
	}
	if _, err := q(append([]string{"vm", "define", "--disk", "vda=" + disk, ckRun, "--"}, cmd...)...); err != nil {
		return t, jobs, err
	}
	stop := func() { killStarted(state, ckRun) }
	e.running.Store(&stop)
	defer func() {
		q("vm", "stop", "--force", ckRun)
		killStarted(state, ckRun)
		e.running.Store(nil)
	}()
	start := time.Now()
	if _, err := q("vm", "start", ckRun); err != nil {
		return t, jobs, err
	}
	if err := waitReady(console, 0, nil); err != nil {
		return t, jobs, err
	}
	t[opBoot] = time.Since(start)
	if err := waitRunning(console, 0, 3, false); err != nil {
		return t, jobs, err
	}
	if e.external {
		if t[opCreate], err = q("snapshot", "create", "--memory", ckRun, "ext"); err != nil {
			return t, jobs, err
		}
		if jobs[opCreate], err = createSpan(dir, pidIn(pidFile)); err != nil {
			return t, jobs, err
		}
		if err := waitRunning(console, consoleSize(console), 3, false); err != nil {
			return t, jobs, fmt.Errorf("after the checkpoint: %w", err)
		}
		oldPid := pidIn(pidFile)
		w, err := watchExit(oldPid)
		if err != nil {
			return t, jobs, err
		}
		if t[opRevert], err = q("snapshot", "revert", "--force", ckRun, "ext"); err != nil {
			return t, jobs, err
		}
		if e.revert, err = revertTimes(dir, oldPid, pidIn(pidFile), w, started, t[opRevert]); err != nil {
			return t, jobs, err
		}
		jobs[opRevert] = e.revert.qemu()
		if err := waitRunning(console, consoleSize(console), 3, true); err != nil {
			return t, jobs, fmt.Errorf("after the revert: %w", err)
		}
	}
	if e.internal {
		if t[opInternalSave], err = q("snapshot", "create", "--memory", "--internal", ckRun, "int"); err != nil {
			return t, jobs, err
		}
		if jobs[opInternalSave], err = lastJobSpan(dir, pidIn(pidFile)); err != nil {
			return t, jobs, err
		}
		if err := waitRunning(console, consoleSize(console), 3, false); err != nil {
			return t, jobs, fmt.Errorf("after the internal checkpoint: %w", err)
		}
		if t[opInternalLoad], err = q("snapshot", "revert", "--force", ckRun, "int"); err != nil {
			return t, jobs, err
		}
		if jobs[opInternalLoad], err = lastJobSpan(dir, pidIn(pidFile)); err != nil {
			return t, jobs, err
		}
		if err := waitRunning(console, consoleSize(console), 3, true); err != nil {
			return t, jobs, fmt.Errorf("after the internal revert: %w", err)
		}
	}
	return t, jobs, nil
}

// killStarted kills the qemu qchain started for vm in state when it still
// runs (vm stop failed): it runs in a session of its own and would outlive
// the bench. Only a process whose command line names the state folder is
// killed.
func killStarted(state, vm string) {
	pid := pidIn(filepath.Join(state, "vms", vm, "qemu.pid"))
	if pid <= 0 {
		return
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), state) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// printCheckpointTable prints the checkpoint figures: medians, the
// overhead judged on the medians of the time outside QEMU's own parts
// (on the fastest run of each side, as the block jobs', for a row without
// them), the reverts against the cold boot.
func printCheckpointTable(results []*CheckpointResult, runs int) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\n## Checkpoints (median of %d timed runs of each side; each run on a fresh disk and state folder)\n\n", runs)
	fmt.Println("| case | qchain | direct QMP client | figure | goal | result |")
	fmt.Println("|---|---:|---:|---|---:|---|")
	for _, r := range results {
		if r.Err != nil {
			for _, c := range r.Cases {
				fmt.Printf("| %s | - | - | - | - | ERROR |\n", c.Name)
			}
			continue
		}
		boot := r.Direct[opBoot].Median()
		for _, c := range r.Cases {
			q, d := &r.Qchain[c.Op], &r.Direct[c.Op]
			if len(q.Walls) == 0 || len(d.Walls) == 0 {
				fmt.Printf("| %s | - | - | not measured | - | - |\n", c.Name)
				continue
			}
			ov := overhead(slices.Min(q.Walls), slices.Min(d.Walls))
			figure := fmt.Sprintf("overhead %+.1f%% on the fastest runs (%v vs %v; medians %+.1f%%)", 100*ov,
				slices.Min(q.Walls).Round(time.Millisecond), slices.Min(d.Walls).Round(time.Millisecond), 100*overhead(q.Median(), d.Median()))
			goal, verdict := fmt.Sprintf("< %.0f%%", 100*overheadGoal), passMiss(ov < overheadGoal)
			if qo, do := outsideJob(q.Walls, r.QchainJob[c.Op]), outsideJob(d.Walls, r.DirectJob[c.Op]); qo != nil && do != nil {
				// QEMU's own time (a snapshot job writing or reading the
				// RAM; a revert's old qemu exiting, new one starting and
				// state loading) varies from run to run by more than the
				// goal: the overhead is judged on the time outside it.
				adj := float64(median(qo)-median(do)) / float64(d.Median())
				what := "a job"
				switch c.Op {
				case opCreate:
					what = "QEMU's parts (migrate to the pause before the switchover, migrate-continue to completed)"
				case opRevert:
					what = "QEMU's parts (old qemu's exit after quit, new qemu's exec to its machine reset, load, cont)"
				}
				figure = fmt.Sprintf("overhead %+.1f%% outside QEMU's own time (qchain %v, client %v around %s of %v vs %v, medians); wall time: %s",
					100*adj, median(qo).Round(100*time.Microsecond), median(do).Round(100*time.Microsecond), what,
					median(r.QchainJob[c.Op]).Round(time.Millisecond), median(r.DirectJob[c.Op]).Round(time.Millisecond), figure)
				verdict = passMiss(adj < overheadGoal)
			}
			switch c.Op {
			case opBoot:
				figure, goal, verdict = "vm start + boot vs qemu start + boot (reference for the reverts)", "-", "-"
			case opRevert:
				figure += fmt.Sprintf("; %.1fx faster than the cold boot (%v)", float64(boot)/float64(q.Median()), boot.Round(time.Millisecond))
			case opInternalLoad:
				figure += fmt.Sprintf("; %.1fx faster than the cold boot (%v)", float64(boot)/float64(q.Median()), boot.Round(time.Millisecond))
				goal += fmt.Sprintf("; < %v", internalRevertGoal)
				verdict += "; " + passMiss(q.Median() < internalRevertGoal)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", c.Name, fmtDur(q.Median()), fmtDur(d.Median()), figure, goal, verdict)
		}
	}
}

// outsideJob returns, per run, the wall time minus the time QEMU's job
// took, or nil when the runs have no job times.
func outsideJob(walls, jobs []time.Duration) []time.Duration {
	if len(jobs) == 0 || len(jobs) != len(walls) {
		return nil
	}
	out := make([]time.Duration, len(walls))
	for i := range walls {
		out[i] = walls[i] - jobs[i]
	}
	return out
}

// median is the median of ds.
func median(ds []time.Duration) time.Duration {
	s := Sample{Walls: ds}
	return s.Median()
}

// printRevertParts prints where an external revert's time goes, part by
// part, the tool's parts and QEMU's in turn (medians).
func printRevertParts(results []*CheckpointResult) {
	parts := []struct {
		name, whose string
		of          func(revertParts) time.Duration
	}{
		{"start to quit received by the old qemu", "tool", func(p revertParts) time.Duration { return p.ToQuit }},
		{"quit received to the old qemu gone", "QEMU", func(p revertParts) time.Duration { return p.Exit }},
		{"old qemu gone to the new one executed (overlay, fork, exec)", "tool", func(p revertParts) time.Duration { return p.Between }},
		{"exec to the machine's reset (qemu's start-up)", "QEMU", func(p revertParts) time.Duration { return p.Start }},
		{"reset to migrate-incoming received", "tool", func(p revertParts) time.Duration { return p.ToLoad }},
		{"migrate-incoming received to the state loaded", "QEMU", func(p revertParts) time.Duration { return p.Load }},
		{"state loaded to cont received", "tool", func(p revertParts) time.Duration { return p.ToCont }},
		{"cont received to its reply", "QEMU", func(p revertParts) time.Duration { return p.Cont }},
		{"cont's reply to the tool's exit", "tool", func(p revertParts) time.Duration { return p.After }},
	}
	for _, r := range results {
		if r.Err != nil || len(r.Reverts[0]) == 0 || len(r.Reverts[1]) == 0 {
			continue
		}
		fmt.Printf("\nExternal revert of the %d MiB guest in parts (medians; QEMU's clock, the bench's for the old qemu's exit and the tool's start and end):\n\n", r.MemMiB)
		fmt.Println("| part | whose | qchain | direct QMP client |")
		fmt.Println("|---|---|---:|---:|")
		for _, part := range parts {
			var m [2]time.Duration
			for side, rs := range r.Reverts {
				ds := make([]time.Duration, len(rs))
				for i, p := range rs {
					ds[i] = part.of(p)
				}
				m[side] = median(ds)
			}
			fmt.Printf("| %s | %s | %v | %v |\n", part.name, part.whose, m[0].Round(100*time.Microsecond), m[1].Round(100*time.Microsecond))
		}
	}
}
