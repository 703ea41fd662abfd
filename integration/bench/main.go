package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// memGoalKiB is the peak-memory goal for qchain: under 64 MiB.
const memGoalKiB = 64 << 10

// Case is one side-by-side measurement.
type Case struct {
	Name  string
	Image *Image // nil for the start-up baseline
	// Sub is the qchain and qemu-img subcommand and flags; the image path
	// is appended.
	Sub []string
	// Baseline marks the start-up case (--version): its outputs are not
	// compared and it has no goal.
	Baseline bool
	// SpeedGoal is the qemu-img/qchain time ratio to reach; 0 means the
	// case is held to the memory goal instead.
	SpeedGoal float64
	// QchainArgs and QemuArgs, when set, are the whole argument lists of
	// the two tools (different commands doing comparable work); their
	// outputs are then not compared.
	QchainArgs, QemuArgs []string
}

// Result is a measured case.
type Result struct {
	Case         Case
	Qchain, Qemu *Sample
	Verdict      Verdict
	QchainCmd    string
	QemuCmd      string
	Ratio        float64
	SpeedOK      bool
	MemOK        bool
}

// compatFlags returns the qchain flags that print the layout of the
// qemu-img on PATH, whose output qchain's is compared with: none for 10.x,
// --compat=7.2 for 7.x.
func compatFlags() ([]string, error) {
	v, err := fixtures.QemuImgVersion(context.Background())
	switch {
	case err != nil:
		return nil, err
	case v.Major >= 10:
		return nil, nil
	case v.Major == 7:
		return []string{"--compat=7.2"}, nil
	}
	return nil, fmt.Errorf("qemu-img %s on PATH: qchain prints the layouts of 7.2 and 10.0 only", v)
}

