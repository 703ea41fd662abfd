package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
	"github.com/qchain/qchain/fixtures/guest"
	"github.com/qchain/qchain/qmp"
)

// The live block jobs and snapshot operations with a real guest writing
// the whole time (DESIGN.md, invariant 8): qchain reaches QEMU through the
// slow relay, so every window between QEMU's steps is wide open to the
// guest's writes; the guest kept acknowledging records during each
// operation; and after a clean stop every record it acknowledged is in the
// resulting image. Records are never overwritten, so a write lost at any
// point of a test still shows at its end.

// TestGuestBlockJobs runs every live job on one guest, one after the
// other while it writes: a pull, an intermediate commit, an active commit
// with a pivot, a copy with --finish (the copy then holds every record
// acknowledged before the finish was sent), a shallow copy with a pivot,
// and an active commit aborted with blockjob --abort. The test makes the
// overlays the jobs work on with blockdev-snapshot-sync on its own
// monitor. Once with the disk behind -drive, once behind -blockdev.
func TestGuestBlockJobs(t *testing.T) {
	bin := requireTools(t)
	guest.ForTest(t)
	t.Parallel()
	for _, style := range []guest.DriveStyle{guest.DriveStyleDrive, guest.DriveStyleBlockdev} {
		t.Run(style.String(), func(t *testing.T) {
			t.Parallel()
			guestBlockJobs(t, bin, style)
		})
	}
}

func guestBlockJobs(t *testing.T, bin string, style guest.DriveStyle) {
	ctx, cancel := context.WithTimeout(context.Background(), guestTestTimeout)
	defer cancel()
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	if err := guest.NewImage(ctx, path("l0.qcow2"), 64, ""); err != nil {
		t.Fatal(err)
	}
	lg := startLiveGuest(t, ctx, bin, "jobs-"+style.String(), guest.Options{
		Disks:      []guest.Disk{{Path: path("l0.qcow2")}},
		DriveStyle: style,
	})
	disk := lg.g.DiskName(0)
	// qchain runs a block job command as operation name, through the
	// relay: --qmp right after the command's name.
	qchain := func(name string, args ...string) fixtures.Result {
		t.Helper()
		args = append([]string{args[0], "--qmp", lg.relay.Path}, args[1:]...)
		return lg.op(t, ctx, name, dir, nil, args...)
	}
	// overlay puts a new overlay on the disk's top, through the test's
	// monitor, and lets the guest write into it.
	overlay := func(name string) {
		t.Helper()
		top := lg.disk(t, ctx, 0).NodeName
		if err := lg.mon.BlockdevSnapshotSync(ctx, qmp.BlockdevSnapshotSync{
			NodeName: top, SnapshotFile: path(name), SnapshotNodeName: strings.TrimSuffix(name, ".qcow2"), Format: "qcow2",
		}); err != nil {
			t.Fatalf("overlay %s on %s: %v", name, top, err)
		}
		lg.waitMore(t, ctx, 10)
	}

	lg.waitMore(t, ctx, 10)
	overlay("l1.qcow2")
	overlay("l2.qcow2")
	lg.wantChain(t, ctx, 0, "l2.qcow2", "l1.qcow2", "l0.qcow2")

	qchain("pull", "blockpull", "--wait", "--bandwidth", "1", "--base", path("l0.qcow2"), disk)
	lg.wantChain(t, ctx, 0, "l2.qcow2", "l0.qcow2")

	overlay("l3.qcow2")
	qchain("commit-intermediate", "blockcommit", "--wait", "--bandwidth", "1", "--top", path("l2.qcow2"), disk)
	lg.wantChain(t, ctx, 0, "l3.qcow2", "l0.qcow2")

	overlay("l4.qcow2")
	qchain("commit-active-pivot", "blockcommit", "--active", "--pivot", "--bandwidth", "1", disk)
	lg.wantChain(t, ctx, 0, "l0.qcow2")

	// The copy --finish: note what the guest had acknowledged when qchain
	// sent the command that ends the mirror in sync.
	overlay("l5.qcow2")
	var beforeFinish atomic.Uint64
	lg.relay.Watch(func(m fixtures.RelayMessage) {
		if m.ToServer && strings.Contains(string(m.Line), `"block-job-cancel"`) && beforeFinish.Load() == 0 {
			beforeFinish.Store(lg.g.Acked())
		}
	})
	qchain("copy-finish", "blockcopy", "--finish", "--bandwidth", "32", disk, path("copy.qcow2"))
	if beforeFinish.Load() == 0 {
		t.Fatalf("blockcopy --finish sent no block-job-cancel")
	}
	lg.wantChain(t, ctx, 0, "l5.qcow2", "l0.qcow2")

	qchain("copy-shallow-pivot", "blockcopy", "--shallow", "--pivot", "--bandwidth", "4", disk, path("mirror.qcow2"))
	lg.wantChain(t, ctx, 0, "mirror.qcow2", "l0.qcow2")

	// A job left running, then aborted: nothing changes.
	overlay("l6.qcow2")
	r := qchain("commit-start", "blockcommit", "--active", "--bandwidth", "1", disk)
	if !strings.Contains(string(r.Stdout), "Started") {
		t.Errorf("blockcommit without --wait: %s", r.Stdout)
	}
	lg.waitMore(t, ctx, 10)
	if r := qchain("abort", "blockjob", "--abort", disk); !strings.Contains(string(r.Stdout), "aborted") {
		t.Errorf("blockjob --abort: %s", r.Stdout)
	}
	lg.wantChain(t, ctx, 0, "l6.qcow2", "mirror.qcow2", "l0.qcow2")
	lg.wantNoJobs(t, ctx)
	lg.waitMore(t, ctx, 10)

	acked := lg.stop(t, ctx)
	lg.summary(t)
	wantRecords(t, path("l6.qcow2"), lg.run, acked)
	for _, f := range []string{"l6.qcow2", "mirror.qcow2", "l0.qcow2", "copy.qcow2"} {
		checkClean(t, dir, path(f))
	}
	last := wantRecords(t, path("copy.qcow2"), lg.run, beforeFinish.Load())
	t.Logf("copy.qcow2 holds records 1..%d; %d were acknowledged when the finish was sent", last, beforeFinish.Load())
}

