package integration

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// qemuStartTimeout bounds the wait for qemu-system-x86_64's QMP greeting.
const qemuStartTimeout = 30 * time.Second

// inUseRun is one command run on an image a qemu holds: qemu-img needs -U
// for all of them, qchain only for info. human runs are compared as text.
type inUseRun struct {
	name       string
	qemu, mine []string
	human      bool
}

// TestDifferentialInUse holds images open read-write in a running
// qemu-system-x86_64 (which takes QEMU's write locks) and checks that
// qchain info -U, map, check and export still work, agree with qemu-img -U,
// and change neither bytes nor mtimes. One image carries a persistent
// bitmap, which QEMU marks in-use in the file while it has the image open.
func TestDifferentialInUse(t *testing.T) {
	bin := requireTools(t)
	compat := compatFlags(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	root := t.TempDir()
	q := fixtures.NewQemu(t, root)
	q.Create("base.qcow2", "4M")
	q.IO("qcow2", "base.qcow2", "write -q -P 0x01 0 2M")
	plain := q.Overlay("top.qcow2", "base.qcow2", "qcow2", "")
	q.IO("qcow2", plain, "write -q -P 0x02 1M 2M", "write -q -z 3M 64k")
	withBitmap := q.Create("bitmap.qcow2", "4M")
	q.Img("bitmap", "--add", withBitmap, "bm0")
	q.IO("qcow2", withBitmap, "write -q -P 0x03 0 64k")

	startQemu(t, plain, withBitmap)
	ctx := context.Background()
	for _, img := range []string{plain, withBitmap} {
		res := fixtures.Run(ctx, root, "qemu-img", "info", img)
		if res.ExitCode == 0 || !strings.Contains(string(res.Stderr), "lock") {
			t.Fatalf("%s is not locked by the running qemu: exit %d, %s", img, res.ExitCode, res.Stderr)
		}
	}

	var runs []inUseRun
	for _, img := range []string{plain, withBitmap} {
		name := filepath.Base(img)
		runs = append(runs,
			inUseRun{name + "/info", []string{"info", "-U", "--output=json", img}, []string{"info", "-U", "--output=json", img}, false},
			inUseRun{name + "/info-backing-chain", []string{"info", "-U", "--backing-chain", "--output=json", img},
				[]string{"info", "-U", "--backing-chain", "--output=json", img}, false},
			inUseRun{name + "/map", []string{"map", "-U", "--output=json", img}, []string{"map", "--output=json", img}, false},
			inUseRun{name + "/check", []string{"check", "-U", "--output=json", img}, []string{"check", "--output=json", img}, false},
			inUseRun{name + "/info-human", []string{"info", "-U", img}, []string{"info", "-U", img}, true},
			inUseRun{name + "/info-backing-chain-human", []string{"info", "-U", "--backing-chain", img}, []string{"info", "-U", "--backing-chain", img}, true},
		)
	}

	before := mustFingerprint(t, root)
	refs := make([]fixtures.Result, len(runs))
	for i, r := range runs {
		refs[i] = fixtures.Run(ctx, root, "qemu-img", r.qemu...)
		if refs[i].Err != nil || refs[i].ExitCode != 0 {
			t.Fatalf("reference run failed: %s: exit %d, %v\n%s", refs[i].Cmd, refs[i].ExitCode, refs[i].Err, refs[i].Stderr)
		}
	}
	work := t.TempDir()
	refRaw := filepath.Join(work, "ref.raw")
	if res := fixtures.Run(ctx, root, "qemu-img", "convert", "-U", "-O", "raw", plain, refRaw); res.Err != nil || res.ExitCode != 0 {
		t.Fatalf("reference run failed: %s: exit %d, %v\n%s", res.Cmd, res.ExitCode, res.Err, res.Stderr)
	}
	if d := fingerprintDiff(before, mustFingerprint(t, root)); d != "" {
		t.Fatalf("files changed under qemu-img -U or the idle qemu, so nothing can be compared:\n%s", d)
	}

	for i, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			got := fixtures.Run(ctx, root, bin, withFlags(r.mine, compat)...)
			if r.human {
				compareTextRun(t, refs[i], got)
			} else {
				compareJSONRun(t, refs[i], got)
			}
		})
	}
	t.Run("export", func(t *testing.T) {
		out := filepath.Join(work, "out.raw")
		compareExport(t, bin, root, refRaw, out, "", "export", "-o", out, plain)
	})
	if d := fingerprintDiff(before, mustFingerprint(t, root)); d != "" {
		t.Errorf("qchain changed files that a running qemu holds:\n%s", d)
	}
}

// startQemu starts qemu-system-x86_64 with no guest and the images as
// read-write drives, waits until it answers on QMP (by then the drives are
// open and locked), and stops it when the test ends.
func startQemu(t *testing.T, images ...string) {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "qchain-qmp-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "qmp.sock")
	args := []string{"-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:" + sock + ",server=on,wait=off"}
	for i, img := range images {
		args = append(args, "-drive", "if=none,id=d"+string(rune('0'+i))+",format=qcow2,file="+img)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill() // the qemu this test started, by its own handle
		<-exited
		cancel()
	})

	deadline := time.Now().Add(qemuStartTimeout)
	for {
		select {
		case <-exited:
			t.Fatalf("qemu-system-x86_64 %s exited early: %s", strings.Join(args, " "), stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no QMP greeting from qemu-system-x86_64 within %v: %s", qemuStartTimeout, stderr.String())
		}
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err == nil && strings.Contains(line, `"QMP"`) {
			return
		}
		if err == nil && strings.Contains(line, `"event"`) {
			// An event before the greeting: qemu is still starting its
			// monitor (see qmp.ErrNotReady); connect again.
			time.Sleep(20 * time.Millisecond)
			continue
		}
		t.Fatalf("unexpected QMP greeting %q: %v", line, err)
	}
}
