package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// The Linux peak RSS of a child (ru_maxrss from wait4) is at least the
// peak RSS of the process that started it: Go starts children with
// clone(CLONE_VM|CLONE_VFORK), and execve keeps the high-water mark of the
// memory it replaces. The bench holds megabytes of tool output, so measured
// straight from it every tool would look at least that large. Each tool is
// therefore started by a copy of this program in launcher mode, which
// holds nothing: its own peak (printed as the floor) stays below any tool's,
// and ru_maxrss is a maximum, not a sum, so the tool's figure is exact.

const (
	// launcherEnv switches this program into launcher mode; its value is
	// the run's time limit in nanoseconds.
	launcherEnv = "QCHAIN_BENCH_LAUNCHER"
	// launcherFD is the file descriptor on which a launcher reports.
	launcherFD = 3
)

// launch runs os.Args[1:] with this process's stdin, stdout and stderr,
// then writes "exit maxrss_kib wall_ns start_unix_ns" to launcherFD.
func launch() int {
	report := os.NewFile(launcherFD, "report")
	// Not passed on: a process the tool leaves running (the qemu of
	// qchain vm start) would otherwise hold the report pipe open, and the
	// bench would wait for its end as long as that process lives.
	syscall.CloseOnExec(launcherFD)
	var limit time.Duration
	if _, err := fmt.Sscan(os.Getenv(launcherEnv), &limit); err != nil || limit <= 0 || len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "bench launcher: bad invocation")
		return 125
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = withoutLauncherEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		fmt.Fprintln(os.Stderr, "bench launcher:", err)
		return 126
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench launcher: time limit reached")
		return 124
	}
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss // KiB on Linux
	}
	fmt.Fprintf(report, "%d %d %d %d\n", cmd.ProcessState.ExitCode(), rss, int64(wall), start.UnixNano())
	return 0
}

func withoutLauncherEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if len(kv) > len(launcherEnv) && kv[:len(launcherEnv)+1] == launcherEnv+"=" {
			continue
		}
		out = append(out, kv)
	}
	return out
}
