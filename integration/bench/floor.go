package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// printStartFloor times, through the same launcher as the tools, two
// programs that do nothing: `true` (what starting any process costs here)
// and an empty Go program built on the spot (what the Go runtime adds before
// qchain's first line runs). They bound the ratio any Go tool can reach on
// a command qemu-img finishes in a few tens of milliseconds. Last comes
// the direct checkpoint client's own start-up (printClientFloor), which
// its rows include.
func printStartFloor(n int) {
	fmt.Println("\n## Start-up floor (median of", n, "runs)")
	defer printClientFloor(n)
	if s, err := timeRuns(n, []string{"true"}); err == nil {
		fmt.Printf("- `true`: %s\n", fmtDur(s.Median()))
	}
	dir, err := os.MkdirTemp("", "qchain-bench-empty-")
	if err != nil {
		return
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "main.go")
	bin := filepath.Join(dir, "empty")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		return
	}
	build := exec.Command("go", "build", "-o", bin, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("- empty Go program: not built (%v: %s)\n", err, out)
		return
	}
	if s, err := timeRuns(n, []string{bin}); err == nil {
		fmt.Printf("- empty Go program (static, %s): %s\n", goVersion(), fmtDur(s.Median()))
	}
}

// timeRuns runs argv once untimed, then n timed runs.
func timeRuns(n int, argv []string) (*Sample, error) {
	if _, err := runOnce(time.Minute, argv); err != nil {
		return nil, err
	}
	s := &Sample{}
	for i := 0; i < n; i++ {
		r, err := runOnce(time.Minute, argv)
		if err != nil {
			return nil, err
		}
		s.Walls = append(s.Walls, r.Wall)
	}
	return s, nil
}

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "go"
	}
	return string(out[:len(out)-1])
}
