package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/qchain/qchain/backup"
)

// Backup cases (issue 11). A VM of the snapshot manager, offline, has one
// disk of 64 GiB holding 8 GiB of data; a full point is made, then 1% of the
// disk's clusters change (random 64 KiB writes, untimed). From that state,
// restored before every run, an incremental `qchain backup create` is timed
// against a full one (--full) and against `qemu-img convert -O qcow2` of
// the disk's chain; `qchain backup restore` of the incremental point
// against `qemu-img convert -O qcow2` of the point's chain; and the bytes
// the incremental point holds are compared with the bytes that changed.

const (
	// incrementalGoal is the goal for an incremental point with
	// 1% of the disk changed: at least 20x faster than a full point.
	incrementalGoal = 20
	// writtenGoal is the goal for the bytes an incremental point
	// holds: within 5% of the bytes that changed.
	writtenGoal = 0.05
	// changeSeed draws the offsets of the writes between the points.
	changeSeed = 11
	backupVM   = "bench"
	// backupTarget is the VM's one disk, and so the prefix of its point
	// files (vda.N.qcow2).
	backupTarget = "vda"
)

// backupSpec is the base of the VM's disk: 64 GiB with 8 GiB of data at
// its start (1 GiB with 128 MiB for -quick), made and cached by Prepare.
func backupSpec(quick bool) ImageSpec {
	s := ImageSpec{Label: "backup", Layers: 1, VirtualSize: 64 << 30, Seed: changeSeed, BaseFill: 8 << 30}
	if quick {
		s.VirtualSize, s.BaseFill = 1<<30, 128<<20
	}
	return s
}

// backupWork is the work folder of the backup cases, next to the images
// (same file system, so the copies between runs stay cheap to make). The
// VM's disk, its state directory and the backup folder always have the
// same paths: the VM's metadata names its disk by path.
type backupWork struct {
	dir string
}

func (w backupWork) path(name string) string { return filepath.Join(w.dir, name) }

// The VM's disk (an overlay of the cached base, holding the writes made
// since the full point), its state directory, the backup folder, the
// output of qemu-img convert and the restore folder.
func (w backupWork) disk() string  { return w.path("disk.qcow2") }
func (w backupWork) state() string { return w.path("state") }
func (w backupWork) dest() string  { return w.path("dest") }
func (w backupWork) bk() string    { return w.path("bk") }
func (w backupWork) out() string   { return w.path("out.qcow2") }

// pre holds the precondition every create run starts from: the disk with
// the changes and the bitmap of point 1, the state directory, and the
// backup folder holding point 1. src is the backup folder with points 1
// and 2 that the restores read.
func (w backupWork) pre() string { return w.path("pre") }
func (w backupWork) src() string { return w.path("src") }

// reset brings the work folder back to the precondition: the disk and the
// state directory copied, the backup folder's point files hard-linked
// (qchain never writes to a point file once it is stored: they are opened
// read-only as backing files, and a restore checks their sha256, so a
// change would show) and its index copied; then a sync, so that neither
// the copy's write-back nor the discards of the files removed land in the
// timed run.
func (w backupWork) reset() error {
	for _, name := range []string{w.disk(), w.state(), w.bk(), w.out(), w.dest()} {
		if err := os.RemoveAll(name); err != nil {
			return err
		}
	}
	for _, c := range [][]string{
		{"cp", "--reflink=auto", "--sparse=always", filepath.Join(w.pre(), "disk.qcow2"), w.disk()},
		{"cp", "-a", filepath.Join(w.pre(), "state"), w.state()},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", shellQuote(c), err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.Mkdir(w.bk(), 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(w.pre(), "bk"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		from, to := filepath.Join(w.pre(), "bk", e.Name()), filepath.Join(w.bk(), e.Name())
		switch {
		case strings.HasSuffix(e.Name(), ".qcow2"):
			err = os.Link(from, to)
		case e.Name() == backup.IndexName:
			var b []byte
			if b, err = os.ReadFile(from); err == nil {
				err = os.WriteFile(to, b, 0o600)
			}
		}
		if err != nil {
			return err
		}
	}
	syscall.Sync()
	return nil
}

