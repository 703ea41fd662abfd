package cli

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/chain"
)

// fakeClock returns a progressBar clock and a function that moves it on.
func fakeClock() (func() time.Time, func(time.Duration)) {
	now := time.Unix(1000, 0)
	return func() time.Time { return now }, func(d time.Duration) { now = now.Add(d) }
}

func TestProgressBarTerminal(t *testing.T) {
	var out strings.Builder
	p := newProgressBar(&out, "pull")
	p.terminal = true
	var advance func(time.Duration)
	p.now, advance = fakeClock()
	p.Update(0, 8<<20)
	advance(2 * time.Second)
	p.Update(2<<20, 8<<20)
	p.Finish(false)
	lines := strings.Split(out.String(), "\r")
	last := lines[len(lines)-1]
	for _, want := range []string{"pull [=======>", " 25% 2.0 MiB / 8.0 MiB", "1.0 MiB/s", "ETA 6s"} {
		if !strings.Contains(last, want) {
			t.Errorf("progress line %q lacks %q", last, want)
		}
	}
	if !strings.HasSuffix(last, "\n") {
		t.Errorf("Finish did not end the line: %q", last)
	}
}

// TestProgressBarPlain feeds a job's progress in 1% steps to the display
// of a non-terminal: no "\r", one line at every 10% and one at the end.
func TestProgressBarPlain(t *testing.T) {
	var out strings.Builder
	p := newProgressBar(&out, "commit")
	if p.terminal {
		t.Fatal("a strings.Builder is taken for a terminal")
	}
	var advance func(time.Duration)
	p.now, advance = fakeClock()
	const total = 100 << 20
	for i := 0; i <= 99; i++ {
		p.Update(int64(i)*total/100, total)
		advance(10 * time.Millisecond)
	}
	p.Finish(true)
	s := out.String()
	if strings.Contains(s, "\r") {
		t.Errorf("non-terminal output has a carriage return:\n%q", s)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	var pcts []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "commit: ") {
			t.Errorf("line %q does not start with the label", l)
		}
		pcts = append(pcts, strings.Fields(l)[1])
	}
	want := "0% 10% 20% 30% 40% 50% 60% 70% 80% 90% 100%"
	if got := strings.Join(pcts, " "); got != want {
		t.Errorf("plain lines at %s, want %s:\n%s", got, want, s)
	}
	if !strings.Contains(lines[len(lines)-1], "100% 100 MiB / 100 MiB") {
		t.Errorf("last line %q is not the end", lines[len(lines)-1])
	}
}

// TestProgressBarPlainJumps: progress that jumps over several steps
// prints one line, and a failed job ends on where it stopped.
func TestProgressBarPlainJumps(t *testing.T) {
	var out strings.Builder
	p := newProgressBar(&out, "pull")
	p.now, _ = fakeClock()
	p.Update(0, 1000)
	p.Update(350, 1000)
	p.Update(360, 1000)
	p.Update(410, 1000)
	p.Finish(false)
	got := out.String()
	want := "pull:   0% 0 B / 1000 B\npull:  35% 350 B / 1000 B\npull:  41% 410 B / 1000 B\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestIsTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if isTerminal(w) {
		t.Error("a pipe is taken for a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("a regular file is taken for a terminal")
	}
	pty, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal to check the positive case: %v", err)
	}
	defer pty.Close()
	if !isTerminal(pty) {
		t.Error("a pseudo-terminal is not taken for a terminal")
	}
}

// TestStepProgressPlain: the snapshot commands' --verbose display, on a
// non-terminal, one labelled set of lines per step, no "\r".
func TestStepProgressPlain(t *testing.T) {
	var out strings.Builder
	show := stepProgress(&out)
	pull := chain.Step{Kind: chain.StepPull, File: "/img/vm.vda.s2.qcow2"}
	commit := chain.Step{Kind: chain.StepCommit, Top: "/img/vm.vda.s3.qcow2", Base: "/img/vm.vda.s2.qcow2"}
	for i := int64(0); i <= 20; i++ {
		show(pull, i*5, 100)
	}
	show(pull, 100, 100) // reported again after the end: no new line
	for i := int64(0); i <= 4; i++ {
		show(commit, i*25, 100)
	}
	s := out.String()
	if strings.Contains(s, "\r") {
		t.Errorf("non-terminal output has a carriage return:\n%q", s)
	}
	if n := strings.Count(s, "pull vm.vda.s2.qcow2: "); n != 11 {
		t.Errorf("%d pull lines, want 11 (every 10%%):\n%s", n, s)
	}
	if n := strings.Count(s, "commit vm.vda.s3.qcow2 into vm.vda.s2.qcow2: "); n != 5 {
		t.Errorf("%d commit lines, want 5:\n%s", n, s)
	}
}
