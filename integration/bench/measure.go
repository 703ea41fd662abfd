package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Run is one execution of a tool.
type Run struct {
	Wall time.Duration
	// Start is when the launcher started the tool (its wall clock).
	Start time.Time
	// MaxRSSKiB is the child's peak resident set, from getrusage.
	MaxRSSKiB int64
	Exit      int
	Stdout    []byte
	Stderr    []byte
}

// runOnce runs argv through a launcher (see launcher.go). The tool's stdout
// is a fresh regular file, as with `qemu-img map --output=json IMG > out`,
// read back after the run: both tools pay the same price for their output,
// and no reader process competes with them for the CPUs while they run (a
// pipe read by this process did: moving 10 MiB of map JSON through it cost
// the tools about 20 ms). Stderr is kept in memory. The wall time and peak
// RSS are the tool's own, as its launcher measured them. A non-zero exit of
// the tool is not an error here: callers compare exit statuses.
func runOnce(timeout time.Duration, argv []string) (*Run, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// The launcher has its own limit; this one, a little later, only
	// catches a launcher that hangs.
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	out, err := os.CreateTemp("", "qchain-bench-stdout-")
	if err != nil {
		pw.Close()
		return nil, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, self, argv...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", launcherEnv, int64(timeout)))
	cmd.Stdout, cmd.Stderr = out, &stderr
	cmd.ExtraFiles = []*os.File{pw} // fd 3 == launcherFD
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", shellQuote(argv), err)
	}
	report, readErr := io.ReadAll(pr)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", shellQuote(argv), err, firstLines(strings.TrimSpace(stderr.String()), 3))
	}
	if readErr != nil {
		return nil, readErr
	}
	stdout, err := os.ReadFile(out.Name())
	if err != nil {
		return nil, err
	}
	r := &Run{Stdout: stdout, Stderr: stderr.Bytes()}
	var wallNS, startNS int64
	if _, err := fmt.Sscan(string(report), &r.Exit, &r.MaxRSSKiB, &wallNS, &startNS); err != nil {
		return nil, fmt.Errorf("%s: launcher report %q: %v", shellQuote(argv), report, err)
	}
	r.Wall, r.Start = time.Duration(wallNS), time.Unix(0, startNS)
	return r, nil
}

// Sample is what the timed runs of one tool on one case gave.
type Sample struct {
	Warm   *Run
	Walls  []time.Duration
	MaxRSS int64
}

// Median is the median wall time (the mean of the middle two for an even
// count).
func (s *Sample) Median() time.Duration {
	w := slices.Clone(s.Walls)
	slices.Sort(w)
	n := len(w)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return w[n/2]
	}
	return (w[n/2-1] + w[n/2]) / 2
}

// measure warms the page cache with one untimed run of each tool, then
// times n runs of each, alternating the tools so that drift in the
// machine's load hits both alike. The warm-up outputs are returned for
// comparison; every timed run must exit as its warm-up did.
func measure(n int, timeout time.Duration, qchain, qemu []string) (q, m *Sample, err error) {
	q, m = &Sample{}, &Sample{}
	for _, s := range []struct {
		argv []string
		smp  *Sample
	}{{qchain, q}, {qemu, m}} {
		if s.smp.Warm, err = runOnce(timeout, s.argv); err != nil {
			return nil, nil, err
		}
		s.smp.MaxRSS = s.smp.Warm.MaxRSSKiB
	}
	for i := 0; i < n; i++ {
		for _, s := range []struct {
			argv []string
			smp  *Sample
		}{{qchain, q}, {qemu, m}} {
			r, err := runOnce(timeout, s.argv)
			if err != nil {
				return nil, nil, err
			}
			if r.Exit != s.smp.Warm.Exit {
				return nil, nil, fmt.Errorf("%s: exit status %d, warm-up run gave %d: %s",
					shellQuote(s.argv), r.Exit, s.smp.Warm.Exit, strings.TrimSpace(string(r.Stderr)))
			}
			s.smp.Walls = append(s.smp.Walls, r.Wall)
			s.smp.MaxRSS = max(s.smp.MaxRSS, r.MaxRSSKiB)
		}
	}
	return q, m, nil
}

// shellQuote prints argv as a command a shell would run unchanged.
func shellQuote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=,:+@%", r))
		}) < 0 {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