// changes is the qemu-io script of the writes made between the two points,
// and what they changed.
type changes struct {
	Script string
	Writes int
	// Clusters is the number of distinct clusters written: Bytes is it
	// times the cluster size, the bytes an incremental point must copy.
	Clusters int
	Bytes    uint64
}

// changeScript writes one cluster (64 KiB, cluster-aligned) at random over
// the whole disk, 1% of its clusters as many times, each with a pattern
// byte that is neither 0 nor the base's (90): every write changes what the
// guest reads.
func changeScript(size uint64) changes {
	rng := rand.New(rand.NewPCG(changeSeed, 1))
	slots := size / clusterSize
	c := changes{Writes: int((slots + 99) / 100)}
	seen := make(map[uint64]bool, c.Writes)
	var b strings.Builder
	for j := 0; j < c.Writes; j++ {
		off := rng.Uint64N(slots) * clusterSize
		seen[off] = true
		fmt.Fprintf(&b, "write -q -P %d %d 64k\n", 91+j%165, off)
	}
	c.Script, c.Clusters = b.String(), len(seen)
	c.Bytes = uint64(c.Clusters) * clusterSize
	return c
}

// backupSide is one command of a timed comparison: reset runs before each
// run (untimed), check after the untimed one (an error is a MISMATCH).
type backupSide struct {
	Label string
	Argv  []string
	Reset func() error
	Check func() error
	Runs  Sample
}

// BackupResult is a measured backup case: a time ratio, or (Bytes) the
// bytes the incremental point holds against those that changed.
type BackupResult struct {
	Name          string
	Qchain, Other *backupSide
	Tool          string
	Goal          float64 // a ratio for times; for Bytes, the largest relative excess
	Bytes         bool
	Figure        string
	OK            bool
	Verified      string
	Failed        bool
}