// TestGuestSnapshots runs the snapshot manager's live operations on one
// guest while it writes, with the disk behind -blockdev as libvirt gives
// it: five snapshots taken, then deleted at every position: the oldest
// (by pull: a stream into an intermediate image), a middle one (by
// commit: an intermediate commit), the newest, which is the current one
// (by commit: an active commit and a pivot), the current one again (by
// pull into the active image); then one more taken and a rotation that
// keeps it and deletes the older one left (auto merge). When a
// snapshot is taken, the test notes its guest view (a checksum of qchain
// export of its file) and checks that it holds every record acknowledged
// before the create started; after every later operation each remaining
// snapshot must read exactly the same.
func TestGuestSnapshots(t *testing.T) {
	bin := requireTools(t)
	guest.ForTest(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), guestTestTimeout)
	defer cancel()
	img, state := filepath.Join(t.TempDir(), "img"), filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(img, 0o700); err != nil {
		t.Fatal(err)
	}
	vda := filepath.Join(img, "vda.qcow2")
	if err := guest.NewImage(ctx, vda, 64, ""); err != nil {
		t.Fatal(err)
	}
	lg := startLiveGuest(t, ctx, bin, "snapshots", guest.Options{
		Disks:      []guest.Disk{{Path: vda}},
		DriveStyle: guest.DriveStyleBlockdev,
	})
	sm := newSnapshotSession(t, ctx, lg, img, state)
	sm.ok("vm", "define", "--disk", "vda="+vda, "--qmp", lg.relay.Path, "vm1")
	lg.waitMore(t, ctx, 10)

	for _, s := range []string{"s1", "s2", "s3", "s4", "s5"} {
		sm.create(s)
	}
	sm.delete("delete-oldest-pull", "s1", "--merge=pull")
	sm.delete("delete-middle-commit", "s3", "--merge=commit")
	sm.delete("delete-newest-commit", "s5", "--merge=commit") // s5 is also the current one
	if cur := sm.show().Current; cur != "s4" {
		t.Fatalf("after deleting s5 the current snapshot is %q, want s4", cur)
	}
	sm.delete("delete-current-pull", "s4", "--merge=pull")
	sm.create("s6")
	lg.op(t, ctx, "rotate-keep-1", img, sm.env, "snapshot", "rotate", "--keep", "1", "vm1")
	sm.checkSnapshots("rotate")
	if names := sm.names(); strings.Join(names, " ") != "s6" {
		t.Errorf("after rotate --keep 1: snapshots %v, want [s6]", names)
	}
	lg.waitMore(t, ctx, 10)

	active := sm.show().Disks[0].Active
	lg.wantChain(t, ctx, 0, sm.show().chainNames(0)...)
	acked := lg.stop(t, ctx)
	lg.summary(t)
	wantRecords(t, active, lg.run, acked)
	sm.checkSnapshots("the guest's stop")
	for _, f := range sm.show().Disks[0].Chain {
		checkClean(t, img, f)
	}
	sm.wantNoStrayFiles()
}