func main() {
	if os.Getenv(launcherEnv) != "" {
		os.Exit(launch())
	}
	if len(os.Args) > 1 && os.Args[1] == ckStampArg {
		os.Exit(stampMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == ckClientArg {
		os.Exit(clientMain(os.Args[2:]))
	}
	os.Exit(run())
}

func run() int {
	defDir := os.Getenv("BENCH_DIR")
	if defDir == "" {
		defDir = filepath.Join(os.TempDir(), "qchain-bench")
	}
	n := flag.Int("n", 5, "timed runs of each tool per case (the median is reported)")
	quick := flag.Bool("quick", false, "small images, for a fast smoke run (goals are not meaningful)")
	dir := flag.String("dir", defDir, "folder that caches the generated images (env BENCH_DIR)")
	timeout := flag.Duration("timeout", 10*time.Minute, "limit on one run of a tool")
	only := flag.String("run", "", "measure only the cases whose name matches this regular expression (and make only their images)")
	flag.Parse()
	filter, err := regexp.Compile(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: -run:", err)
		return 2
	}
	selected := filter.MatchString
	if *n < 1 {
		fmt.Fprintln(os.Stderr, "bench: -n must be at least 1")
		return 2
	}
	qchain, err := findQchain()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s not found (make deps installs it)\n", tool)
			return 2
		}
	}
	compat, err := compatFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}

	chainSpec := ImageSpec{Label: "chain", Layers: 10, Writes: 5000, VirtualSize: 64 << 30, Seed: 1}
	checkSpec := ImageSpec{Label: "single", Layers: 1, Writes: 20000, VirtualSize: 256 << 30, Seed: 2, Prealloc: true}
	hugeSpec := ImageSpec{Label: "huge", Layers: 1, Writes: 4000, VirtualSize: 1 << 40, Seed: 3}
	// Two snapshots of a 64 GiB disk holding 8 GiB of data that differ in
	// 1% of the clusters (10486 random 64 KiB writes in the top layer).
	diffSpec := ImageSpec{Label: "diff", Layers: 3, Writes: 10486, VirtualSize: 64 << 30, Seed: 4, BaseFill: 8 << 30, TopOnly: true}
	if *quick {
		chainSpec.Layers, chainSpec.Writes = 2, 500
		checkSpec.Writes, checkSpec.VirtualSize = 2000, 1<<30
		hugeSpec.Writes = 300
		diffSpec.Writes, diffSpec.VirtualSize, diffSpec.BaseFill = 160, 1<<30, 128<<20
	}

	printMachine(qchain, *dir, *n, *quick)
	if r, err := runOnce(time.Minute, []string{"true"}); err == nil {
		fmt.Printf("- peak-RSS floor (launcher running `true`): %s\n", fmtKiB(r.MaxRSSKiB))
	}
	printStartFloor(max(*n, 10))
	// The cases name their images by spec (an Image holding only its
	// Spec, and "$IMAGE:label" or "$DIR:label/" in arguments); only the
	// images of the selected cases are made.
	images := map[string]*Image{}
	top := func(label string) string { return "$IMAGE:" + label }
	cases := []Case{
		{Name: "start-up baseline (--version)", Sub: []string{"--version"}, Baseline: true},
		{Name: fmt.Sprintf("map, %d-layer chain", chainSpec.Layers), Image: &Image{Spec: chainSpec},
			Sub: []string{"map", "--output=json"}, SpeedGoal: 20},
		{Name: fmt.Sprintf("info --backing-chain, %d-layer chain", chainSpec.Layers), Image: &Image{Spec: chainSpec},
			Sub: []string{"info", "--backing-chain", "--output=json"}, SpeedGoal: 5},
		{Name: fmt.Sprintf("check, %s image", sizeName(checkSpec.VirtualSize)), Image: &Image{Spec: checkSpec},
			Sub: []string{"check", "--output=json"}, SpeedGoal: 3},
		{Name: fmt.Sprintf("layers vs qemu-img map, %d-layer chain", chainSpec.Layers), Image: &Image{Spec: chainSpec}, SpeedGoal: 1,
			QchainArgs: []string{"layers", "--output=json", top("chain")},
			QemuArgs:   []string{"map", "--output=json", top("chain")}},
		{Name: fmt.Sprintf("diff of two snapshots (1%% apart) vs compare of identical chains, %s", sizeName(diffSpec.VirtualSize)), Image: &Image{Spec: diffSpec}, SpeedGoal: 10,
			QchainArgs: []string{"diff", "--output=json", "$DIR:diff/" + layerName(1), top("diff")},
			QemuArgs:   []string{"compare", top("diff"), top("diff")}},
		{Name: "map, 1T image (memory)", Image: &Image{Spec: hugeSpec}, Sub: []string{"map", "--output=json"}},
		{Name: "check, 1T image (memory)", Image: &Image{Spec: hugeSpec}, Sub: []string{"check", "--output=json"}},
	}
	cases = slices.DeleteFunc(cases, func(c Case) bool { return !selected(c.Name) })
	if len(cases) > 0 {
		fmt.Println("\n## Images")
	}
	for _, c := range cases {
		if c.Image == nil || images[c.Image.Spec.Label] != nil {
			continue
		}
		spec := c.Image.Spec
		fmt.Printf("- %s (%s): ", spec.Key(), spec.Describe())
		img, err := Prepare(*dir, spec)
		if err != nil {
			fmt.Println("FAILED")
			fmt.Fprintln(os.Stderr, "bench: generating:", err)
			return 2
		}
		how := "generated in"
		if img.Cached {
			how = "cached; generated earlier in"
		}
		fmt.Printf("%s %s, %.0f MiB of qcow2 files\n", how, img.GenTime.Round(100*time.Millisecond), float64(img.HostBytes)/(1<<20))
		images[spec.Label] = img
	}
	for i := range cases {
		c := &cases[i]
		if c.Image == nil {
			continue
		}
		c.Image = images[c.Image.Spec.Label]
		for _, args := range [][]string{c.QchainArgs, c.QemuArgs} {
			for k, a := range args {
				for label, img := range images {
					a = strings.ReplaceAll(a, "$IMAGE:"+label, img.Top)
					a = strings.ReplaceAll(a, "$DIR:"+label+"/", img.Dir+"/")
				}
				args[k] = a
			}
		}
	}
	if len(cases) > 0 {
		fmt.Println("\n## Commands")
	}
	var results []*Result
	mismatch, failed := false, false
	for _, c := range cases {
		r := &Result{Case: c}
		qArgv := append([]string{qchain}, c.Sub...)
		if len(c.Sub) > 0 && (c.Sub[0] == "info" || c.Sub[0] == "map" || c.Sub[0] == "check") {
			qArgv = append(append([]string{qchain, c.Sub[0]}, compat...), c.Sub[1:]...)
		}
		mArgv := append([]string{"qemu-img"}, c.Sub...)
		what := "process start-up and exit, no image"
		if c.Image != nil {
			qArgv, mArgv = append(qArgv, c.Image.Top), append(mArgv, c.Image.Top)
			what = c.Image.Spec.Describe()
		}
		if c.QchainArgs != nil {
			qArgv = append([]string{qchain}, c.QchainArgs...)
			mArgv = append([]string{"qemu-img"}, c.QemuArgs...)
		}
		r.QchainCmd, r.QemuCmd = shellQuote(qArgv), shellQuote(mArgv)
		fmt.Printf("\n%s (%s):\n    %s\n    %s\n", c.Name, what, r.QchainCmd, r.QemuCmd)
		r.Qchain, r.Qemu, err = measure(*n, *timeout, qArgv, mArgv)
		if err != nil {
			fmt.Printf("    ERROR: %v\n", err)
			failed = true
			continue
		}
		if c.Baseline || c.QchainArgs != nil {
			r.Verdict = Verdict{Equal: true}
			fmt.Println("    outputs: not compared (different commands)")
		} else if r.Verdict = compareRuns(r.Qchain.Warm, r.Qemu.Warm); r.Verdict.Equal {
			fmt.Printf("    outputs: equal once parsed; byte-identical: %s (%d bytes)\n",
				yesNo(r.Verdict.ByteIdentical), len(r.Qemu.Warm.Stdout))
		} else {
			mismatch = true
			fmt.Printf("    outputs: MISMATCH (byte-identical: %s)\n", yesNo(r.Verdict.ByteIdentical))
			for _, d := range r.Verdict.Diff {
				fmt.Printf("      %s\n", d)
			}
		}
		if qm := r.Qchain.Median(); qm > 0 {
			r.Ratio = float64(r.Qemu.Median()) / float64(qm)
		}
		r.SpeedOK = r.Ratio >= c.SpeedGoal
		r.MemOK = r.Qchain.MaxRSS < memGoalKiB
		if c.Baseline && (r.Qchain.Warm.Exit != 0 || r.Qemu.Warm.Exit != 0) {
			fmt.Printf("    ERROR: --version exited %d (qchain) and %d (qemu-img)\n", r.Qchain.Warm.Exit, r.Qemu.Warm.Exit)
			failed = true
		}
		results = append(results, r)
	}

	jobRuns := max(*n, 3)
	jobResults, ok := runJobBench(*dir, qchain, jobRuns, *quick, *timeout, selected, qemuVersion())
	if !ok {
		return 2
	}
	// The same block jobs on QEMU 10.0 (qemu-storage-daemon and qemu-img
	// of that version first in PATH), when scripts/qemu10.sh can provide it.
	if bin, err := qemu10Bin(); err != nil {
		fmt.Printf("\n(no QEMU 10.0 block-job rows: %v)\n", err)
	} else {
		restore := prependPath(bin)
		more, ok := runJobBench(*dir, qchain, jobRuns, *quick, *timeout, selected, qemuVersion())
		restore()
		if !ok {
			return 2
		}
		jobResults = append(jobResults, more...)
	}

	backupResults, ok := runBackupBench(*dir, qchain, *n, *quick, *timeout, selected, qemuVersion())
	if !ok {
		return 2
	}
	exportResults, ok := runExportBench(*dir, qchain, *n, *timeout, selected, chainSpec, qemuVersion())
	if !ok {
		return 2
	}
	ckResults, ok := runCheckpointBench(qchain, *n, *quick, *timeout, selected, qemuVersion())
	if !ok {
		return 2
	}

	printTables(results, *n)
	printJobTable(jobResults, jobRuns)
	printBackupTable(backupResults, *n)
	if m, f := backupFailed(backupResults); m {
		mismatch = true
	} else if f {
		failed = true
	}
	printExportTable(exportResults, *n)
	for _, r := range exportResults {
		if r.Verified == "MISMATCH" {
			mismatch = true
		} else if r.Failed {
			failed = true
		}
	}
	printCheckpointTable(ckResults, *n)
	printRevertParts(ckResults)
	for _, r := range ckResults {
		failed = failed || r.Err != nil
	}
	for _, r := range jobResults {
		if r.Verified == "MISMATCH" {
			mismatch = true
		} else if r.Failed {
			failed = true
		}
	}
	switch {
	case mismatch:
		fmt.Println("\nFAIL: MISMATCH: qchain's output, a block job's, a backup's or an export's result differs from the reference (see above)")
		return 1
	case failed:
		fmt.Println("\nFAIL: a case could not be measured (see above)")
		return 1
	}
	return 0
}

