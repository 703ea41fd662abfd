package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
	"github.com/qchain/qchain/fixtures/guest"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// The guest tests' fixtures: a real Linux guest (fixtures/guest) writing
// numbered records on vda the whole time, the slow relay in front of its
// QMP socket for qchain, a monitor of the test's own, and qchain runs that
// note how many records the guest acknowledged while each one ran.

// Bounds of the guest tests, generous: TCG on a loaded 2-core host runs
// several times slower than on a quiet one.
const (
	// guestTestTimeout bounds one guest test function, boot included.
	guestTestTimeout = 6 * time.Minute
	// guestOpTimeout bounds one qchain run against the guest.
	guestOpTimeout = 3 * time.Minute
	// guestRecordDelay is the guest's pause after each record: it leaves
	// CPU to QEMU's jobs and qchain and still writes tens of records in
	// the second or more that any qchain run through the relay takes.
	guestRecordDelay = 10 * time.Millisecond
)

// The relay's delay of each QMP message, as fixtures.QMPRelay's doc
// suggests for a loaded host.
const relayMin, relayMax = 100 * time.Millisecond, 200 * time.Millisecond

// liveGuest is a running guest for the live tests.
type liveGuest struct {
	bin   string
	g     *guest.Guest
	run   string // the records workload's run id
	relay *fixtures.QMPRelay
	mon   *qmp.Conn // the test's own monitor, straight to QEMU
	socks string    // a short folder for sockets
	ops   []guestOp
}

// guestOp is one qchain run and the records acknowledged while it ran.
type guestOp struct {
	name     string
	from, to uint64 // Acked() before and after
	took     time.Duration
}

// startLiveGuest boots the guest with opts (the records workload as run
// on vda, unless opts says otherwise), a third QMP monitor for the test
// and the slow relay in front of Guest.QMPPath, and waits until it
// writes. Everything is stopped at the test's end.
func startLiveGuest(t *testing.T, ctx context.Context, bin, run string, opts guest.Options) *liveGuest {
	t.Helper()
	opts.Fixture = guest.ForTest(t)
	if opts.Workload.Run == "" {
		opts.Workload = guest.Workload{Run: run, Start: 1, Delay: guestRecordDelay}
	}
	socks, err := os.MkdirTemp("", "qcgt-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(socks) })
	monPath := filepath.Join(socks, "mon")
	opts.ExtraArgs = append(opts.ExtraArgs, "-qmp", "unix:"+monPath+",server=on,wait=off")
	g, err := guest.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Kill)
	lg := &liveGuest{bin: bin, g: g, run: opts.Workload.Run, socks: socks}
	if err := g.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest ready %.1fs after start (%s, %s disks)", g.BootTime().Seconds(), g.Accel, opts.DriveStyle)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	lg.mon, err = qmp.Dial(dctx, monPath, qmp.Options{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.mon.Close() })
	lg.relay = lg.startRelay(t, "relay", g.QMPPath)
	return lg
}

