package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Export case: `qchain export -o OUT TOP` of the 10-layer chain of the map
// cases (64 GiB, 5,000 random 64 KiB writes per layer: about 3 GiB of
// data scattered over the disk and the layers) against `qemu-img convert
// -O raw TOP OUT`, both writing a sparse raw file next to the images.
// Each run starts with no output file (the last one removed and synced,
// untimed); the untimed run of each side is checked with qemu-img compare
// of the two raw files, and the bytes each output allocates are reported:
// holes must stay holes.

// ExportResult is the measured export case.
type ExportResult struct {
	Name         string
	Qchain, Qemu *backupSide
	Alloc        [2]int64 // bytes allocated by qchain's output and qemu-img's
	Size         int64    // the outputs' size
	Verified     string
	Failed       bool
}

// runExportBench measures the export case when selected. ok is false when
// its image could not be made.
func runExportBench(root, qchain string, runs int, timeout time.Duration, selected func(string) bool, spec ImageSpec, qemu string) (results []*ExportResult, ok bool) {
	r := &ExportResult{Name: fmt.Sprintf("export to a sparse raw file vs qemu-img convert -O raw, %d-layer chain", spec.Layers)}
	if !selected(r.Name) {
		return nil, true
	}
	fmt.Printf("\n## Export (%s)\n", qemu)
	fmt.Printf("- %s (%s): ", spec.Key(), spec.Describe())
	img, err := Prepare(root, spec)
	if err != nil {
		fmt.Println("FAILED")
		fmt.Fprintln(os.Stderr, "bench: generating:", err)
		return nil, false
	}
	how := "generated in"
	if img.Cached {
		how = "cached; generated earlier in"
	}
	fmt.Printf("%s %s\n", how, img.GenTime.Round(100*time.Millisecond))
	dir := filepath.Join(root, "export-work")
	fmt.Printf("- work folder: %s\n", dir)
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return nil, false
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return nil, false
	}
	defer os.RemoveAll(dir)
	qOut, mOut := filepath.Join(dir, "qchain.raw"), filepath.Join(dir, "qemu-img.raw")
	fresh := func(out string) func() error {
		return func() error {
			if err := os.Remove(out); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			syscall.Sync()
			return nil
		}
	}
	r.Qchain = &backupSide{
		Label: "qchain export",
		Argv:  []string{qchain, "export", "-o", qOut, img.Top},
		Reset: fresh(qOut),
		Check: func() error { return nil }, // compared after qemu-img's run
	}
	r.Qemu = &backupSide{
		Label: "qemu-img convert",
		Argv:  []string{"qemu-img", "convert", "-O", "raw", img.Top, mOut},
		Reset: fresh(mOut),
		Check: func() error {
			out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", qOut, mOut).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: qemu-img compare %s %s: %v: %s", errMismatch, qOut, mOut, err, firstLines(strings.TrimSpace(string(out)), 3))
			}
			for i, name := range []string{qOut, mOut} {
				var st syscall.Stat_t
				if err := syscall.Stat(name, &st); err != nil {
					return err
				}
				r.Alloc[i], r.Size = st.Blocks*512, st.Size
			}
			return nil
		},
	}
	fmt.Printf("\n## Export commands on %s (no output file before each run, its removal and a sync not timed; one untimed run of each side, compared, then %d timed runs each)\n", qemu, runs)
	fmt.Printf("\n%s (%s):\n    %s\n    %s\n", r.Name, spec.Describe(), shellQuote(r.Qchain.Argv), shellQuote(r.Qemu.Argv))
	if err := measureSides([]*backupSide{r.Qchain, r.Qemu}, runs, timeout); err != nil {
		r.Failed = true
		if errors.Is(err, errMismatch) {
			r.Verified = "MISMATCH"
		}
		fmt.Printf("    ERROR: %v\n", err)
		return []*ExportResult{r}, true
	}
	r.Verified = "equal (qemu-img compare)"
	fmt.Printf("    outputs of the untimed runs: equal (qemu-img compare); %s each, allocated: qchain %.1f MiB, qemu-img %.1f MiB\n",
		sizeName(uint64(r.Size)), mib(uint64(r.Alloc[0])), mib(uint64(r.Alloc[1])))
	fmt.Printf("    runs: qchain %v; qemu-img %v\n", roundAll(r.Qchain.Runs.Walls), roundAll(r.Qemu.Runs.Walls))
	return []*ExportResult{r}, true
}

// printExportTable prints the export figures.
func printExportTable(results []*ExportResult, runs int) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\n## Export (median of %d timed runs of each side, each into a fresh output file)\n\n", runs)
	fmt.Println("| case | qchain | qemu-img | ratio (qemu-img/qchain) | allocated (qchain / qemu-img) | peak RSS (qchain / qemu-img) | check |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---|")
	for _, r := range results {
		if r.Failed {
			fmt.Printf("| %s | - | - | - | - | - | %s |\n", r.Name, orDash(r.Verified))
			continue
		}
		ratio := 0.0
		if qm := r.Qchain.Runs.Median(); qm > 0 {
			ratio = float64(r.Qemu.Runs.Median()) / float64(qm)
		}
		fmt.Printf("| %s | %s | %s | %.2fx | %.1f / %.1f MiB | %s / %s | %s |\n", r.Name,
			fmtDur(r.Qchain.Runs.Median()), fmtDur(r.Qemu.Runs.Median()), ratio,
			mib(uint64(r.Alloc[0])), mib(uint64(r.Alloc[1])),
			fmtKiB(r.Qchain.Runs.MaxRSS), fmtKiB(r.Qemu.Runs.MaxRSS), r.Verified)
	}
}
