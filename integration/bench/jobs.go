package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qmp"
)

// Block-job cases (issue 3): an active commit through qchain versus a
// minimal QMP client driving qemu-storage-daemon directly, and offline
// commit and pull through qchain versus qemu-img. Every run starts from a
// fresh copy of a cached chain; the copy is not timed.

// overheadGoal is the goal for qchain's active commit: less than
// 5% slower than the direct QMP client.
const overheadGoal = 0.05

// jobChainVersion is part of the cache key of the generated job chains.
const jobChainVersion = 1

// jobLayer is one file of a job chain and the data written into it.
type jobLayer struct {
	Name    string `json:"name"`
	Pattern int    `json:"pattern"`
	Offset  uint64 `json:"offset"`
	Bytes   uint64 `json:"bytes"`
}

// JobChain is a chain of qcow2 files, Layers[0] the base, each an overlay
// (relative backing name, -F qcow2) of the one before.
type JobChain struct {
	Label       string     `json:"label"`
	VirtualSize uint64     `json:"virtual_size"`
	Layers      []jobLayer `json:"layers"`
	Dir         string     `json:"-"`
	Cached      bool       `json:"-"`
	GenTime     time.Duration
}

func (c *JobChain) key() string {
	k := fmt.Sprintf("jobs-%s-v%d-%s", c.Label, jobChainVersion, sizeName(c.VirtualSize))
	for _, l := range c.Layers {
		k += fmt.Sprintf("-%s%s", strings.TrimSuffix(l.Name, ".qcow2"), sizeName(l.Bytes))
	}
	return k
}

func (c *JobChain) describe() string {
	var parts []string
	for _, l := range c.Layers {
		parts = append(parts, fmt.Sprintf("%s (%s data)", l.Name, sizeName(l.Bytes)))
	}
	return fmt.Sprintf("%s virtual, %s", sizeName(c.VirtualSize), strings.Join(parts, " <- "))
}

func (c *JobChain) top() string { return c.Layers[len(c.Layers)-1].Name }