func printTables(results []*Result, n int) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\n## Time (median of %d runs after one warm-up run of each tool)\n\n", n)
	fmt.Println("| case | qchain | qemu-img | ratio (qemu-img/qchain) | goal | result | output |")
	fmt.Println("|---|---:|---:|---:|---:|---|---|")
	for _, r := range results {
		goal, verdict, output := "-", "-", outputWord(r.Verdict)
		if r.Case.SpeedGoal > 0 {
			goal = fmt.Sprintf(">= %gx", r.Case.SpeedGoal)
			verdict = passMiss(r.SpeedOK)
		}
		if r.Case.Baseline || r.Case.QchainArgs != nil {
			output = "not compared"
		}
		fmt.Printf("| %s | %s | %s | %.1fx | %s | %s | %s |\n", r.Case.Name,
			fmtDur(r.Qchain.Median()), fmtDur(r.Qemu.Median()), r.Ratio, goal, verdict, output)
	}
	fmt.Println("\n## Peak memory (max RSS over all runs)")
	fmt.Println()
	fmt.Println("| case | qchain | qemu-img | goal (qchain) | result |")
	fmt.Println("|---|---:|---:|---:|---|")
	for _, r := range results {
		goal, verdict := "-", "-"
		if r.Case.SpeedGoal == 0 && !r.Case.Baseline {
			goal, verdict = "< 64 MiB", passMiss(r.MemOK)
		}
		fmt.Printf("| %s | %s | %s | %s | %s |\n", r.Case.Name,
			fmtKiB(r.Qchain.MaxRSS), fmtKiB(r.Qemu.MaxRSS), goal, verdict)
	}
}