// TestGuestQuiesce takes snapshots with --quiesce through the real
// qemu-guest-agent in the guest, which has an ext4 file system mounted
// from vdb, with qchain reaching both QEMU and the agent through slow
// relays. A quiesced snapshot's vdb file holds a clean ext4 (the file
// system was frozen when the disks switched: a frozen ext4 has its journal
// flushed and no recovery pending, a mounted one needs recovery, as the
// plain snapshot taken first shows, and e2fsck finds nothing to fix); the
// relays saw the freeze answered before the transaction was sent and the
// thaw sent after it was answered; the agent says thawed afterwards. Then
// two quiesced creates that fail inside the frozen section, one whose new
// overlay is emptied as its blockdev-add goes to QEMU and one interrupted
// (SIGINT), thaw too, take no snapshot and leave nothing behind.
func TestGuestQuiesce(t *testing.T) {
	bin := requireTools(t)
	guest.ForTest(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), guestTestTimeout)
	defer cancel()
	img, state := filepath.Join(t.TempDir(), "img"), filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(img, 0o700); err != nil {
		t.Fatal(err)
	}
	vda, vdb := filepath.Join(img, "vda.qcow2"), filepath.Join(img, "vdb.qcow2")
	if err := guest.NewImage(ctx, vda, 64, ""); err != nil {
		t.Fatal(err)
	}
	if err := guest.NewExt4Disk(ctx, vdb, 16); err != nil {
		t.Fatal(err)
	}
	lg := startLiveGuest(t, ctx, bin, "quiesce", guest.Options{
		Disks: []guest.Disk{{Path: vda}, {Path: vdb}},
		QGA:   true,
	})
	if !strings.Contains(lg.g.Console(), "QCHAIN MOUNTED /dev/vdb /mnt") {
		t.Fatalf("vdb is not mounted in the guest; console:\n%s", lg.g.Console())
	}
	q := &quiesceSession{snapshotSession: newSnapshotSession(t, ctx, lg, img, state), state: state}
	if st := q.agentStatus(); st != qmp.FSThawed {
		t.Fatalf("the agent says %q before any snapshot", st)
	}
	qgaRelay := lg.startRelay(t, "qga", lg.g.QGAPath)
	q.qmpLog, q.qgaLog = watchRelay(lg.relay), watchRelay(qgaRelay)
	q.ok("vm", "define", "--disk", "vda="+vda, "--disk", "vdb="+vdb, "--qmp", lg.relay.Path, "--qga", qgaRelay.Path, "vm1")
	lg.waitMore(t, ctx, 10)

	q.create("plain")
	if rec, err := ext4NeedsRecovery(q.file("plain", 1)); err != nil || !rec {
		t.Errorf("vdb of the plain snapshot: needs recovery %t, %v; want true (mounted, not frozen)", rec, err)
	}
	q.quiesced()
	q.failing()
	q.interrupted()
	lg.waitMore(t, ctx, 10)

	active := q.show().Disks[0].Active
	acked := lg.stop(t, ctx)
	lg.summary(t)
	wantRecords(t, active, lg.run, acked)
	q.checkSnapshots("the guest's stop")
	q.wantNoStrayFiles()
}

// quiesceSession is TestGuestQuiesce's snapshot session, with the relays'
// logs of QMP and of the agent.
type quiesceSession struct {
	*snapshotSession
	state          string
	qmpLog, qgaLog *relayLog
}