// runBackupBench makes the base image and the precondition, measures the
// selected backup cases with runs timed runs of each side, and prints
// their commands. ok is false when an image could not be made.
func runBackupBench(root, qchain string, runs int, quick bool, timeout time.Duration, selected func(string) bool, qemu string) (results []*BackupResult, ok bool) {
	spec := backupSpec(quick)
	what := fmt.Sprintf("%s disk, %s of data, 1%% of its clusters changed", sizeName(spec.VirtualSize), sizeName(spec.BaseFill))
	incFull := &BackupResult{Name: "backup create, incremental vs --full, " + what, Tool: "qchain backup create --full", Goal: incrementalGoal}
	incConvert := &BackupResult{Name: "backup create, incremental vs qemu-img convert of the disk's chain, " + what, Tool: "qemu-img convert -O qcow2"}
	restore := &BackupResult{Name: "backup restore of the incremental point vs qemu-img convert of its chain, " + what, Tool: "qemu-img convert -O qcow2"}
	written := &BackupResult{Name: "backup incremental, bytes written vs bytes changed, " + what, Bytes: true, Goal: writtenGoal}
	all := []*BackupResult{incFull, incConvert, restore, written}
	for _, r := range all {
		if selected(r.Name) {
			results = append(results, r)
		}
	}
	if len(results) == 0 {
		return nil, true
	}
	fmt.Printf("\n## Backups (%s)\n", qemu)
	fmt.Printf("- %s (%s virtual, %s of data): ", spec.Key(), sizeName(spec.VirtualSize), sizeName(spec.BaseFill))
	base, err := Prepare(root, spec)
	if err != nil {
		fmt.Println("FAILED")
		fmt.Fprintln(os.Stderr, "bench: generating:", err)
		return nil, false
	}
	how := "generated in"
	if base.Cached {
		how = "cached; generated earlier in"
	}
	fmt.Printf("%s %s\n", how, base.GenTime.Round(100*time.Millisecond))
	w := backupWork{dir: filepath.Join(root, "backup-work")}
	fmt.Printf("- work folder: %s\n", w.dir)
	defer os.RemoveAll(w.dir)
	ch := changeScript(spec.VirtualSize)
	fail := func(err error) ([]*BackupResult, bool) {
		fmt.Printf("    ERROR: %v\n", err)
		for _, r := range results {
			r.Failed = true
		}
		return results, true
	}
	if err := backupPrecondition(w, qchain, base, ch, timeout); err != nil {
		return fail(fmt.Errorf("precondition: %w", err))
	}

	q := func(args ...string) []string { return append([]string{qchain}, args...) }
	incremental := &backupSide{
		Label: "qchain (incremental)",
		Argv:  q("backup", "create", "--state-dir", w.state(), "--to", w.bk(), backupVM),
		Reset: w.reset,
		Check: func() error {
			p, err := checkPoint(w, backup.Incremental)
			if err != nil {
				return err
			}
			// The restores read this folder, and the bytes case its
			// point 2.
			if err := os.Rename(w.bk(), w.src()); err != nil {
				return err
			}
			written.Figure, written.OK = bytesFigure(filepath.Join(w.src(), backup.FileName(backupTarget, 2)), p, ch)
			written.Verified = "equal (qemu-img compare)"
			return nil
		},
	}
	full := &backupSide{
		Label: "qchain --full",
		Argv:  q("backup", "create", "--full", "--state-dir", w.state(), "--to", w.bk(), backupVM),
		Reset: w.reset,
		Check: func() error { _, err := checkPoint(w, backup.Full); return err },
	}
	convert := &backupSide{
		Label: "qemu-img convert",
		Argv:  []string{"qemu-img", "convert", "-O", "qcow2", w.disk(), w.out()},
		Reset: w.reset,
		Check: func() error { return compareImages(w.out(), w.disk()) },
	}
	sides := []*backupSide{incremental}
	incFull.Qchain, incFull.Other = incremental, full
	incConvert.Qchain, incConvert.Other = incremental, convert
	for _, r := range []*BackupResult{incFull, incConvert} {
		if selected(r.Name) {
			sides = append(sides, r.Other)
		}
	}
	createRuns := runs
	if len(sides) == 1 {
		createRuns = 0 // the untimed run makes point 2 for the others
	}
	reference := filepath.Join(w.pre(), "disk.qcow2")
	restoreDest := func() error {
		if err := os.RemoveAll(w.dest()); err != nil {
			return err
		}
		syscall.Sync()
		return os.Mkdir(w.dest(), 0o700)
	}
	restore.Qchain = &backupSide{
		Label: "qchain backup restore",
		Argv:  q("backup", "restore", "--point", "2", "--to", w.dest(), w.src()),
		Reset: restoreDest,
		Check: func() error { return compareImages(filepath.Join(w.dest(), backupTarget+".qcow2"), reference) },
	}
	restore.Other = &backupSide{
		Label: "qemu-img convert",
		Argv:  []string{"qemu-img", "convert", "-O", "qcow2", filepath.Join(w.src(), backup.FileName(backupTarget, 2)), filepath.Join(w.dest(), backupTarget+".qcow2")},
		Reset: restoreDest,
		Check: func() error { return compareImages(filepath.Join(w.dest(), backupTarget+".qcow2"), reference) },
	}

	fmt.Printf("\n## Backup commands on %s (the precondition restored before every run, not timed; one untimed run of each side, checked, then %d timed runs each)\n", qemu, runs)
	fmt.Printf("\nbackup create (%s):\n", what)
	for _, s := range sides {
		fmt.Printf("    %s\n", shellQuote(s.Argv))
	}
	if err := measureSides(sides, createRuns, timeout); err != nil {
		for _, r := range []*BackupResult{incFull, incConvert, written} {
			r.Failed = true
			if errors.Is(err, errMismatch) {
				r.Verified = "MISMATCH"
			}
		}
		fmt.Printf("    ERROR: %v\n", err)
	} else {
		for _, r := range []*BackupResult{incFull, incConvert} {
			r.Verified = "equal (qemu-img compare)"
		}
		fmt.Printf("    point 2 and qemu-img's copy after the untimed run of each: equal to the disk (qemu-img compare)\n")
		for _, s := range sides {
			fmt.Printf("    runs of %s: %v\n", s.Label, roundAll(s.Runs.Walls))
		}
		fmt.Printf("    %s\n", written.Figure)
	}
	if selected(restore.Name) {
		fmt.Printf("\nbackup restore (point 2, %s):\n    %s\n    %s\n", what, shellQuote(restore.Qchain.Argv), shellQuote(restore.Other.Argv))
		// What the last create run left goes first: at full size a
		// point or a copy of 8 GiB, beside the restores' own.
		for _, name := range []string{w.bk(), w.out()} {
			os.RemoveAll(name)
		}
		if _, err := os.Stat(w.src()); err != nil {
			restore.Failed = true
			fmt.Println("    ERROR: no point 2 to restore (backup create failed)")
		} else {
			if err := measureSides([]*backupSide{restore.Qchain, restore.Other}, runs, timeout); err != nil {
				restore.Failed = true
				if errors.Is(err, errMismatch) {
					restore.Verified = "MISMATCH"
				}
				fmt.Printf("    ERROR: %v\n", err)
			} else {
				restore.Verified = "equal (qemu-img compare)"
				fmt.Printf("    result of the untimed run of each: equal to the disk at point 2 (qemu-img compare)\n")
				fmt.Printf("    runs: qchain %v; qemu-img %v\n", roundAll(restore.Qchain.Runs.Walls), roundAll(restore.Other.Runs.Walls))
			}
		}
	}
	for _, r := range results {
		if r.Bytes || r.Failed {
			continue
		}
		ratio := 0.0
		if qm := r.Qchain.Runs.Median(); qm > 0 {
			ratio = float64(r.Other.Runs.Median()) / float64(qm)
		}
		r.Figure = fmt.Sprintf("ratio %.2fx (reference/qchain)", ratio)
		r.OK = ratio >= r.Goal
	}
	return results, true
}

