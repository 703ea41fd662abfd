package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// caseExtras are the checks only some cases get, by case name.
type caseExtras struct {
	mapRanges    [][]string // extra flag sets for map, each run on both tools
	exportStdout bool       // also compare `qchain export IMAGE` on stdout
}

var extras = map[string]caseExtras{
	"random-writes": {mapRanges: [][]string{
		{"--start-offset=1000000", "--max-length=5000000"},
		{"--start-offset=30000000"},
		{"--max-length=123456"},
	}, exportStdout: true},
	"extl2-64k":          {mapRanges: [][]string{{"--start-offset=3000", "--max-length=100000"}}},
	"huge-1T":            {mapRanges: [][]string{{"--start-offset=549755809792", "--max-length=3145728"}}},
	"chain-12":           {mapRanges: [][]string{{"--start-offset=65536", "--max-length=1048576"}}},
	"backing-shorter":    {mapRanges: [][]string{{"--start-offset=983040", "--max-length=100000"}}, exportStdout: true},
	"raw-base-unaligned": {mapRanges: [][]string{{"--start-offset=99000", "--max-length=2000"}}},
	"cluster-512":        {mapRanges: [][]string{{"--max-length=70000"}}, exportStdout: true},
}

// probe is one command run on both tools with the same arguments, in the
// same folder; qchain also gets the flags that select the layout of the
// qemu-img on PATH.
type probe struct {
	name  string
	dir   string
	args  []string // after the tool name, identical for qemu-img and qchain
	human bool     // output compared as text, not as JSON
	ref   fixtures.Result
}

// TestDifferentialCases builds every fixtures.QemuCases image and demands
// that qchain's info, map, check and export agree with qemu-img's (JSON
// parsed, human output as text, in the layout of the qemu-img on PATH) and
// that qchain changes no file of the chain.
func TestDifferentialCases(t *testing.T) {
	bin := requireTools(t)
	compat := compatFlags(t)
	cases := fixtures.QemuCases()
	names := map[string]bool{}
	for _, c := range cases {
		names[c.Name] = true
	}
	for name := range extras {
		if !names[name] {
			t.Errorf("extras name %q is no case", name)
		}
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			top := c.Build(t, root)
			differential(t, bin, compat, root, top, extras[c.Name])
		})
	}
}

func differential(t *testing.T, bin string, compat []string, root, top string, ex caseExtras) {
	ctx := context.Background()
	work := t.TempDir()
	rel, err := filepath.Rel(root, top)
	if err != nil {
		t.Fatal(err)
	}
	probes := []probe{
		{name: "info", dir: root, args: []string{"info", "--output=json", top}},
		{name: "info-relative", dir: root, args: []string{"info", "--output=json", rel}},
		{name: "info-backing-chain", dir: root, args: []string{"info", "--backing-chain", "--output=json", top}},
		{name: "info-backing-chain-relative", dir: root, args: []string{"info", "--backing-chain", "--output=json", rel}},
		{name: "map", dir: root, args: []string{"map", "--output=json", top}},
		{name: "check", dir: root, args: []string{"check", "--output=json", top}},
		{name: "info-human", dir: root, args: []string{"info", top}, human: true},
		{name: "info-backing-chain-human-relative", dir: root, args: []string{"info", "--backing-chain", rel}, human: true},
		{name: "map-human", dir: root, args: []string{"map", top}, human: true},
		{name: "check-human", dir: root, args: []string{"check", top}, human: true},
	}
	for i, r := range ex.mapRanges {
		args := append(append([]string{"map", "--output=json"}, r...), top)
		probes = append(probes, probe{name: fmt.Sprintf("map-range-%d", i), dir: root, args: args})
	}

	before := mustFingerprint(t, root)
	for i := range probes {
		p := &probes[i]
		p.ref = fixtures.Run(ctx, p.dir, "qemu-img", p.args...)
		// check exits non-zero on findings, map's text on compressed data.
		mayFail := p.args[0] == "check" || p.human && p.args[0] == "map"
		if p.ref.Err != nil || (p.ref.ExitCode != 0 && !mayFail) {
			t.Fatalf("reference run failed: %s: exit %d, %v\n%s", p.ref.Cmd, p.ref.ExitCode, p.ref.Err, p.ref.Stderr)
		}
	}
	refRaw := filepath.Join(work, "ref.raw")
	if res := fixtures.Run(ctx, root, "qemu-img", "convert", "-O", "raw", top, refRaw); res.Err != nil || res.ExitCode != 0 {
		t.Fatalf("reference run failed: %s: exit %d, %v\n%s", res.Cmd, res.ExitCode, res.Err, res.Stderr)
	}
	if d := fingerprintDiff(before, mustFingerprint(t, root)); d != "" {
		t.Fatalf("qemu-img itself changed the files, so nothing can be compared:\n%s", d)
	}

	for _, p := range probes {
		t.Run(p.name, func(t *testing.T) {
			got := fixtures.Run(ctx, p.dir, bin, withFlags(p.args, compat)...)
			if p.human {
				compareTextRun(t, p.ref, got)
			} else {
				compareJSONRun(t, p.ref, got)
			}
			if p.args[0] == "check" && string(got.Stderr) != string(p.ref.Stderr) {
				// The findings, one line each, in qemu-img's order.
				t.Errorf("check messages differ from qemu-img's:\n--- qemu-img\n%s--- qchain\n%s", p.ref.Stderr, got.Stderr)
			}
		})
	}
	t.Run("export", func(t *testing.T) {
		out := filepath.Join(work, "out.raw")
		compareExport(t, bin, root, refRaw, out, "", "export", "-o", out, top)
	})
	if ex.exportStdout {
		t.Run("export-stdout", func(t *testing.T) {
			out := filepath.Join(work, "stdout.raw")
			compareExport(t, bin, root, refRaw, out, out, "export", top)
		})
	}
	t.Run("read-only", func(t *testing.T) {
		if d := fingerprintDiff(before, mustFingerprint(t, root)); d != "" {
			t.Errorf("qchain changed files of the chain:\n%s", d)
		}
	})
}

