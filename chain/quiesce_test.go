package chain

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// fakeGuestAgent answers qemu-ga's protocol on a unix socket: the
// guest-sync-delimited handshake and fsfreeze freeze/thaw, recording the
// frozen state.
type fakeGuestAgent struct {
	mu             sync.Mutex
	frozen         bool
	freezes, thaws int
	frozenAtStep   bool
	path           string
	ln             net.Listener
}

func startFakeGuestAgent(t *testing.T) *fakeGuestAgent {
	t.Helper()
	dir, err := os.MkdirTemp("", "qga-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &fakeGuestAgent{path: filepath.Join(dir, "qga.sock")}
	if a.ln, err = net.Listen("unix", a.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.ln.Close() })
	go func() {
		for {
			c, err := a.ln.Accept()
			if err != nil {
				return
			}
			go a.serve(c)
		}
	}()
	return a
}

func (a *fakeGuestAgent) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		line = []byte(strings.TrimLeft(string(line), "\xff"))
		var cmd struct {
			Execute   string `json:"execute"`
			Arguments struct {
				ID json.Number `json:"id"`
			} `json:"arguments"`
		}
		if json.Unmarshal(line, &cmd) != nil {
			continue
		}
		a.mu.Lock()
		var reply string
		switch cmd.Execute {
		case "guest-sync-delimited":
			reply = "\xff" + `{"return": ` + cmd.Arguments.ID.String() + `}`
		case "guest-fsfreeze-freeze":
			a.frozen = true
			a.freezes++
			reply = `{"return": 1}`
		case "guest-fsfreeze-thaw":
			a.frozen = false
			a.thaws++
			reply = `{"return": 1}`
		case "guest-fsfreeze-status":
			reply = `{"return": "thawed"}`
			if a.frozen {
				reply = `{"return": "frozen"}`
			}
		default:
			reply = `{"error": {"class": "CommandNotFound", "desc": "no"}}`
		}
		a.mu.Unlock()
		c.Write([]byte(reply + "\n"))
	}
}

func (a *fakeGuestAgent) state() (bool, int, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.frozen, a.freezes, a.thaws
}