// agentStatus asks the agent through a connection of the test's own.
func (q *quiesceSession) agentStatus() string {
	q.t.Helper()
	ga, err := q.lg.g.DialAgent(q.ctx)
	if err != nil {
		q.t.Fatal(err)
	}
	defer ga.Close()
	st, err := ga.FsfreezeStatus(q.ctx)
	if err != nil {
		q.t.Fatal(err)
	}
	return st
}

// quiesced takes snapshot quiesced with --quiesce and checks that the
// switch happened inside the frozen section.
func (q *quiesceSession) quiesced() {
	t := q.t
	t.Helper()
	q.qmpLog.reset()
	q.qgaLog.reset()
	q.create("quiesced", "--quiesce")
	if rec, err := ext4NeedsRecovery(q.file("quiesced", 1)); err != nil || rec {
		t.Errorf("vdb of the quiesced snapshot: needs recovery %t, %v; want false (frozen when the disks switched)", rec, err)
	}
	freezeSent, freezeReply := q.qgaLog.command(t, "guest-fsfreeze-freeze")
	txSent, txReply := q.qmpLog.command(t, `"transaction"`)
	thawSent, thawReply := q.qgaLog.command(t, "guest-fsfreeze-thaw")
	since := func(m fixtures.RelayMessage) float64 { return m.Read.Sub(freezeSent.Read).Seconds() }
	t.Logf("quiesced create: freeze sent at 0, answered %s at %.2fs; transaction sent at %.2fs, answered at %.2fs; thaw sent at %.2fs, answered %s at %.2fs",
		bytes.TrimSpace(freezeReply.Line), since(freezeReply), since(txSent), since(txReply), since(thawSent), bytes.TrimSpace(thawReply.Line), since(thawReply))
	if n := agentCount(freezeReply); n < 1 {
		t.Errorf("guest-fsfreeze-freeze answered %q: no file system frozen", freezeReply.Line)
	}
	if !freezeReply.Read.Before(txSent.Read) || !txReply.Read.Before(thawSent.Read) {
		t.Errorf("the transaction was not inside the frozen section")
	}
	if n := agentCount(thawReply); n < 1 {
		t.Errorf("guest-fsfreeze-thaw answered %q: nothing thawed", thawReply.Line)
	}
	if st := q.agentStatus(); st != qmp.FSThawed {
		t.Errorf("the agent says %q after the quiesced snapshot", st)
	}
	if e2fsck, err := exec.LookPath("e2fsck"); err == nil {
		raw := filepath.Join(t.TempDir(), "vdb.raw")
		if r := q.lg.qchain(q.ctx, q.img, nil, "export", "-o", raw, q.file("quiesced", 1)); r.ExitCode != 0 {
			t.Fatalf("%s: exit %d: %s", r.Cmd, r.ExitCode, r.Stderr)
		}
		if out, err := exec.CommandContext(q.ctx, e2fsck, "-fn", raw).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn of the quiesced snapshot's vdb: %v\n%s", err, out)
		}
	}
}

// failing runs a quiesced create whose switch fails: its first new
// overlay is emptied as qchain's blockdev-add of it goes to QEMU.
func (q *quiesceSession) failing() {
	t := q.t
	t.Helper()
	q.qmpLog.reset()
	q.qgaLog.reset()
	var sabotaged atomic.Bool
	q.lg.relay.Watch(func(m fixtures.RelayMessage) {
		if !m.ToServer || !bytes.Contains(m.Line, []byte(`"blockdev-add"`)) || sabotaged.Load() {
			return
		}
		var cmd struct {
			Arguments struct {
				File struct {
					Filename string `json:"filename"`
				} `json:"file"`
			} `json:"arguments"`
		}
		if json.Unmarshal(m.Line, &cmd) == nil && strings.Contains(cmd.Arguments.File.Filename, ".failing.") {
			sabotaged.Store(true)
			os.Truncate(cmd.Arguments.File.Filename, 0)
		}
	})
	before := q.show()
	from, start := q.lg.g.Acked(), time.Now()
	r := q.lg.qchain(q.ctx, q.img, q.env, "snapshot", "create", "--quiesce", "vm1", "failing")
	q.lg.noteOp(t, "create-failing", from, q.lg.g.Acked(), time.Since(start))
	if !sabotaged.Load() {
		t.Fatalf("qchain sent no blockdev-add of an overlay of snapshot failing: exit %d, %s", r.ExitCode, r.Stderr)
	}
	t.Logf("failed quiesced create: %s", bytes.TrimSpace(r.Stderr))
	if st := q.agentStatus(); st != qmp.FSThawed {
		t.Errorf("the agent says %q after the failed create", st)
	}
	wantOneLineError(t, r, 1, "vm1", "failing", "not taken", "removed")
	if _, ok := q.qgaLog.first(true, "guest-fsfreeze-freeze"); !ok {
		t.Errorf("the failing create did not freeze")
	}
	if _, thawReply := q.qgaLog.command(t, "guest-fsfreeze-thaw"); agentCount(thawReply) < 1 {
		t.Errorf("the failing create's thaw answered %q", thawReply.Line)
	}
	if _, ok := q.qmpLog.first(true, `"transaction"`); ok {
		t.Errorf("the failing create sent a transaction")
	}
	q.wantNotTaken("failing", before)
}