func outputWord(v Verdict) string {
	switch {
	case !v.Equal:
		return "MISMATCH"
	case v.ByteIdentical:
		return "equal, byte-identical"
	}
	return "equal parsed, bytes differ"
}

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func fmtDur(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func fmtKiB(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }

// findQchain returns $QCHAIN_BIN, or bin/qchain under the module root.
func findQchain() (string, error) {
	bin := os.Getenv("QCHAIN_BIN")
	if bin == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", err
		}
		bin = filepath.Join(root, "bin", "qchain")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("qchain binary: %w (run make build, or set QCHAIN_BIN)", err)
	}
	return bin, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the current folder; set QCHAIN_BIN")
		}
		dir = parent
	}
}

// printMachine prints what the figures were measured on.
func printMachine(qchain, dir string, n int, quick bool) {
	fmt.Println("# qchain vs qemu-img")
	fmt.Println()
	fmt.Printf("- CPUs: %d (%s)\n", runtime.NumCPU(), cpuModel())
	fmt.Printf("- Go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if out, err := exec.Command("qemu-img", "--version").Output(); err == nil {
		fmt.Printf("- %s\n", strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	}
	fmt.Printf("- qchain: %s\n", qchain)
	fmt.Printf("- images: %s\n", dir)
	mode := "full"
	if quick {
		mode = "quick (small images; goals not meaningful)"
	}
	fmt.Printf("- runs: %d per tool per case, %s\n", n, mode)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown model"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown model"
}

// qemuVersion returns "QEMU X.Y" of the qemu-img first in PATH.
func qemuVersion() string {
	out, err := exec.Command("qemu-img", "--version").Output()
	if err != nil {
		return "QEMU ?"
	}
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return "QEMU ?"
	}
	v := f[2]
	if i := strings.Index(v, "."); i >= 0 {
		if j := strings.Index(v[i+1:], "."); j >= 0 {
			v = v[:i+1+j]
		}
	}
	return "QEMU " + v
}

// qemu10Bin returns the folder of QEMU 10.0's wrappers: $QCHAIN_QEMU10_BIN,
// else what scripts/qemu10.sh prints (it fetches QEMU 10.0 when missing).
func qemu10Bin() (string, error) {
	if bin := os.Getenv("QCHAIN_QEMU10_BIN"); bin != "" {
		return bin, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "qemu10.sh")).Output()
	if err != nil {
		return "", fmt.Errorf("scripts/qemu10.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// prependPath puts dir first in PATH and returns a function that restores
// the old PATH.
func prependPath(dir string) (restore func()) {
	old := os.Getenv("PATH")
	os.Setenv("PATH", dir+string(os.PathListSeparator)+old)
	return func() { os.Setenv("PATH", old) }
}
