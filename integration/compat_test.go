package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// The release of the qemu-img on PATH, read once per test binary.
var (
	qemuVersionOnce sync.Once
	qemuVersion     fixtures.QemuVersion
	qemuVersionErr  error
)

// compatFlags returns the qchain flags that select the output layout of
// the qemu-img on PATH: none for 10.x (qchain's default), --compat=7.2 for
// 7.x. It skips the test for a release whose layout qchain does not
// reproduce (8.x and 9.x lie between the two).
func compatFlags(t *testing.T) []string {
	t.Helper()
	qemuVersionOnce.Do(func() { qemuVersion, qemuVersionErr = fixtures.QemuImgVersion(context.Background()) })
	if qemuVersionErr != nil {
		t.Fatalf("qemu-img version: %v", qemuVersionErr)
	}
	switch {
	case qemuVersion.Major >= 10:
		return nil
	case qemuVersion.Major == 7:
		return []string{"--compat=7.2"}
	}
	t.Skipf("qchain reproduces qemu-img 7.2's and 10.0's layouts; qemu-img %s is on PATH", qemuVersion)
	return nil
}

// withFlags returns args (a command name and what follows it) with flags
// put right after the command name: urfave/cli reads flags only before the
// first positional argument.
func withFlags(args, flags []string) []string {
	if len(flags) == 0 || len(args) == 0 {
		return args
	}
	out := append([]string{args[0]}, flags...)
	return append(out, args[1:]...)
}

// qchainOwnLines are the lines of qchain's human info that no qemu-img
// prints (README, info --help): what they say about a backing file whose
// format nothing recorded. compareTextRun drops them from qchain's output.
var qchainOwnLines = []string{
	"backing file format: none recorded (will be probed)",
	"format probed: yes (",
}

func dropOwnLines(b []byte) string {
	var out []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		own := false
		for _, p := range qchainOwnLines {
			own = own || strings.HasPrefix(l, p)
		}
		if !own {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

// compareTextRun demands the same exit code and the same standard output,
// as text, from qchain (got) as from qemu-img (ref), but for qchain's own
// lines.
func compareTextRun(t *testing.T, ref, got fixtures.Result) {
	t.Helper()
	if got.Err != nil {
		t.Fatalf("%v\nstderr: %s", got.Err, got.Stderr)
	}
	if got.ExitCode != ref.ExitCode {
		t.Errorf("exit code: qemu-img %d, qchain %d\nqchain stderr: %s", ref.ExitCode, got.ExitCode, got.Stderr)
	}
	if have := dropOwnLines(got.Stdout); have != string(ref.Stdout) {
		t.Errorf("%s: output differs from qemu-img's:\n--- %s\n%s--- qchain\n%s", got.Cmd, ref.Cmd, ref.Stdout, have)
	}
}

// runEnv runs qchain with args in dir, with env added to the environment.
func runEnv(t *testing.T, bin, dir string, env []string, args ...string) fixtures.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fixtures.QemuTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := fixtures.Result{Cmd: strings.Join(append(env, append([]string{bin}, args...)...), " "), Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	if _, ok := err.(*exec.ExitError); err != nil && !ok || ctx.Err() != nil {
		t.Fatalf("%s: %v %v", res.Cmd, err, ctx.Err())
	}
	res.ExitCode = cmd.ProcessState.ExitCode()
	return res
}

// TestDifferentialCompatSelection: QCHAIN_COMPAT=7.2 prints what
// --compat=7.2 prints, --compat wins over the variable, the two layouts
// differ where qemu-img's do, and a bad value of either is a one-line
// error naming the accepted values, with exit status 1 and no output.
func TestDifferentialCompatSelection(t *testing.T) {
	bin := requireTools(t)
	var build func(testing.TB, string) string
	for _, c := range fixtures.QemuCases() {
		if c.Name == "compressed-write-zlib" { // a backing chain and compressed clusters
			build = c.Build
		}
	}
	if build == nil {
		t.Fatal("no case compressed-write-zlib")
	}
	dir := t.TempDir()
	top := build(t, dir)
	rel := filepath.Base(top)
	env72 := []string{"QCHAIN_COMPAT=7.2"}
	for _, args := range [][]string{
		{"info", "--output=json", rel},
		{"info", "--backing-chain", "--output=json", rel},
		{"info", "--backing-chain", rel},
		{"map", "--output=json", rel},
		{"check", "--output=json", rel},
	} {
		t.Run(strings.Join(args[:len(args)-1], " "), func(t *testing.T) {
			def := runEnv(t, bin, dir, nil, args...)
			flag72 := runEnv(t, bin, dir, nil, withFlags(args, []string{"--compat=7.2"})...)
			flag10 := runEnv(t, bin, dir, nil, withFlags(args, []string{"--compat=10.0"})...)
			flag10short := runEnv(t, bin, dir, nil, withFlags(args, []string{"--compat=10"})...)
			fromEnv := runEnv(t, bin, dir, env72, args...)
			flagWins := runEnv(t, bin, dir, env72, withFlags(args, []string{"--compat=10.0"})...)
			for _, r := range []fixtures.Result{def, flag72, flag10, flag10short, fromEnv, flagWins} {
				if r.ExitCode != 0 || len(r.Stdout) == 0 {
					t.Fatalf("%s: exit %d, %d bytes out\n%s", r.Cmd, r.ExitCode, len(r.Stdout), r.Stderr)
				}
			}
			same := func(a, b fixtures.Result) {
				if !bytes.Equal(a.Stdout, b.Stdout) {
					t.Errorf("%s and %s differ:\n%s\n---\n%s", a.Cmd, b.Cmd, a.Stdout, b.Stdout)
				}
			}
			same(fromEnv, flag72)
			same(flagWins, def)
			same(flag10, def)
			same(flag10short, def)
			differ := args[0] != "check" // qemu-img check prints the same in both
			if differ == bytes.Equal(def.Stdout, flag72.Stdout) {
				t.Errorf("%s and %s: want outputs that differ: %t", def.Cmd, flag72.Cmd, differ)
			}
		})
	}
	for _, bad := range []struct {
		env, flags []string
		name       string
	}{
		{nil, []string{"--compat=9"}, "--compat"},
		{nil, []string{"--compat="}, "--compat"},
		{[]string{"QCHAIN_COMPAT=10.0.2"}, nil, "QCHAIN_COMPAT"},
		{[]string{"QCHAIN_COMPAT=7.2"}, []string{"--compat=7"}, "--compat"},
	} {
		for _, cmd := range []string{"info", "map", "check"} {
			r := runEnv(t, bin, dir, bad.env, withFlags([]string{cmd, rel}, bad.flags)...)
			msg := strings.TrimSuffix(string(r.Stderr), "\n")
			if r.ExitCode != 1 || len(r.Stdout) != 0 || msg == "" || strings.Contains(msg, "\n") ||
				!strings.Contains(msg, bad.name) || !strings.Contains(msg, "7.2") || !strings.Contains(msg, "10.0") {
				t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 1, nothing on stdout, one line naming %s and the accepted values",
					r.Cmd, r.ExitCode, r.Stdout, r.Stderr, bad.name)
			}
		}
	}
}