// interrupted sends SIGINT to a quiesced create once the freeze was
// answered and qchain went on to QEMU: the create is cancelled, the file
// systems thawed at once, and the create rolled back.
func (q *quiesceSession) interrupted() {
	t := q.t
	t.Helper()
	q.qmpLog.reset()
	q.qgaLog.reset()
	before := q.show()
	from, start := q.lg.g.Acked(), time.Now()
	job := startQchain(t, q.lg.bin, q.img, "snapshot", "create", "--quiesce", "--state-dir", q.state, "vm1", "interrupted")
	for !q.frozenAndOn() {
		select {
		case <-job.done:
			t.Fatalf("qchain ended before the frozen section: exit %d, %s", job.code, job.stderr)
		case <-time.After(5 * time.Millisecond):
		}
	}
	job.cmd.Process.Signal(syscall.SIGINT) // the qchain this test started
	r := fixtures.Result{Cmd: "qchain snapshot create --quiesce (SIGINT)", ExitCode: job.wait(t), Stderr: []byte(job.stderr.String())}
	q.lg.noteOp(t, "create-interrupted", from, q.lg.g.Acked(), time.Since(start))
	t.Logf("interrupted quiesced create: %s", bytes.TrimSpace(r.Stderr))
	if st := q.agentStatus(); st != qmp.FSThawed {
		t.Errorf("the agent says %q after qchain was interrupted while the file systems were frozen", st)
	}
	wantOneLineError(t, r, 130, "interrupted", "not taken")
	if _, thawReply := q.qgaLog.command(t, "guest-fsfreeze-thaw"); agentCount(thawReply) < 1 {
		t.Errorf("the interrupted create's thaw answered %q", thawReply.Line)
	}
	q.wantNotTaken("interrupted", before)
}

// frozenAndOn says whether the agent answered a freeze and qchain then
// sent QEMU a command: it is inside the frozen section.
func (q *quiesceSession) frozenAndOn() bool {
	_, reply, ok := q.qgaLog.reply("guest-fsfreeze-freeze")
	return ok && q.qmpLog.sentAfter(reply.Read)
}

// wantNotTaken checks that a failed create left no trace: no snapshot
// name, the disks on the images they were on before (in the metadata and
// in QEMU), no journal. Stray files are for wantNoStrayFiles.
func (q *quiesceSession) wantNotTaken(name string, before scVMShow) {
	t := q.t
	t.Helper()
	if slices.Contains(q.names(), name) {
		t.Errorf("snapshot %s is listed", name)
	}
	after := q.show()
	for i := range after.Disks {
		if after.Disks[i].Active != before.Disks[i].Active {
			t.Errorf("disk %s: active %s after the failed create of %s, was %s", after.Disks[i].Target, after.Disks[i].Active, name, before.Disks[i].Active)
		}
		q.lg.wantChain(t, q.ctx, i, after.chainNames(i)...)
	}
	if _, err := os.Stat(filepath.Join(q.state, "vms", "vm1", "journal.json")); !os.IsNotExist(err) {
		t.Errorf("a journal after the failed create of %s: %v", name, err)
	}
}
