package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Progress bar layout and rate estimation.
const (
	barWidth = 30
	// rateWindow is how far back the rate looks: long enough to smooth
	// QEMU's chunked progress, short enough to follow a --bandwidth change.
	rateWindow = 5 * time.Second
	// minRedraw limits how often the bar is drawn.
	minRedraw = 100 * time.Millisecond
)

// progressBar draws one "\r" line on stderr: a bar, the bytes done, the
// rate and the time left. It is the blockjob.Progress of --verbose.
type progressBar struct {
	w       io.Writer
	label   string
	samples []progressSample
	last    time.Time
	cur     int64
	total   int64
	width   int // of the last line drawn, to blank what is left of it
	now     func() time.Time
}

type progressSample struct {
	t   time.Time
	cur int64
}

func newProgressBar(w io.Writer, label string) *progressBar {
	return &progressBar{w: w, label: label, now: time.Now}
}

// Update takes query-jobs' progress (bytes for block jobs).
func (p *progressBar) Update(cur, total int64) {
	now := p.now()
	p.cur, p.total = cur, total
	p.samples = append(p.samples, progressSample{now, cur})
	for len(p.samples) > 2 && now.Sub(p.samples[1].t) > rateWindow {
		p.samples = p.samples[1:]
	}
	if now.Sub(p.last) < minRedraw {
		return
	}
	p.last = now
	p.draw(p.line(now))
}

// Finish draws the last state and ends the line.
func (p *progressBar) Finish(ok bool) {
	if p.total == 0 && len(p.samples) == 0 {
		return
	}
	if ok && p.total > 0 {
		p.cur = p.total
	}
	p.draw(p.line(p.now()))
	fmt.Fprintln(p.w)
}

func (p *progressBar) draw(line string) {
	pad := ""
	if n := p.width - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
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

func (p *progressBar) line(now time.Time) string {
	pct := 0.0
	if p.total > 0 {
		pct = float64(p.cur) / float64(p.total)
	}
	pct = min(max(pct, 0), 1)
	filled := int(pct * barWidth)
	bar := strings.Repeat("=", filled)
	if filled < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-filled-1)
	}
	s := fmt.Sprintf("%s [%s] %3d%% %s / %s", p.label, bar, int(pct*100),
		humanize.IBytes(uint64(max(p.cur, 0))), humanize.IBytes(uint64(max(p.total, 0))))
	if r := p.rate(); r > 0 {
		s += fmt.Sprintf("  %s/s", humanize.IBytes(uint64(r)))
		if left := p.total - p.cur; left > 0 {
			eta := time.Duration(float64(left) / r * float64(time.Second))
			s += "  ETA " + eta.Round(time.Second).String()
		}
	}
	return s
}