// prepareJobChain generates c under root unless a complete copy is cached.
func prepareJobChain(root string, c *JobChain) error {
	c.Dir = filepath.Join(root, c.key())
	c.GenTime = 0
	want, _ := json.Marshal(c)
	mark := filepath.Join(c.Dir, markerName)
	if b, err := os.ReadFile(mark); err == nil {
		var got JobChain
		if json.Unmarshal(b, &got) == nil {
			gen := got.GenTime
			got.GenTime = 0
			g, _ := json.Marshal(&got)
			if string(g) == string(want) {
				c.Cached, c.GenTime = true, gen
				return nil
			}
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	start := time.Now()
	for i, l := range c.Layers {
		create := []string{"qemu-img", "create", "-q", "-f", "qcow2"}
		if i > 0 {
			create = append(create, "-b", c.Layers[i-1].Name, "-F", "qcow2")
		}
		if _, err := runIn(c.Dir, nil, append(create, l.Name, fmt.Sprint(c.VirtualSize))); err != nil {
			return err
		}
		var script strings.Builder
		for off := uint64(0); off < l.Bytes; off += 256 << 20 {
			fmt.Fprintf(&script, "write -q -P %d %d %d\n", l.Pattern, l.Offset+off, min(256<<20, l.Bytes-off))
		}
		if _, err := runIn(c.Dir, strings.NewReader(script.String()),
			[]string{"qemu-io", "-f", "qcow2", "-t", "unsafe", l.Name}); err != nil {
			return err
		}
	}
	c.GenTime = time.Since(start)
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(mark, append(b, '\n'), 0o644)
}

// jobWorkDir is where the jobs run on fresh copies: a memory file system
// (/dev/shm) when there is one with room, so that the host disk's write-back,
// which varied a job's time by half between runs here, does not drown the
// few percent the overhead goal is about; else a folder next to the images.
func jobWorkDir(root string, chains ...*JobChain) string {
	var need uint64
	for _, c := range chains {
		var data uint64
		for _, l := range c.Layers {
			data += l.Bytes
		}
		need = max(need, 2*data+256<<20)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Bavail*uint64(st.Bsize) > need {
		if d, err := os.MkdirTemp("/dev/shm", "qchain-bench-jobs-"); err == nil {
			return d
		}
	}
	return filepath.Join(root, "jobs-work")
}

// freshCopy replaces work with a copy of c's files and syncs, so that the
// copy's write-back does not land in the timed run.
func freshCopy(c *JobChain, work string) error {
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	args := []string{"--reflink=auto", "--sparse=always"}
	for _, l := range c.Layers {
		args = append(args, filepath.Join(c.Dir, l.Name))
	}
	if out, err := exec.Command("cp", append(args, work+"/")...).CombinedOutput(); err != nil {
		return fmt.Errorf("cp: %v: %s", err, strings.TrimSpace(string(out)))
	}
	syscall.Sync()
	return nil
}

// JobCase is one block-job measurement: Qchain against Other (a direct
// QMP client when Direct is set, else a qemu-img command).
type JobCase struct {
	Name   string
	Chain  *JobChain
	Qchain []string // qchain's arguments, after the binary
	Other  []string // qemu-img's whole argv
	// QchainSteps and OtherSteps, when set, replace Qchain and Other with
	// several commands run in turn; a run's time is the sum of theirs.
	QchainSteps, OtherSteps [][]string
	// QchainSetup are qchain commands run before each qchain run, untimed.
	QchainSetup [][]string
	// AsFast holds qchain to the reference's median time or less.
	AsFast bool
	Direct bool
	// Result is the file whose guest view must equal the pristine top's.
	Result string
	// Goal marks the overhead case (direct client); others report only.
	Goal bool
	// Standalone: Result must have no backing file afterwards (a pull).
	Standalone bool
}

// JobResult is a measured block-job case.
type JobResult struct {
	Case          JobCase
	Qchain, Other *Sample
	QchainCmd     string
	OtherCmd      string
	Verified      string
	Failed        bool
}

// Overhead is (qchain - direct)/direct of the fastest runs, which the goal
// is judged on. Here a job's time is bimodal (every other run on a fresh
// copy takes up to twice as long, whichever side runs it: fresh guest
// memory), so a median lands on one mode or the other by the parity of the
// run count; noise only ever adds time, and the fastest run of each side is
// the one the machine disturbed least.
func (r *JobResult) Overhead() float64 {
	return overhead(slices.Min(r.Qchain.Walls), slices.Min(r.Other.Walls))
}

// MedianOverhead is the same on the medians, printed for reference.
func (r *JobResult) MedianOverhead() float64 {
	return overhead(r.Qchain.Median(), r.Other.Median())
}

func overhead(q, o time.Duration) float64 {
	if o == 0 {
		return 0
	}
	return float64(q-o) / float64(o)
}

// jobChains returns the active-commit chain (base <- top) and the
// three-layer chain (base <- mid <- top).
func jobChains(quick bool) (active, three *JobChain) {
	virt, topData, midData, small := uint64(4<<30), uint64(2<<30), uint64(1<<30), uint64(64<<20)
	if quick {
		virt, topData, midData, small = 1<<30, 128<<20, 64<<20, 16<<20
	}
	active = &JobChain{Label: "active", VirtualSize: virt, Layers: []jobLayer{
		{Name: "base.qcow2", Pattern: 0x11, Offset: virt - small, Bytes: small},
		{Name: "top.qcow2", Pattern: 0x5a, Offset: 0, Bytes: topData},
	}}
	three = &JobChain{Label: "three", VirtualSize: virt, Layers: []jobLayer{
		{Name: "base.qcow2", Pattern: 0x11, Offset: virt - small, Bytes: small},
		{Name: "mid.qcow2", Pattern: 0x5a, Offset: 0, Bytes: midData},
		{Name: "top.qcow2", Pattern: 0x33, Offset: midData / 2, Bytes: small},
	}}
	return active, three
}

// runJobBench generates the chains, measures the block-job cases with
// runs timed runs of each side, and prints their commands. ok is false
// when a chain could not be made.
func runJobBench(root, qchain string, runs int, quick bool, timeout time.Duration, selected func(string) bool, qemu string) (results []*JobResult, ok bool) {
	active, three := jobChains(quick)
	// The cases name their files in the work folder, chosen once the
	// chains they use are known; w is set before any case runs.
	var work string
	w := func(name string) string { return filepath.Join("$WORK", name) }
	state := w("state")
	cases := []JobCase{
		{Name: fmt.Sprintf("active commit of %s, qchain vs direct QMP", sizeName(active.Layers[1].Bytes)), Chain: active,
			Qchain: []string{"blockcommit", "--active", "--pivot", "--wait", w("top.qcow2")},
			Direct: true, Result: "base.qcow2", Goal: true},
		{Name: fmt.Sprintf("commit mid (%s) into base, 3-layer chain", sizeName(three.Layers[1].Bytes)), Chain: three,
			Qchain: []string{"blockcommit", "--wait", "--top", w("mid.qcow2"), w("top.qcow2")},
			Other:  []string{"qemu-img", "commit", w("mid.qcow2")}, Result: "top.qcow2"},
		{Name: "full pull into top, 3-layer chain", Chain: three,
			Qchain: []string{"blockpull", "--wait", w("top.qcow2")},
			Other:  []string{"qemu-img", "rebase", "-b", "", w("top.qcow2")}, Result: "top.qcow2", Standalone: true},
		// Issue 12: a snapshot deleted with nothing written since it was
		// taken merges nothing, and must cost no more than doing it by
		// hand with qemu-img.
		{Name: "snapshot create + delete, nothing written between, vs qemu-img create -b + commit", Chain: active,
			QchainSetup: [][]string{{"vm", "define", "--state-dir", state, "--disk", "vda=" + w("top.qcow2"), "bench"}},
			QchainSteps: [][]string{
				{"snapshot", "create", "--state-dir", state, "bench", "s1"},
				{"snapshot", "delete", "--state-dir", state, "bench", "s1"},
			},
			OtherSteps: [][]string{
				{"qemu-img", "create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", w("overlay.qcow2")},
				{"qemu-img", "commit", "-q", w("overlay.qcow2")},
			},
			Result: "top.qcow2", AsFast: true},
	}
	cases = slices.DeleteFunc(cases, func(c JobCase) bool { return !selected(c.Name) })
	if len(cases) == 0 {
		return nil, true
	}
	var chains []*JobChain
	for _, c := range cases {
		if !slices.Contains(chains, c.Chain) {
			chains = append(chains, c.Chain)
		}
	}
	fmt.Printf("\n## Block-job chains (%s)\n", qemu)
	for _, c := range chains {
		fmt.Printf("- %s (%s): ", c.key(), c.describe())
		if err := prepareJobChain(root, c); err != nil {
			fmt.Println("FAILED")
			fmt.Fprintln(os.Stderr, "bench: generating:", err)
			return nil, false
		}
		how := "generated in"
		if c.Cached {
			how = "cached; generated earlier in"
		}
		fmt.Printf("%s %s\n", how, c.GenTime.Round(100*time.Millisecond))
	}
	work = jobWorkDir(root, chains...)
	fmt.Printf("- job work folder: %s\n", work)
	defer os.RemoveAll(work)
	for i := range cases {
		cases[i].inWork(work)
	}
	for i := range cases {
		cases[i].Name += ", " + qemu
	}
	fmt.Printf("\n## Block-job commands on %s (fresh copy of the chain before every run, copy not timed; one untimed run of each side, then %d timed runs each, %d for the overhead goal)\n", qemu, runs, max(runs, goalJobRuns))
	for _, c := range cases {
		r := &JobResult{Case: c, Qchain: &Sample{}, Other: &Sample{}}
		var qcmds, ocmds []string
		for _, argv := range c.qchainSteps() {
			qcmds = append(qcmds, shellQuote(append([]string{qchain}, argv...)))
		}
		for _, argv := range c.otherSteps() {
			ocmds = append(ocmds, shellQuote(argv))
		}
		r.QchainCmd = strings.Join(qcmds, " && ")
		r.OtherCmd = "direct QMP client: qemu-storage-daemon with qchain's --blockdev graph; block-commit, job-complete on ready, job-dismiss, quit"
		if !c.Direct {
			r.OtherCmd = strings.Join(ocmds, " && ")
		}
		fmt.Printf("\n%s (%s):\n    %s\n    %s\n", c.Name, c.Chain.describe(), r.QchainCmd, r.OtherCmd)
		results = append(results, r)
		if err := measureJob(r, qchain, work, runs, timeout); err != nil {
			fmt.Printf("    ERROR: %v\n", err)
			r.Failed = true
			continue
		}
		fmt.Printf("    guest content after the untimed run of each: %s\n", r.Verified)
		fmt.Printf("    runs: qchain %v; reference %v\n", roundAll(r.Qchain.Walls), roundAll(r.Other.Walls))
		fmt.Printf("    fastest: qchain %v, reference %v\n", slices.Min(r.Qchain.Walls).Round(time.Millisecond), slices.Min(r.Other.Walls).Round(time.Millisecond))
	}
	return results, true
}

// inWork replaces "$WORK" in the case's arguments with the work folder.
func (c *JobCase) inWork(work string) {
	fix := func(argv []string) []string {
		out := make([]string, len(argv))
		for i, a := range argv {
			out[i] = strings.ReplaceAll(a, "$WORK", work)
		}
		return out
	}
	fixAll := func(steps [][]string) [][]string {
		if steps == nil {
			return nil
		}
		out := make([][]string, len(steps))
		for i, argv := range steps {
			out[i] = fix(argv)
		}
		return out
	}
	c.Qchain, c.Other = fix(c.Qchain), fix(c.Other)
	c.QchainSteps, c.OtherSteps, c.QchainSetup = fixAll(c.QchainSteps), fixAll(c.OtherSteps), fixAll(c.QchainSetup)
}

// qchainSteps returns the qchain commands of one timed run.
func (c *JobCase) qchainSteps() [][]string {
	if c.QchainSteps != nil {
		return c.QchainSteps
	}
	return [][]string{c.Qchain}
}

// otherSteps returns the reference commands of one timed run.
func (c *JobCase) otherSteps() [][]string {
	if c.OtherSteps != nil {
		return c.OtherSteps
	}
	return [][]string{c.Other}
}

// runTool runs one command; a failing command is an error.
func runTool(timeout time.Duration, argv []string) (*Run, error) {
	run, err := runOnce(timeout, argv)
	if err != nil {
		return nil, err
	}
	if run.Exit != 0 {
		return nil, fmt.Errorf("%s exited %d: %s", shellQuote(argv), run.Exit, firstLines(strings.TrimSpace(string(run.Stderr)+string(run.Stdout)), 3))
	}
	return run, nil
}

// runSteps runs the commands one after the other and returns the sum of
// their times and their peak RSS; a failing command is an error.
func runSteps(timeout time.Duration, steps [][]string) (wall time.Duration, maxRSS int64, err error) {
	for _, argv := range steps {
		run, err := runTool(timeout, argv)
		if err != nil {
			return 0, 0, err
		}
		wall += run.Wall
		maxRSS = max(maxRSS, run.MaxRSSKiB)
	}
	return wall, maxRSS, nil
}

// goalJobRuns is the least number of timed runs of each side for the case
// with the overhead goal: a job's time varies by a factor of two from run
// to run on this kind of VM (fresh guest memory costs the host a fault),
// and the goal is about a few percent. Even, so that with the sides taking
// turns each runs as often in either position of a pair.
const goalJobRuns = 12

// measureJob runs each side once untimed (the runs that touch fresh memory
// first), checking its result against the pristine chain, then times runs
// runs of each side (at least goalJobRuns for the goal case), alternating,
// each on a fresh copy.
func measureJob(r *JobResult, qchain, work string, runs int, timeout time.Duration) error {
	c := r.Case
	pristine := filepath.Join(c.Chain.Dir, c.Chain.top())
	result := filepath.Join(work, c.Result)
	r.Verified = "equal (qemu-img compare)"
	if c.Standalone {
		r.Verified += ", no backing left"
	}
	if c.Goal {
		runs = max(runs, goalJobRuns)
	}
	for i := -1; i < runs; i++ {
		for k := 0; k < 2; k++ {
			// Who goes first alternates, so that whatever one run leaves
			// behind (freed memory, caches) weighs on both sides alike.
			side := k
			if i%2 != 0 {
				side = 1 - k
			}
			if err := freshCopy(c.Chain, work); err != nil {
				return err
			}
			var wall time.Duration
			var what string
			if side == 0 {
				var setup, steps [][]string
				for _, argv := range c.QchainSetup {
					setup = append(setup, append([]string{qchain}, argv...))
				}
				for _, argv := range c.qchainSteps() {
					steps = append(steps, append([]string{qchain}, argv...))
				}
				if _, _, err := runSteps(timeout, setup); err != nil {
					return fmt.Errorf("setup: %w", err)
				}
				var rss int64
				var err error
				if wall, rss, err = runSteps(timeout, steps); err != nil {
					return err
				}
				what = "qchain"
				if i >= 0 {
					r.Qchain.Walls = append(r.Qchain.Walls, wall)
				}
				r.Qchain.MaxRSS = max(r.Qchain.MaxRSS, rss)
			} else {
				if c.Direct {
					var err error
					if wall, err = directActiveCommit(c.Chain, work, timeout); err != nil {
						return fmt.Errorf("direct QMP client: %w", err)
					}
					what = "direct QMP client"
				} else {
					steps := c.otherSteps()
					var rss int64
					var err error
					if wall, rss, err = runSteps(timeout, steps); err != nil {
						return err
					}
					what = steps[0][0]
					r.Other.MaxRSS = max(r.Other.MaxRSS, rss)
				}
				if i >= 0 {
					r.Other.Walls = append(r.Other.Walls, wall)
				}
			}
			if i < 0 {
				out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", result, pristine).CombinedOutput()
				if err != nil {
					r.Verified = "MISMATCH"
					return fmt.Errorf("MISMATCH after %s: qemu-img compare %s %s: %v: %s", what, result, pristine, err, strings.TrimSpace(string(out)))
				}
				if c.Standalone {
					out, err := exec.Command("qemu-img", "info", "--output=json", "-U", result).Output()
					if err != nil || strings.Contains(string(out), `"backing-filename"`) {
						r.Verified = "MISMATCH"
						return fmt.Errorf("MISMATCH after %s: %s still has a backing file (or qemu-img info failed: %v)", what, result, err)
					}
				}
			}
		}
	}
	return nil
}

// directActiveCommit is the reference for the active commit: a minimal QMP
// client, plain JSON lines on the daemon's socket. The time runs from the
// daemon's start to its exit.
func directActiveCommit(c *JobChain, work string, timeout time.Duration) (time.Duration, error) {
	sockDir, err := os.MkdirTemp("", "bench-qsd-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "qmp.sock")
	args := []string{
		"--chardev", "socket,path=" + sock + ",server=on,wait=off,id=mon",
		"--monitor", "chardev=mon",
	}
	// The graph qchain gives the daemon offline (built before the clock
	// starts: the reference knows it already).
	devs, err := chain.DaemonBlockdevs(filepath.Join(work, c.top()), 0)
	if err != nil {
		return 0, err
	}
	for _, bd := range devs {
		js, _ := json.Marshal(bd)
		args = append(args, "--blockdev", string(js))
	}
	deadline := time.Now().Add(timeout)
	start := time.Now()
	cmd := exec.Command("qemu-storage-daemon", args...)
	// The daemon exactly as qchain starts it, allocator settings included:
	// the goal is about qchain's own overhead, not the daemon's setup.
	cmd.Env = qmp.DaemonEnv(os.Environ())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fail := func(err error) (time.Duration, error) {
		cmd.Process.Kill()
		<-exited
		return 0, fmt.Errorf("%w: %s", err, firstLines(strings.TrimSpace(stderr.String()), 3))
	}
	var conn net.Conn
	for {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		select {
		case e := <-exited:
			return 0, fmt.Errorf("qemu-storage-daemon exited: %v: %s", e, strings.TrimSpace(stderr.String()))
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail(errors.New("no QMP socket"))
		}
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	q := &qmpLines{conn: conn, r: bufio.NewReader(conn)}
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		return fail(err)
	}
	if _, err := q.do("qmp_capabilities", nil); err != nil {
		return fail(err)
	}
	if _, err := q.do("block-commit", map[string]any{
		"job-id": "bench-commit", "device": "l0", "base-node": "l1", "auto-dismiss": false,
	}); err != nil {
		return fail(err)
	}
	completed := false
	for done := false; !done; {
		ret, err := q.do("query-jobs", nil)
		if err != nil {
			return fail(err)
		}
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(ret, &jobs); err != nil {
			return fail(err)
		}
		for _, j := range jobs {
			if j.ID != "bench-commit" {
				continue
			}
			switch {
			case j.Status == "ready" && !completed:
				if _, err := q.do("job-complete", map[string]any{"id": j.ID}); err != nil {
					return fail(err)
				}
				completed = true
			case j.Status == "concluded":
				if j.Error != "" {
					return fail(fmt.Errorf("job failed: %s", j.Error))
				}
				if _, err := q.do("job-dismiss", map[string]any{"id": j.ID}); err != nil {
					return fail(err)
				}
				done = true
			}
		}
		if !done {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !completed {
		return fail(errors.New("job concluded without becoming ready"))
	}
	q.do("quit", nil) // the daemon may close the socket before replying
	select {
	case err := <-exited:
		if err != nil {
			return 0, fmt.Errorf("qemu-storage-daemon: %v: %s", err, strings.TrimSpace(stderr.String()))
		}
	case <-time.After(time.Until(deadline)):
		return fail(errors.New("qemu-storage-daemon did not exit after quit"))
	}
	return time.Since(start), nil
}

// qmpLines is a QMP connection read one JSON message per line.
type qmpLines struct {
	conn net.Conn
	r    *bufio.Reader
	// events are the events read while waiting for replies, oldest
	// first, kept for waitEvent once keepEvents is set.
	events     []qmpEvent
	keepEvents bool
}

// qmpEvent is an event QEMU sent.
type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// waitEvent reads events (the kept ones first) until done says one is
// the last wanted, or returns its error.
func (q *qmpLines) waitEvent(done func(qmpEvent) (bool, error)) error {
	for {
		var ev qmpEvent
		if len(q.events) > 0 {
			ev, q.events = q.events[0], q.events[1:]
		} else {
			line, err := q.r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("waiting for an event: %w", err)
			}
			if err := json.Unmarshal(line, &ev); err != nil {
				return fmt.Errorf("waiting for an event: %w: %q", err, line)
			}
		}
		if ev.Event == "" {
			continue
		}
		if ok, err := done(ev); ok || err != nil {
			return err
		}
	}
}

// do runs a command and returns its "return" value, skipping events.
func (q *qmpLines) do(name string, args any) (json.RawMessage, error) {
	msg := map[string]any{"execute": name}
	if args != nil {
		msg["arguments"] = args
	}
	b, _ := json.Marshal(msg)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	return q.reply(name)
}

// reply reads the answer to command name, skipping events.
func (q *qmpLines) reply(name string) (json.RawMessage, error) {
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			if err == io.EOF && name == "quit" {
				return nil, nil
			}
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		var resp struct {
			Event  string          `json:"event"`
			Data   json.RawMessage `json:"data"`
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("%s: %w: %q", name, err, line)
		}
		switch {
		case resp.Event != "":
			if q.keepEvents {
				q.events = append(q.events, qmpEvent{Event: resp.Event, Data: resp.Data})
			}
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("%s: %s: %s", name, resp.Error.Class, resp.Error.Desc)
		}
		return resp.Return, nil
	}
}

// printJobTable prints the block-job figures.
func printJobTable(results []*JobResult, runs int) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\n## Block jobs (median of the timed runs listed above: %d, %d for the overhead goal; each on a fresh copy of the chain, copy not timed)\n\n", runs, max(runs, goalJobRuns))
	fmt.Println("| case | qchain | reference | reference tool | figure | goal | result | guest content |")
	fmt.Println("|---|---:|---:|---|---:|---:|---|---|")
	for _, r := range results {
		if r.Failed {
			fmt.Printf("| %s | - | - | - | - | - | ERROR | %s |\n", r.Case.Name, orDash(r.Verified))
			continue
		}
		tool, figure, goal, verdict := "qemu-img", "", "-", "-"
		if r.Case.Direct {
			tool = "direct QMP client"
			ov := r.Overhead()
			figure = fmt.Sprintf("overhead %+.1f%% on the fastest runs (%v vs %v; medians %+.1f%%)", 100*ov,
				slices.Min(r.Qchain.Walls).Round(time.Millisecond), slices.Min(r.Other.Walls).Round(time.Millisecond), 100*r.MedianOverhead())
			goal = fmt.Sprintf("< %.0f%%", 100*overheadGoal)
			verdict = passMiss(ov < overheadGoal)
		} else {
			ratio := 0.0
			if qm := r.Qchain.Median(); qm > 0 {
				ratio = float64(r.Other.Median()) / float64(qm)
			}
			figure = fmt.Sprintf("ratio %.2fx (qemu-img/qchain)", ratio)
			if r.Case.AsFast {
				goal, verdict = ">= 1x", passMiss(ratio >= 1)
			}
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Case.Name,
			fmtDur(r.Qchain.Median()), fmtDur(r.Other.Median()), tool, figure, goal, verdict, r.Verified)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