// backupPrecondition makes the state the create runs start from (untimed):
// the VM's disk, an overlay of the base, defined as VM in a fresh state
// directory; a full point 1; the changes, written with qemu-io (which
// loads the point's persistent bitmap, and stores it back with the writes
// recorded); all saved under w.pre().
func backupPrecondition(w backupWork, qchain string, base *Image, ch changes, timeout time.Duration) error {
	if err := os.RemoveAll(w.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return err
	}
	if _, err := runIn(w.dir, nil, []string{"qemu-img", "create", "-q", "-f", "qcow2", "-b", base.Top, "-F", "qcow2", w.disk()}); err != nil {
		return err
	}
	if _, _, err := runSteps(timeout, [][]string{{qchain, "vm", "define", "--state-dir", w.state(), "--disk", backupTarget + "=" + w.disk(), backupVM}}); err != nil {
		return err
	}
	full, _, err := runSteps(timeout, [][]string{{qchain, "backup", "create", "--state-dir", w.state(), "--to", w.bk(), backupVM}})
	if err != nil {
		return err
	}
	start := time.Now()
	if _, err := runIn(w.dir, strings.NewReader(ch.Script), []string{"qemu-io", "-f", "qcow2", "-t", "unsafe", w.disk()}); err != nil {
		return err
	}
	fmt.Printf("- precondition: VM %s defined on an overlay of the base, full point 1 in %v, then %d random 64 KiB writes (%d distinct clusters, %.1f MiB changed) in %v\n",
		backupVM, full.Round(100*time.Millisecond), ch.Writes, ch.Clusters, float64(ch.Bytes)/(1<<20), time.Since(start).Round(100*time.Millisecond))
	if err := os.Mkdir(w.pre(), 0o755); err != nil {
		return err
	}
	for _, name := range []string{"disk.qcow2", "state", "bk"} {
		if err := os.Rename(w.path(name), filepath.Join(w.pre(), name)); err != nil {
			return err
		}
	}
	// The state directory names the disk by path: it stays where the VM
	// was defined, where reset copies it back.
	return nil
}

// errMismatch marks a result that differs from what it must be.
var errMismatch = errors.New("MISMATCH")

// checkPoint checks point 2 of the work folder's backup: listed with the
// kind wanted, and its guest content that of the disk.
func checkPoint(w backupWork, kind string) (*backup.Point, error) {
	x, err := backup.ReadIndex(w.bk())
	if err != nil {
		return nil, err
	}
	p := x.Point(2)
	switch {
	case p == nil:
		return nil, fmt.Errorf("%w: %s has no point 2", errMismatch, w.bk())
	case p.Kind != kind:
		return nil, fmt.Errorf("%w: point 2 is %s (%s), not %s", errMismatch, p.Kind, p.Reason, kind)
	case p.Disk(backupTarget) == nil:
		return nil, fmt.Errorf("%w: point 2 has no disk %s", errMismatch, backupTarget)
	}
	return p, compareImages(filepath.Join(w.bk(), backup.FileName(backupTarget, 2)), w.disk())
}

