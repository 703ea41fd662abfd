package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qchain/qchain/fixtures"
	"github.com/qchain/qchain/fixtures/guest"
)

// snapshotSession drives qchain's snapshot manager for VM vm1 of a state
// directory while a live guest runs on its disks, and keeps what each
// snapshot read when it was taken.
type snapshotSession struct {
	t     *testing.T
	ctx   context.Context
	lg    *liveGuest
	img   string   // the images' folder, qchain's working folder
	env   []string // QCHAIN_STATE_DIR
	taken map[string]takenSnapshot
}

// takenSnapshot is a snapshot's guest view of vda when it was taken.
type takenSnapshot struct {
	sum   string // SHA-256 of qchain export of its file
	acked uint64 // records acknowledged before the create started
}

func newSnapshotSession(t *testing.T, ctx context.Context, lg *liveGuest, img, state string) *snapshotSession {
	return &snapshotSession{t: t, ctx: ctx, lg: lg, img: img, env: []string{"QCHAIN_STATE_DIR=" + state}, taken: map[string]takenSnapshot{}}
}

// ok runs a qchain command that must succeed (and that is not an
// operation on the guest's disks) and returns its stdout.
func (s *snapshotSession) ok(args ...string) string {
	s.t.Helper()
	r := s.lg.qchain(s.ctx, s.img, s.env, args...)
	if r.ExitCode != 0 || r.Err != nil {
		s.t.Fatalf("%s: exit %d %v\nstdout: %s\nstderr: %s", r.Cmd, r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	return string(r.Stdout)
}

// show is vm show --output=json of vm1.
func (s *snapshotSession) show() scVMShow {
	s.t.Helper()
	var v scVMShow
	if err := json.Unmarshal([]byte(s.ok("vm", "show", "--output=json", "vm1")), &v); err != nil {
		s.t.Fatal(err)
	}
	return v
}

// chainNames returns disk i's chain, base names top first.
func (v scVMShow) chainNames(i int) []string {
	var out []string
	for _, f := range v.Disks[i].Chain {
		out = append(out, filepath.Base(f))
	}
	return out
}

// list is snapshot list --output=json of vm1.
func (s *snapshotSession) list() []scSnapshot {
	s.t.Helper()
	var l []scSnapshot
	if err := json.Unmarshal([]byte(s.ok("snapshot", "list", "--output=json", "vm1")), &l); err != nil {
		s.t.Fatal(err)
	}
	return l
}

// names lists vm1's snapshots.
func (s *snapshotSession) names() []string {
	s.t.Helper()
	var out []string
	for _, x := range s.list() {
		out = append(out, x.Name)
	}
	return out
}

// file returns the file of snapshot name's disk i.
func (s *snapshotSession) file(name string, i int) string {
	s.t.Helper()
	for _, x := range s.list() {
		if x.Name == name {
			return x.Disks[i].File
		}
	}
	s.t.Fatalf("VM vm1 has no snapshot %s", name)
	return ""
}

// create takes snapshot name live, checks that its vda file holds every
// record acknowledged before the create started, notes its guest view,
// and lets the guest write on into the new overlay.
func (s *snapshotSession) create(name string, flags ...string) fixtures.Result {
	s.t.Helper()
	from := s.lg.g.Acked()
	args := append(append([]string{"snapshot", "create"}, flags...), "vm1", name)
	r := s.lg.op(s.t, s.ctx, "create-"+name, s.img, s.env, args...)
	file := s.file(name, 0)
	wantRecords(s.t, file, s.lg.run, from)
	s.taken[name] = takenSnapshot{sum: guestViewSum(s.t, s.ctx, s.lg.bin, file), acked: from}
	s.lg.waitMore(s.t, s.ctx, 10)
	return r
}

// delete deletes snapshot name live (op names the operation in the
// test's log) and checks that every other snapshot reads as it did.
func (s *snapshotSession) delete(op, name string, flags ...string) {
	s.t.Helper()
	args := append(append([]string{"snapshot", "delete"}, flags...), "vm1", name)
	s.lg.op(s.t, s.ctx, op, s.img, s.env, args...)
	if slices.Contains(s.names(), name) {
		s.t.Errorf("%s: snapshot %s is still listed", op, name)
	}
	s.checkSnapshots(op)
}

// checkSnapshots wants every remaining snapshot's vda to read as it did
// when it was taken; it forgets the snapshots no longer listed.
func (s *snapshotSession) checkSnapshots(after string) {
	s.t.Helper()
	listed := map[string]bool{}
	for _, x := range s.list() {
		listed[x.Name] = true
		want, ok := s.taken[x.Name]
		if !ok {
			continue
		}
		file := x.Disks[0].File
		if got := guestViewSum(s.t, s.ctx, s.lg.bin, file); got != want.sum {
			last, err := guest.CheckRecords(file, s.lg.run, want.acked)
			s.t.Errorf("after %s, snapshot %s (%s) reads differently than when it was taken (records: last intact %d, %v)",
				after, x.Name, filepath.Base(file), last, err)
		}
	}
	for name := range s.taken {
		if !listed[name] {
			delete(s.taken, name)
		}
	}
}

// wantNoStrayFiles wants the images folder to hold only the files of the
// VM's current chains and of its snapshots, and those vm show lists as
// unused with the reason they stay: every other file an operation left
// unneeded was removed.
func (s *snapshotSession) wantNoStrayFiles() {
	s.t.Helper()
	var show struct {
		Disks []struct {
			Chain []string `json:"chain"`
		} `json:"disks"`
		Unused []struct {
			File   string `json:"file"`
			Reason string `json:"reason"`
		} `json:"unused"`
	}
	if err := json.Unmarshal([]byte(s.ok("vm", "show", "--output=json", "vm1")), &show); err != nil {
		s.t.Fatal(err)
	}
	keep := map[string]bool{}
	for _, d := range show.Disks {
		for _, f := range d.Chain {
			keep[filepath.Base(f)] = true
		}
	}
	for _, x := range s.list() {
		for _, d := range x.Disks {
			keep[filepath.Base(d.File)] = true
		}
	}
	for _, u := range show.Unused {
		s.t.Logf("unused, kept: %s: %s", filepath.Base(u.File), u.Reason)
		keep[filepath.Base(u.File)] = true
	}
	ents, err := os.ReadDir(s.img)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, e := range ents {
		if !keep[e.Name()] {
			s.t.Errorf("%s left behind in the images folder", e.Name())
		}
	}
}
