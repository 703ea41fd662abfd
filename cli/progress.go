package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/chain"
)

// Progress display layout and rate estimation.
const (
	barWidth = 30
	// rateWindow is how far back the rate looks: long enough to smooth
	// QEMU's chunked progress, short enough to follow a --bandwidth change.
	rateWindow = 5 * time.Second
	// minRedraw limits how often the terminal bar is drawn.
	minRedraw = 100 * time.Millisecond
	// plainStep is the share of the work, in percent, between two lines
	// of the plain display (stderr is a file or a pipe).
	plainStep = 10
)

// progressBar shows a data move's progress on stderr, the Progress of
// --verbose. On a terminal it redraws one "\r" line: a bar, the bytes done,
// the rate and the time left. Elsewhere (a log file, a pipe) it prints a
// plain line at every plainStep percent and at the end, and never "\r".
// It is not safe for concurrent use.
type progressBar struct {
	w        io.Writer
	label    string
	terminal bool
	samples  []progressSample
	last     time.Time
	cur      int64
	total    int64
	width    int    // of the last terminal line drawn, to blank what is left of it
	nextPct  int    // plain display: the next percentage that prints a line
	lastLine string // plain display: the last line printed
	now      func() time.Time
}

type progressSample struct {
	t   time.Time
	cur int64
}

// newProgressBar returns the display for w: a redrawn bar when w is a
// terminal, plain lines otherwise.
func newProgressBar(w io.Writer, label string) *progressBar {
	return &progressBar{w: w, label: label, terminal: isTerminal(w), now: time.Now}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminalFd(f.Fd())
}

// Update takes query-jobs' progress (bytes for block jobs).
func (p *progressBar) Update(cur, total int64) {
	now := p.now()
	p.cur, p.total = cur, total
	p.samples = append(p.samples, progressSample{now, cur})
	for len(p.samples) > 2 && now.Sub(p.samples[1].t) > rateWindow {
		p.samples = p.samples[1:]
	}
	if !p.terminal {
		if pct := p.percent(); pct >= p.nextPct && total > 0 {
			p.plain(p.line(now, false))
			p.nextPct = (pct/plainStep + 1) * plainStep
		}
		return
	}
	if now.Sub(p.last) < minRedraw {
		return
	}
	p.last = now
	p.draw(p.line(now, true))
}

// Finish shows the last state and ends the display.
func (p *progressBar) Finish(ok bool) {
	if p.total == 0 && len(p.samples) == 0 {
		return
	}
	if ok && p.total > 0 {
		p.cur = p.total
	}
	if !p.terminal {
		p.plain(p.line(p.now(), false))
		return
	}
	p.draw(p.line(p.now(), true))
	fmt.Fprintln(p.w)
}

// plain prints one line, unless it says what the last one said.
func (p *progressBar) plain(line string) {
	if line == p.lastLine {
		return
	}
	p.lastLine = line
	fmt.Fprintln(p.w, line)
}

func (p *progressBar) draw(line string) {
	pad := ""
	if n := p.width - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
}

// percent is the share done, 0 to 100.
func (p *progressBar) percent() int {
	if p.total <= 0 {
		return 0
	}
	return int(min(max(float64(p.cur)/float64(p.total), 0), 1) * 100)
}

// rate is the bytes per second over the samples of the last rateWindow.
func (p *progressBar) rate() float64 {
	if len(p.samples) < 2 {
		return 0
	}
	first, last := p.samples[0], p.samples[len(p.samples)-1]
	dt := last.t.Sub(first.t).Seconds()
	if dt <= 0 || last.cur < first.cur {
		return 0
	}
	return float64(last.cur-first.cur) / dt
}

// line describes the progress: the label, with bar the bar, the share,
// the bytes, and the rate and time left once known.
func (p *progressBar) line(now time.Time, bar bool) string {
	pct := p.percent()
	s := p.label
	if bar {
		filled := pct * barWidth / 100
		b := strings.Repeat("=", filled)
		if filled < barWidth {
			b += ">" + strings.Repeat(" ", barWidth-filled-1)
		}
		s += " [" + b + "]"
	} else {
		s += ":"
	}
	s += fmt.Sprintf(" %3d%% %s / %s", pct, humanize.IBytes(uint64(max(p.cur, 0))), humanize.IBytes(uint64(max(p.total, 0))))
	if r := p.rate(); r > 0 {
		s += fmt.Sprintf("  %s/s", humanize.IBytes(uint64(r)))
		if left := p.total - p.cur; left > 0 {
			eta := time.Duration(float64(left) / r * float64(time.Second))
			s += "  ETA " + eta.Round(time.Second).String()
		}
	}
	return s
}

// stepProgress is the Manager's Progress of --verbose: one display per
// data-moving step of a snapshot operation, labelled with the step.
func stepProgress(w io.Writer) func(chain.Step, int64, int64) {
	var bar *progressBar
	var step string
	return func(s chain.Step, cur, total int64) {
		if key := s.String(); key != step {
			if bar != nil {
				bar.Finish(false)
			}
			label := s.Kind + " " + filepath.Base(s.File)
			if s.Kind == chain.StepCommit {
				label = s.Kind + " " + filepath.Base(s.Top) + " into " + filepath.Base(s.Base)
			}
			bar, step = newProgressBar(w, label), key
		}
		if bar == nil {
			return // this step's display has ended
		}
		bar.Update(cur, total)
		if total > 0 && cur >= total {
			bar.Finish(true)
			bar = nil
		}
	}
}