// startRelay puts the slow relay at a socket named name in front of
// target; it is closed at the test's end.
func (lg *liveGuest) startRelay(t *testing.T, name, target string) *fixtures.QMPRelay {
	t.Helper()
	r, err := fixtures.StartQMPRelay(filepath.Join(lg.socks, name), target, relayMin, relayMax)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// waitMore waits until the guest has acknowledged n more records.
func (lg *liveGuest) waitMore(t *testing.T, ctx context.Context, n uint64) {
	t.Helper()
	if err := lg.g.WaitAcked(ctx, lg.g.Acked()+n); err != nil {
		t.Fatal(err)
	}
}

// qchain runs the binary in dir with env added to the environment, within
// guestOpTimeout.
func (lg *liveGuest) qchain(ctx context.Context, dir string, env []string, args ...string) fixtures.Result {
	ctx, cancel := context.WithTimeout(ctx, guestOpTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, lg.bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := fixtures.Result{Cmd: "qchain " + strings.Join(args, " "), Stdout: []byte(stdout.String()), Stderr: []byte(stderr.String())}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.ExitCode, r.Err = -1, ctx.Err()
	case errors.As(err, &ee) && ee.Exited():
		r.ExitCode = ee.ExitCode()
	case err != nil:
		r.ExitCode, r.Err = -1, err
	}
	return r
}

// op runs qchain while the guest writes, fails the test unless it exits
// 0, and wants the guest to have acknowledged records while it ran: a
// guest whose writes stall during an operation is a bug too.
func (lg *liveGuest) op(t *testing.T, ctx context.Context, name, dir string, env []string, args ...string) fixtures.Result {
	t.Helper()
	from, start := lg.g.Acked(), time.Now()
	r := lg.qchain(ctx, dir, env, args...)
	to, took := lg.g.Acked(), time.Since(start)
	if r.ExitCode != 0 || r.Err != nil {
		t.Fatalf("%s: %s: exit %d %v\nstdout: %s\nstderr: %s", name, r.Cmd, r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	lg.noteOp(t, name, from, to, took)
	return r
}

// noteOp records an operation and wants records acknowledged during it.
func (lg *liveGuest) noteOp(t *testing.T, name string, from, to uint64, took time.Duration) {
	t.Helper()
	lg.ops = append(lg.ops, guestOp{name, from, to, took})
	t.Logf("%-22s %4d records acknowledged during it (%d..%d), %.1fs", name+":", to-from, from, to, took.Seconds())
	if to <= from {
		t.Errorf("%s: the guest acknowledged no record during it (%d before and after, %.1fs): its writes stalled", name, from, took.Seconds())
	}
}

// disk finds the guest's disk i among QEMU's disks, as the test's
// monitor shows them: by -drive id, or by device id behind -blockdev.
func (lg *liveGuest) disk(t *testing.T, ctx context.Context, i int) qmp.Disk {
	t.Helper()
	disks, err := qmp.DiskChains(ctx, lg.mon)
	if err != nil {
		t.Fatal(err)
	}
	name := lg.g.DiskName(i)
	for _, d := range disks {
		if d.Device == name || (d.QDev != "" && qmp.QDevID(d.QDev) == name) {
			return d
		}
	}
	t.Fatalf("QEMU has no disk %s: %+v", name, disks)
	return qmp.Disk{}
}

// chain returns disk i's chain in QEMU, base names top first.
func (lg *liveGuest) chain(t *testing.T, ctx context.Context, i int) []string {
	t.Helper()
	var out []string
	for _, l := range lg.disk(t, ctx, i).Chain {
		out = append(out, filepath.Base(qmp.PlainFilename(l.Filename)))
	}
	return out
}

// wantChain checks disk i's chain in QEMU, base names top first.
func (lg *liveGuest) wantChain(t *testing.T, ctx context.Context, i int, want ...string) {
	t.Helper()
	if got := lg.chain(t, ctx, i); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s runs on %v, want %v", lg.g.DiskName(i), got, want)
	}
}

// wantNoJobs checks that QEMU has no job left.
func (lg *liveGuest) wantNoJobs(t *testing.T, ctx context.Context) {
	t.Helper()
	jobs, err := lg.mon.QueryJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 0 {
		t.Errorf("jobs left in QEMU: %+v", jobs)
	}
}

// stop quits QEMU cleanly and returns the last record acknowledged.
func (lg *liveGuest) stop(t *testing.T, ctx context.Context) uint64 {
	t.Helper()
	if err := lg.g.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return lg.g.Acked()
}

// summary logs the records acknowledged during each operation.
func (lg *liveGuest) summary(t *testing.T) {
	t.Helper()
	var b strings.Builder
	for _, o := range lg.ops {
		fmt.Fprintf(&b, "\n  %-22s %5d records in %4.1fs", o.name, o.to-o.from, o.took.Seconds())
	}
	t.Logf("records acknowledged during each operation (run %s, %d in all):%s", lg.run, lg.g.Acked(), b.String())
}

// wantRecords checks that image's guest view holds every record of the
// run up to acked, intact, and returns the last intact one.
func wantRecords(t *testing.T, image, run string, acked uint64) uint64 {
	t.Helper()
	last, err := guest.CheckRecords(image, run, acked)
	if err != nil {
		t.Errorf("%s: %v", filepath.Base(image), err)
	}
	return last
}

// guestViewSum returns the SHA-256 of an image's guest view, as qchain
// export writes it.
func guestViewSum(t *testing.T, ctx context.Context, bin, image string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, guestOpTimeout)
	defer cancel()
	h := sha256.New()
	cmd := exec.CommandContext(ctx, bin, "export", image)
	cmd.Stdout = h
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("qchain export %s: %v: %s", image, err, stderr.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// relayLog keeps the messages a relay passed, for checks of their order.
type relayLog struct {
	mu   sync.Mutex
	msgs []fixtures.RelayMessage
}

func watchRelay(r *fixtures.QMPRelay) *relayLog {
	l := &relayLog{}
	r.Watch(func(m fixtures.RelayMessage) {
		l.mu.Lock()
		l.msgs = append(l.msgs, m)
		l.mu.Unlock()
	})
	return l
}

// reset forgets the messages so far.
func (l *relayLog) reset() {
	l.mu.Lock()
	l.msgs = nil
	l.mu.Unlock()
}

// first returns the time the first message containing s was read in the
// direction given, and whether there was one.
func (l *relayLog) first(toServer bool, s string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if m.ToServer == toServer && strings.Contains(string(m.Line), s) {
			return m.Read, true
		}
	}
	return time.Time{}, false
}

// reply returns the first command containing s sent through the relay
// and its reply: on QMP the message from the server that carries the
// command's id, from a guest agent (no ids, no events) the next one.
func (l *relayLog) reply(s string) (cmd, reply fixtures.RelayMessage, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := slices.IndexFunc(l.msgs, func(m fixtures.RelayMessage) bool { return m.ToServer && bytes.Contains(m.Line, []byte(s)) })
	if i < 0 {
		return cmd, reply, false
	}
	cmd = l.msgs[i]
	var id struct {
		ID json.RawMessage `json:"id"`
	}
	json.Unmarshal(cmd.Line, &id)
	for _, m := range l.msgs[i+1:] {
		if m.ToServer {
			continue
		}
		var rid struct {
			ID json.RawMessage `json:"id"`
		}
		json.Unmarshal(bytes.TrimLeft(m.Line, "\xff"), &rid)
		if string(rid.ID) == string(id.ID) {
			return cmd, m, true
		}
	}
	return cmd, reply, false
}

// command is reply for a command that must have been sent and answered.
func (l *relayLog) command(t *testing.T, s string) (cmd, reply fixtures.RelayMessage) {
	t.Helper()
	cmd, reply, ok := l.reply(s)
	if !ok {
		t.Fatalf("no command %s and its answer went through the relay", s)
	}
	return cmd, reply
}

// sentAfter says whether a command went through the relay after at.
func (l *relayLog) sentAfter(at time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.msgs, func(m fixtures.RelayMessage) bool { return m.ToServer && m.Read.After(at) })
}

// ext4NeedsRecovery reads the ext4 superblock in an image's guest view
// and says whether its journal needs recovery: set while the file system
// is mounted, cleared while it is frozen (the journal flushed) or
// unmounted.
func ext4NeedsRecovery(image string) (bool, error) {
	c, err := qcow2.OpenChain(image, qcow2.ChainOptions{})
	if err != nil {
		return false, err
	}
	defer c.Close()
	sb := make([]byte, 1024)
	if _, err := c.ReadAt(sb, 1024); err != nil {
		return false, err
	}
	const ( // offsets in the superblock, and values, as the kernel's ext4.h
		magicOff, incompatOff = 0x38, 0x60
		magic                 = 0xEF53
		incompatRecover       = 0x4
	)
	if m := binary.LittleEndian.Uint16(sb[magicOff:]); m != magic {
		return false, fmt.Errorf("%s: no ext4 superblock (magic %#x)", image, m)
	}
	return binary.LittleEndian.Uint32(sb[incompatOff:])&incompatRecover != 0, nil
}

// agentCount returns the number a guest agent's reply returns, -1 for
// none.
func agentCount(m fixtures.RelayMessage) int {
	var r struct {
		Return *int `json:"return"`
	}
	if json.Unmarshal(bytes.TrimLeft(m.Line, "\xff"), &r) != nil || r.Return == nil {
		return -1
	}
	return *r.Return
}
