package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mountTmpfs mounts a tmpfs of size (mount's syntax: 12M) on a new
// temporary folder, unmounted when the test ends; the test is skipped
// where mounting is not permitted.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "qchain-test", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s): the no-space test needs root", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// resizeTmpfs makes room on a tmpfs mountTmpfs mounted.
func resizeTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, dir).CombinedOutput(); err != nil {
		t.Fatalf("remount %s: %v: %s", dir, err, out)
	}
}

// TestBackupNoSpace backs up into a folder on a small tmpfs where the
// second point cannot fit, offline and live: backup create fails with one
// line that says so, the folder is as it was, the VM's images are clean
// and their bitmaps such that, once there is room, the next point is
// incremental with everything since the first, and every point restores
// to the content it was taken with.
func TestBackupNoSpace(t *testing.T) {
	for _, live := range []bool{false, true} {
		name := "offline"
		if live {
			name = "live"
		}
		t.Run(name, func(t *testing.T) {
			var e *bkEnv
			var q *bkQemu
			if live {
				e, q = newLiveBKEnv(t, 64)
			} else {
				e = newBKEnv(t)
			}
			mnt := mountTmpfs(t, "12M")
			e.dir = filepath.Join(mnt, "bk")
			p1, _ := e.backup()
			if p := e.point(p1); p.kind != "full" || p.live != live {
				t.Fatalf("first point: %+v", p)
			}
			// 8 MiB more of vda cannot fit in what is left.
			write := func(disk, cmd string) {
				if live {
					q.io(t, disk, cmd)
				} else {
					e.q.IO("qcow2", e.active(e.vm, disk), strings.Replace(cmd, "write ", "write -q ", 1))
				}
			}
			write("vda", "write -P 0x41 16M 8M")
			write("vdb", "write -P 0x42 8M 64k")
			before := mustFingerprint(t, e.dir)
			res := e.run("backup", "create", "--to", e.dir, e.vm)
			msg := string(res.Stderr)
			if res.ExitCode == 0 {
				t.Fatalf("backup create into a full folder succeeded: %s%s", res.Stdout, msg)
			}
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "qchain: ") || !strings.Contains(msg, "No space left on device") || !strings.Contains(msg, "make room") {
				t.Errorf("backup create into a full folder: want one line that says no space is left, got %q", msg)
			}
			t.Logf("no space: %s", strings.TrimSpace(msg))
			if d := fingerprintDiff(before, mustFingerprint(t, e.dir)); d != "" {
				t.Errorf("the backup folder changed:\n%s", d)
			}
			if ents, _ := os.ReadDir(e.dir); len(ents) != 4 { // backup.json, backup.lock, vda.1, vdb.1
				var names []string
				for _, d := range ents {
					names = append(names, d.Name())
				}
				t.Errorf("the backup folder holds %v", names)
			}
			// A file system with no room at all: not even the new
			// point's empty image can be made.
			filler := filepath.Join(mnt, "filler")
			if out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=64k").CombinedOutput(); err == nil {
				t.Fatalf("dd filled no tmpfs: %s", out)
			}
			res = e.run("backup", "create", "--to", e.dir, e.vm)
			msg = string(res.Stderr)
			if res.ExitCode == 0 || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "no space left on device") || !strings.Contains(msg, "the backup folder "+e.dir+" is full") {
				t.Errorf("backup create into a folder with no room at all: exit %d, %q", res.ExitCode, msg)
			}
			t.Logf("no room at all: %s", strings.TrimSpace(msg))
			if d := fingerprintDiff(before, mustFingerprint(t, e.dir)); d != "" {
				t.Errorf("the backup folder changed:\n%s", d)
			}
			os.Remove(filler)
			if !live {
				for _, disk := range []string{"vda", "vdb"} {
					e.q.Img("check", e.active(e.vm, disk))
				}
			}

			// Room made: the next point is incremental and holds both
			// disks' writes since point 1.
			resizeTmpfs(t, mnt, "64M")
			p2, msg2 := e.backup()
			if p := e.point(p2); p2 != p1+1 || p.kind != "incremental" || p.copied["vda"] != 8<<20 || p.copied["vdb"] != 64<<10 {
				t.Errorf("the point after the failed one: point %d %+v %q", p2, p, msg2)
			}
			write("vda", "write -P 0x43 40M 64k")
			p3, _ := e.backup()
			if p := e.point(p3); p.kind != "incremental" || p.copied["vda"] != 64<<10 || p.copied["vdb"] != 0 {
				t.Errorf("point 3: %+v", p)
			}
			if live {
				q.quit(t)
				for _, disk := range []string{"vda", "vdb"} {
					e.q.Img("check", e.active(e.vm, disk))
				}
			}
			e.restoreAll()
			e.ok("backup", "verify", e.dir)
		})
	}
}