func mustFingerprint(t *testing.T, root string) map[string]chainFileState {
	t.Helper()
	fp, err := fingerprint(root)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// compareJSONRun demands the same exit code and the same parsed JSON from
// qchain (got) as from qemu-img (ref).
func compareJSONRun(t *testing.T, ref, got fixtures.Result) {
	t.Helper()
	if got.Err != nil {
		t.Fatalf("%v\nstderr: %s", got.Err, got.Stderr)
	}
	if got.ExitCode != ref.ExitCode {
		t.Errorf("exit code: qemu-img %d, qchain %d\nqchain stderr: %s", ref.ExitCode, got.ExitCode, got.Stderr)
	}
	want, err := parseJSON(ref.Stdout)
	if err != nil {
		t.Fatalf("qemu-img output is no JSON (%v):\n%s", err, ref.Stdout)
	}
	have, err := parseJSON(got.Stdout)
	if err != nil {
		t.Fatalf("qchain output is no JSON (%v)\nstdout:\n%s\nstderr:\n%s", err, got.Stdout, got.Stderr)
	}
	if !reflect.DeepEqual(want, have) {
		t.Errorf("%s: JSON differs from qemu-img:\n  %s\n--- qemu-img %s\n%s\n--- qchain\n%s",
			got.Cmd, strings.Join(jsonDiff(want, have), "\n  "), ref.Cmd, ref.Stdout, got.Stdout)
	}
}

// exportTimeout bounds one qchain export.
const exportTimeout = 2 * time.Minute

// compareExport runs qchain with args in dir, sending its standard output to
// stdoutFile when not empty, and compares the file out with refRaw. A
// watchdog kills qchain once out holds far more disk blocks than the
// reference, so a non-sparse export of the 1 TiB case cannot fill the disk.
func compareExport(t *testing.T, bin, dir, refRaw, out, stdoutFile string, args ...string) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(refRaw, &st); err != nil {
		t.Fatal(err)
	}
	limit := 2*st.Blocks*512 + 256<<20

	ctx, cancel := context.WithTimeout(context.Background(), exportTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if stdoutFile != "" {
		f, err := os.Create(stdoutFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdout = f
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var runErr error
	overLimit := false
wait:
	for {
		select {
		case runErr = <-done:
			break wait
		case <-tick.C:
			var s syscall.Stat_t
			if syscall.Stat(out, &s) == nil && s.Blocks*512 > limit {
				overLimit = true
				cancel()
			}
		}
	}
	switch {
	case overLimit:
		t.Fatalf("qchain %s: killed after writing more than %d bytes of disk blocks (qemu-img's export takes %d): export is not sparse",
			strings.Join(args, " "), limit, st.Blocks*512)
	case ctx.Err() != nil:
		t.Fatalf("qchain %s: timed out after %v", strings.Join(args, " "), exportTimeout)
	case runErr != nil:
		t.Fatalf("qchain %s: %v\nstderr: %s", strings.Join(args, " "), runErr, stderr.String())
	}
	diff, err := compareRawFiles(refRaw, out)
	if err != nil {
		t.Fatal(err)
	}
	if diff != "" {
		t.Errorf("qchain %s differs from qemu-img convert -O raw: %s", strings.Join(args, " "), diff)
	}
}