// TestQuiesceLive: snapshot create --quiesce freezes the guest's file
// systems around the live switch and thaws them afterwards, also when the
// switch fails.
func TestQuiesceLive(t *testing.T) {
	m, q, ga := quiesceRig(t)
	frozenOnce(t, ga, StepLiveSnapshot, "the switch", func() error { _, err := m.CreateSnapshot("qz", "s1", "", true); return err })
	// A failing switch (qemu cannot open a new overlay) still thaws.
	setStepHook(t, func(_ string, _ int, s Step) {
		if s.Kind == StepLiveSnapshot {
			os.Truncate(s.Files[0], 0)
		}
	})
	if _, err := m.CreateSnapshot("qz", "s2", "", true); err == nil {
		t.Fatal("create with a broken overlay succeeded")
	}
	StepHook = nil
	if frozen, freezes, thaws := ga.state(); frozen || freezes != thaws {
		t.Errorf("after a failed create: frozen %t, %d freezes, %d thaws", frozen, freezes, thaws)
	}
	// Without an agent socket --quiesce is refused before anything changes.
	cur, _ := m.Store.Load("qz")
	if err := m.Store.Define(&VM{Name: "qz3", QMP: q.qchain, Disks: []Disk{{Target: "vda", Active: cur.Disks[0].Active}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateSnapshot("qz3", "s1", "", true); err == nil || !strings.Contains(err.Error(), "agent") {
		t.Errorf("--quiesce without an agent: %v", err)
	}
}

// TestQuiesceSilentAgent: QEMU accepts connections on the agent's socket
// whether or not qemu-ga runs in the guest, and then nothing answers.
// A quiesced create gives up after Manager.AgentTimeout with an error
// that says so, before it changes anything (it used to wait forever).
func TestQuiesceSilentAgent(t *testing.T) {
	need(t, "qemu-img", "qemu-system-x86_64")
	dir := t.TempDir()
	f, g := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "4M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", g, "4M")
	q := startLiveVM(t, map[string]string{"vda": f, "vdb": g})
	sockDir, err := os.MkdirTemp("", "qga-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	silent := filepath.Join(sockDir, "qga.sock")
	ln, err := net.Listen("unix", silent)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // reads everything, answers nothing
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	m := &Manager{Store: &Store{Dir: filepath.Join(dir, "state")}, AgentTimeout: 300 * time.Millisecond}
	if err := m.Store.Define(&VM{Name: "qs", QMP: q.qchain, QGA: silent, Disks: []Disk{{Target: "vda", Active: f}, {Target: "vdb", Active: g}}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = m.CreateSnapshot("qs", "s1", "", true)
	if err == nil || !strings.Contains(err.Error(), "did not answer") || !strings.Contains(err.Error(), "qemu-ga") {
		t.Fatalf("create --quiesce with a silent agent: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v", d)
	}
	t.Logf("%v", err)
	vm, err := m.Store.Load("qs")
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Snapshots) != 0 || vm.Disks[0].Active != f || vm.Disks[1].Active != g {
		t.Errorf("the failed create changed the VM: %+v", vm)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "vda.qcow2" && e.Name() != "vdb.qcow2" && e.Name() != "state" {
			t.Errorf("%s left behind", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "vms", "qs", "journal.json")); !os.IsNotExist(err) {
		t.Errorf("a journal after the failed create: %v", err)
	}
}

// TestQuiesceCancelled: cancelling Manager.Ctx while the guest's file
// systems are frozen (the CLI does on SIGINT and SIGTERM) thaws them and
// undoes the create: no snapshot, no new overlay, no journal, no node
// left in QEMU, which still runs on the old images. It is cancelled as
// blockdev-add of the first new overlay goes to QEMU (through a relay
// that sees it first), so that the add takes effect although its answer
// is never read. (A qchain killed by the signal used to leave the guest
// frozen; a cancelled one left the journal and the node.)
func TestQuiesceCancelled(t *testing.T) {
	need(t, "qemu-img", "qemu-system-x86_64")
	dir := t.TempDir()
	f, g := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "4M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", g, "4M")
	q := startLiveVM(t, map[string]string{"vda": f, "vdb": g})
	relay, err := fixtures.StartQMPRelay(q.qchain+"-relay", q.qchain, 5*time.Millisecond, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	ga := startFakeGuestAgent(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var frozenAtCancel atomic.Bool
	relay.Watch(func(m fixtures.RelayMessage) {
		if m.ToServer && strings.Contains(string(m.Line), `"blockdev-add"`) && ctx.Err() == nil {
			frozen, _, _ := ga.state()
			frozenAtCancel.Store(frozen)
			cancel()
		}
	})
	m := &Manager{Ctx: ctx, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := m.Store.Define(&VM{Name: "qc", QMP: relay.Path, QGA: ga.path, Disks: []Disk{{Target: "vda", Active: f}, {Target: "vdb", Active: g}}}); err != nil {
		t.Fatal(err)
	}
	_, err = m.CreateSnapshot("qc", "s1", "", true)
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "not taken") {
		t.Fatalf("create cancelled in the frozen section: %v", err)
	}
	t.Logf("%v", err)
	if frozen, freezes, thaws := ga.state(); !frozenAtCancel.Load() || frozen || freezes != 1 || thaws != 1 {
		t.Errorf("frozen when cancelled %t, frozen now %t, %d freezes, %d thaws; want true, false, 1, 1", frozenAtCancel.Load(), frozen, freezes, thaws)
	}
	vm, err := m.Store.Load("qc")
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Snapshots) != 0 || vm.Disks[0].Active != f || vm.Disks[1].Active != g {
		t.Errorf("the cancelled create changed the VM: %+v", vm)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "vda.qcow2" && e.Name() != "vdb.qcow2" && e.Name() != "state" {
			t.Errorf("%s left behind", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "vms", "qc", "journal.json")); !os.IsNotExist(err) {
		t.Errorf("a journal after the cancelled create: %v", err)
	}
	bg := context.Background()
	if err := (&Live{Conn: q.conn}).verify(bg, vm); err != nil {
		t.Errorf("QEMU after the cancelled create: %v", err)
	}
	nodes, err := q.conn.QueryNamedBlockNodes(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "qchain-") {
			t.Errorf("node %s (%s) left in QEMU", n.NodeName, n.File)
		}
	}
}

// TestQuiesceInternal: a disk-only internal snapshot with quiesce freezes
// the guest's file systems around its transaction and thaws them after.
func TestQuiesceInternal(t *testing.T) {
	m, _, ga := quiesceRig(t)
	frozenOnce(t, ga, StepInternalSnapshot, "the transaction", func() error { _, err := m.CreateInternalSnapshot("qz", "i1", "", true); return err })
	// Thawing after a failed transaction is the frozen helper's, which
	// TestQuiesceLive checks with a failing switch.
}

// quiesceRig starts a qemu with two new disks vda and vdb, a fake guest
// agent, and VM qz of them.
func quiesceRig(t *testing.T) (*Manager, *liveVM, *fakeGuestAgent) {
	need(t, "qemu-img", "qemu-system-x86_64")
	dir := t.TempDir()
	var files []string
	for _, n := range []string{"vda", "vdb"} {
		f := filepath.Join(dir, n+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "4M")
		files = append(files, f)
	}
	q := startLiveVM(t, map[string]string{"vda": files[0], "vdb": files[1]})
	ga := startFakeGuestAgent(t)
	m := &Manager{BeforeStep: testHook, Store: &Store{Dir: filepath.Join(dir, "state")}}
	if err := m.Store.Define(&VM{Name: "qz", QMP: q.qchain, QGA: ga.path, Disks: []Disk{{Target: "vda", Active: files[0]}, {Target: "vdb", Active: files[1]}}}); err != nil {
		t.Fatal(err)
	}
	return m, q, ga
}

// frozenOnce runs create and checks that the guest's file systems were
// frozen when the step of kind ran, and thawed once after.
func frozenOnce(t *testing.T, ga *fakeGuestAgent, kind string, what string, create func() error) {
	t.Helper()
	setStepHook(t, func(_ string, _ int, s Step) {
		if s.Kind == kind {
			frozen, _, _ := ga.state()
			ga.mu.Lock()
			ga.frozenAtStep = frozen
			ga.mu.Unlock()
		}
	})
	if err := create(); err != nil {
		t.Fatal(err)
	}
	frozen, freezes, thaws := ga.state()
	if !ga.frozenAtStep || frozen || freezes != 1 || thaws != 1 {
		t.Errorf("frozen during %s %t, frozen now %t, %d freezes, %d thaws; want true, false, 1, 1", what, ga.frozenAtStep, frozen, freezes, thaws)
	}
}