// compareImages runs qemu-img compare (guest content, both qcow2).
func compareImages(a, b string) error {
	out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", a, b).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: qemu-img compare %s %s: %v: %s", errMismatch, a, b, err, firstLines(strings.TrimSpace(string(out)), 3))
	}
	return nil
}

// bytesFigure compares the incremental point's file (its allocated size,
// and its size as backup.json records it) with the bytes that changed;
// ok when both exceed them by writtenGoal at most.
func bytesFigure(file string, p *backup.Point, ch changes) (string, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil {
		return err.Error(), false
	}
	d := p.Disk(backupTarget)
	alloc := uint64(st.Blocks) * 512
	rel := func(n uint64) float64 { return float64(n)/float64(ch.Bytes) - 1 }
	ok := max(rel(alloc), rel(uint64(d.Bytes))) <= writtenGoal && min(rel(alloc), rel(uint64(d.Bytes))) >= -writtenGoal
	s := fmt.Sprintf("point 2: %.1f MiB allocated (%+.1f%%), backup.json bytes %.1f MiB (%+.1f%%), copied %.1f MiB; changed %.1f MiB (%d clusters)",
		mib(alloc), 100*rel(alloc), mib(uint64(d.Bytes)), 100*rel(uint64(d.Bytes)), mib(uint64(d.Copied)), mib(ch.Bytes), ch.Clusters)
	return s, ok
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// measureSides runs each side once untimed and checks its result, then
// times runs runs of each, the sides taking turns going first; every run
// after its side's Reset.
func measureSides(sides []*backupSide, runs int, timeout time.Duration) error {
	for i := -1; i < runs; i++ {
		for k := range sides {
			s := sides[(k+i+1)%len(sides)]
			if err := s.Reset(); err != nil {
				return fmt.Errorf("restoring the precondition: %w", err)
			}
			run, err := runOnce(timeout, s.Argv)
			if err != nil {
				return err
			}
			if run.Exit != 0 {
				return fmt.Errorf("%s exited %d: %s", shellQuote(s.Argv), run.Exit, firstLines(strings.TrimSpace(string(run.Stderr)+string(run.Stdout)), 3))
			}
			s.Runs.MaxRSS = max(s.Runs.MaxRSS, run.MaxRSSKiB)
			if i < 0 {
				s.Runs.Warm = run
				if err := s.Check(); err != nil {
					return fmt.Errorf("after %s: %w", s.Label, err)
				}
				continue
			}
			s.Runs.Walls = append(s.Runs.Walls, run.Wall)
		}
	}
	return nil
}

// printBackupTable prints the backup figures.
func printBackupTable(results []*BackupResult, runs int) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\n## Backups (median of %d timed runs of each side, each from the restored precondition, restore not timed)\n\n", runs)
	fmt.Println("| case | qchain | reference | reference tool | figure | goal | result | check |")
	fmt.Println("|---|---:|---:|---|---|---:|---|---|")
	for _, r := range results {
		if r.Failed {
			fmt.Printf("| %s | - | - | - | - | - | ERROR | %s |\n", r.Name, orDash(r.Verified))
			continue
		}
		if r.Bytes {
			fmt.Printf("| %s | - | - | - | %s | within %.0f%% | %s | %s |\n", r.Name, r.Figure, 100*r.Goal, passMiss(r.OK), r.Verified)
			continue
		}
		goal, verdict := "-", "-"
		if r.Goal > 0 {
			goal, verdict = fmt.Sprintf(">= %gx", r.Goal), passMiss(r.OK)
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name, fmtDur(r.Qchain.Runs.Median()), fmtDur(r.Other.Runs.Median()),
			r.Tool, r.Figure, goal, verdict, r.Verified)
	}
}

// backupFailed reports whether any backup result is a mismatch or could
// not be measured.
func backupFailed(results []*BackupResult) (mismatch, failed bool) {
	return slices.ContainsFunc(results, func(r *BackupResult) bool { return r.Verified == "MISMATCH" }),
		slices.ContainsFunc(results, func(r *BackupResult) bool { return r.Failed })
}
