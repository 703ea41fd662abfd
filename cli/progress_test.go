package cli

import (
	"strings"
	"testing"
	"time"
)

func TestProgressBar(t *testing.T) {
	var out strings.Builder
	now := time.Unix(1000, 0)
	p := newProgressBar(&out, "pull")
	p.now = func() time.Time { return now }
	p.Update(0, 8<<20)
	now = now.Add(2 * time.Second)
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
