package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qchain/qchain/qmp"
)

// nbdWriter writes 4 KiB blocks through an NBD export, one qemu-io (one
// client connection) per write, cycling over its range of blocks with a
// new pattern each time, until stopped.
type nbdWriter struct {
	uri   string
	start time.Time

	mu     sync.Mutex
	writes []nbdWrite
	stop   chan struct{}
	done   chan struct{}
}

type nbdWrite struct {
	off        int64
	pattern    byte
	begin, end time.Duration
	acked      bool
}

func startNBDWriter(sock, export string, start time.Time, first, slots int64) *nbdWriter {
	w := &nbdWriter{uri: fmt.Sprintf("nbd+unix:///%s?socket=%s", export, sock), start: start,
		stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := int64(0); ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			off := (first + i%slots) * 4096
			p := byte(i%250) + 1
			b := time.Since(start)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			cmd := exec.CommandContext(ctx, "qemu-io", "-f", "raw", w.uri, "-c", fmt.Sprintf("write -P 0x%02x %d 4k", p, off))
			out, err := cmd.CombinedOutput()
			cancel()
			ok := err == nil && !strings.Contains(string(out), "rror")
			w.mu.Lock()
			w.writes = append(w.writes, nbdWrite{off: off, pattern: p, begin: b, end: time.Since(start), acked: ok})
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *nbdWriter) finish() []nbdWrite {
	close(w.stop)
	<-w.done
	return w.writes
}

// rawView converts img's guest view to a raw file and returns its bytes.
func rawView(t *testing.T, dir, img string) []byte {
	t.Helper()
	out := filepath.Join(dir, fmt.Sprintf("view%d.raw", time.Now().UnixNano()))
	if b, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", img, out).CombinedOutput(); err != nil {
		t.Fatalf("convert %s: %v %s", img, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hasPattern(b []byte, off int64, p byte) bool {
	for _, x := range b[off : off+4096] {
		if x != p {
			return false
		}
	}
	return true
}

// TestExportRepro measures whether writes acknowledged through a writable
// NBD export survive an active commit or a copy with a pivot (the reason
// qchain refuses such pivots; run it again on a new QEMU to see whether
// the refusal can be lifted). Four writers write 4 KiB blocks, each
// through a new client connection (one qemu-io each), over their own
// quarter of the disk, while the job runs at 8 MiB/s and for a second
// after it; then the last acknowledged write of every block must be in
// the disk's new top. Lost blocks are looked for in the old top's own
// clusters. It is an investigation, run only with QCHAIN_EXPORT_REPRO
// set to a mode: "qchain" runs blockcommit --active --pivot and blockcopy
// --pivot with --force; "af-on" and "af-off" start the job through QMP
// with auto-finalize on or off; "pending" holds an active commit in
// pending for 3 s, with one more client connected before job-complete
// that writes while the job is pending. QCHAIN_EXPORT_DRIVE_ONLY=1 skips
// the disk behind a device. Results are logged (go test -v), lines
// "RESULT ..."; the test fails only when the job does not complete
// (QEMU 10.0 was seen to crash).
func TestExportRepro(t *testing.T) {
	mode := os.Getenv("QCHAIN_EXPORT_REPRO")
	if mode == "" {
		t.Skip("investigation: set QCHAIN_EXPORT_REPRO=qchain|af-on|af-off|pending")
	}
	bin := requireTools(t)
	for _, op := range []string{"commit", "copy"} {
		if mode == "pending" && op == "copy" {
			continue
		}
		kinds := []vmKind{vmDrive, vmDeviceShared}
		if os.Getenv("QCHAIN_EXPORT_DRIVE_ONLY") != "" {
			kinds = kinds[:1]
		}
		for _, kind := range kinds {
			name := fmt.Sprintf("%s-%s-%s", op, mode, map[vmKind]string{vmDrive: "drive", vmDeviceShared: "device"}[kind])
			t.Run(name, func(t *testing.T) { exportRepro(t, bin, mode, op, kind) })
		}
	}
}

func exportRepro(t *testing.T, bin, mode, op string, kind vmKind) {
	c := newBlockChain(t)
	vm := startVM(t, c, kind, "")
	ctx := context.Background()
	nbdSock := filepath.Join(filepath.Dir(vm.sock), "nbd")
	if err := vm.mon.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": nbdSock}}}, nil); err != nil {
		t.Fatal(err)
	}
	disks, err := qmp.DiskChains(ctx, vm.mon)
	if err != nil {
		t.Fatal(err)
	}
	var top, diskName string
	for _, d := range disks {
		if d.Device == "vda" || d.QDev != "" {
			top, diskName = d.NodeName, d.Name()
		}
	}
	if err := vm.mon.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": top, "name": "exp0", "writable": true}, nil); err != nil {
		t.Fatal(err)
	}
	evs, err := vm.mon.Subscribe(ctx, "JOB_STATUS_CHANGE")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var evLog []string
	var evMu sync.Mutex
	go func() {
		for ev := range evs.C() {
			evMu.Lock()
			evLog = append(evLog, fmt.Sprintf("%v %s", time.Since(start).Round(time.Millisecond), ev.Data))
			evMu.Unlock()
		}
	}()

	var ws []*nbdWriter
	for i := int64(0); i < 4; i++ {
		ws = append(ws, startNBDWriter(nbdSock, "exp0", start, i*1024, 1024))
	}
	time.Sleep(500 * time.Millisecond)
	dest := c.path("copy.qcow2")
	newTop := c.base
	if op == "copy" {
		newTop = dest
	}
	jobStart := time.Since(start)
	switch mode {
	case "qchain":
		args := []string{"blockcommit", "--qmp", vm.sock, "--wait", "--bandwidth", "8", "--active", "--pivot", "--force", vm.disk}
		if op == "copy" {
			args = []string{"blockcopy", "--qmp", vm.sock, "--wait", "--bandwidth", "8", "--pivot", "--force", vm.disk, dest}
		}
		r := qchainRun(bin, c.dir, args...)
		if r.ExitCode != 0 {
			t.Fatalf("qchain %v: exit %d %v\n%s%s\nqemu: %s", args, r.ExitCode, r.Err, r.Stdout, r.Stderr, vm.stderr)
		}
	case "af-on", "af-off", "pending":
		af := qmp.Bool(mode == "af-on")
		var s qmp.JobStarter = qmp.BlockCommit{JobID: "j", Device: diskName, Speed: 8 << 20, AutoFinalize: af}
		if op == "copy" {
			s = qmp.DriveMirror{JobID: "j", Device: diskName, Target: dest, Format: "qcow2", Sync: qmp.SyncFull, Mode: qmp.ModeAbsolutePaths, Speed: 8 << 20, AutoFinalize: af}
		}
		job, err := qmp.StartJob(ctx, vm.mon, s)
		if err != nil {
			t.Fatal(err)
		}
		if mode == "pending" {
			vm.waitJob(t, "ready", nil)
			// A client connected before job-complete, writing while
			// the job is pending: is it quiesced like the device?
			persistent := exec.Command("qemu-io", "-f", "raw", fmt.Sprintf("nbd+unix:///exp0?socket=%s", nbdSock),
				"-c", "sleep 1500", "-c", "write -P 0xee 14M 4k")
			if err := persistent.Start(); err != nil {
				t.Fatal(err)
			}
			pstart := time.Since(start)
			go func() {
				err := persistent.Wait()
				t.Logf("persistent client: connected %v, exited %v: %v", pstart.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), err)
			}()
			time.Sleep(200 * time.Millisecond)
			if err := vm.mon.JobComplete(ctx, "j"); err != nil {
				t.Fatal(err)
			}
			vm.waitJob(t, "pending", nil)
			t.Logf("pending at %v", time.Since(start).Round(time.Millisecond))
			time.Sleep(3 * time.Second) // writes go on while pending
		}
		_, err = job.Wait(ctx, qmp.WaitOptions{})
		if err != nil {
			select {
			case <-vm.exited:
				t.Fatalf("%v; qemu exited: %v\n%s", err, vm.cmd.ProcessState, vm.stderr)
			case <-time.After(2 * time.Second):
				t.Fatalf("%v; qemu runs", err)
			}
		}
	}
	jobEnd := time.Since(start)
	var exps []map[string]any
	_ = vm.mon.Execute(ctx, "query-block-exports", nil, &exps)
	after, _ := qmp.DiskChains(ctx, vm.mon)
	time.Sleep(1 * time.Second)
	var writes []nbdWrite
	for _, w := range ws {
		writes = append(writes, w.finish()...)
	}
	t.Logf("exports after the job: %v\ndisks after: %+v", exps, after)
	vm.quit()

	newView := rawView(t, c.dir, newTop)
	// The old top alone: what it allocated itself, not its backing.
	oldView := rawView(t, c.dir, fmt.Sprintf(`json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":%q}}`, c.active))
	evMu.Lock()
	t.Logf("job %v..%v; events:\n%s", jobStart.Round(time.Millisecond), jobEnd.Round(time.Millisecond), strings.Join(evLog, "\n"))
	evMu.Unlock()
	// Only the last write to each offset decides what it must hold.
	last := make(map[int64]nbdWrite)
	for _, x := range writes {
		if p, ok := last[x.off]; !ok || x.begin > p.begin {
			last[x.off] = x
		}
	}
	var acked, lost, lostInOld, failed int
	var lostLines []string
	for _, x := range last {
		if !x.acked {
			failed++
			continue
		}
		acked++
		if hasPattern(newView, x.off, x.pattern) {
			continue
		}
		lost++
		inOld := hasPattern(oldView, x.off, x.pattern)
		if inOld {
			lostInOld++
		}
		lostLines = append(lostLines, fmt.Sprintf("off %d: %v..%v in old top: %t", x.off, x.begin.Round(time.Millisecond), x.end.Round(time.Millisecond), inOld))
	}
	t.Logf("persistent client's write in new top: %t, in old top: %t", hasPattern(newView, 14<<20, 0xee), hasPattern(oldView, 14<<20, 0xee))
	t.Logf("RESULT %s: %d writes, last per offset: %d acked, %d failed, %d lost (%d of them in the old top)\n%s", t.Name(), len(writes), acked, failed, lost, lostInOld, strings.Join(lostLines, "\n"))
}
