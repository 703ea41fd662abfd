package chain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qchain/qchain/qcow2"
)

// Sizes of the randomized tests' images: small, so that hundreds of
// operations run in well under a minute.
const (
	rDiskSize   = 4 << 20
	rCluster    = 64 << 10
	rClusters   = rDiskSize / rCluster
	toolTimeout = 60 * time.Second
)

// runTool runs an external command under toolTimeout and returns its
// combined output.
func runTool(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", toolTimeout, err)
	}
	return out, err
}

func mustTool(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := runTool(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// fileID identifies a version of a file: any write, rename onto it or
// chmod changes its ctime.
type fileID struct {
	Ino, Size, Mtime, Ctime int64
}

func idOf(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano()}, nil
}

// dirState records every regular file under the folders by path and
// version.
func dirState(t testing.TB, dirs ...string) map[string]fileID {
	t.Helper()
	out := map[string]fileID{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			if d.Name() == "lock" {
				return nil // opened (not written) by every operation
			}
			id, err := idOf(p)
			out[p] = id
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func diffState(before, after map[string]fileID) string {
	var out []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			out = append(out, "removed "+p)
		case a != b:
			out = append(out, "changed "+p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			out = append(out, "created "+p)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func hexSum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// guestBytes reads what a guest sees through file's chain.
func guestBytes(file string) ([]byte, error) {
	c, err := qcow2.OpenChain(file, qcow2.ChainOptions{})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	buf := make([]byte, c.Size())
	if _, err := c.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return buf, nil
}

// guestOp is one qemu-io command and its effect on the model.
type guestOp struct {
	kind    string // "write", "zero", "discard"
	pattern byte
	off     int
	length  int
}

func (g guestOp) cmd() string {
	switch g.kind {
	case "zero":
		return fmt.Sprintf("write -q -z %d %d", g.off, g.length)
	case "discard":
		return fmt.Sprintf("discard -q %d %d", g.off, g.length)
	}
	return fmt.Sprintf("write -q -P 0x%02x %d %d", g.pattern, g.off, g.length)
}

func (g guestOp) apply(b []byte) {
	v := byte(0)
	if g.kind == "write" {
		v = g.pattern
	}
	for i := g.off; i < g.off+g.length; i++ {
		b[i] = v
	}
}

func randomGuestOps(rnd *rand.Rand, zeroOnly bool) []guestOp {
	n := 1 + rnd.Intn(4)
	var ops []guestOp
	for range n {
		c := rnd.Intn(rClusters)
		l := 1 + rnd.Intn(min(4, rClusters-c))
		g := guestOp{kind: "write", pattern: byte(1 + rnd.Intn(255)), off: c * rCluster, length: l * rCluster}
		switch r := rnd.Intn(100); {
		case zeroOnly && r < 50, !zeroOnly && r < 15:
			g.kind = "zero"
		case zeroOnly, r < 30:
			g.kind = "discard"
		}
		ops = append(ops, g)
	}
	return ops
}

// vmModel is what the test knows a VM should read: independent of the
// metadata, which is checked against it.
type vmModel struct {
	name      string
	targets   []string
	originals []string
	cur       map[string][]byte            // the current state, per target
	parent    map[string]string            // snapshot -> parent
	snapSum   map[string]map[string]string // snapshot -> target -> checksum
	current   string
	dirty     bool // the guest wrote since the last create or revert
	forgotten bool // a snapshot was forgotten with --metadata
	next      int
	deleted   []string
}

func (v *vmModel) children(name string) []string {
	var out []string
	for s, p := range v.parent {
		if p == name {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

func (v *vmModel) subtree(name string) []string {
	out := []string{name}
	for i := 0; i < len(out); i++ {
		out = append(out, v.children(out[i])...)
	}
	return out
}

// position classifies a snapshot for the operation counts.
func (v *vmModel) position(name string) string {
	deps := len(v.children(name))
	if v.current == name {
		deps++
	}
	switch {
	case deps > 1:
		return "several-dependants"
	case v.parent[name] == "":
		return "oldest"
	case deps == 0 || v.current == name:
		return "newest"
	}
	return "middle"
}

func (v *vmModel) ancestors(name string) []string {
	var out []string
	for name != "" {
		out = append(out, name)
		name = v.parent[name]
	}
	return out
}

func (v *vmModel) snapshots() []string {
	var out []string
	for s := range v.parent {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// forget applies a delete of name (reparenting its children) to the model.
func (v *vmModel) forget(name string) {
	p := v.parent[name]
	for _, c := range v.children(name) {
		v.parent[c] = p
	}
	if v.current == name {
		v.current = p
	}
	delete(v.parent, name)
	delete(v.snapSum, name)
	v.deleted = append(v.deleted, name)
}

type sumEntry struct {
	ids []fileID
	sum string
}

// rig drives a state directory with several VMs and checks every
// invariant after each step.
type rig struct {
	t      *testing.T
	seed   int64
	rnd    *rand.Rand
	img    string // the images' folder
	state  string
	m      *Manager
	gold   string
	goldID string // checksum of gold.qcow2's bytes
	vms    []*vmModel
	// stable holds the bytes checksum that each image qchain did not
	// create must keep while it is not a VM's active image.
	stable  map[string]string
	extra   map[string]string // files a plan kept, with the reason
	checked map[string]fileID
	sums    map[string]sumEntry
	hashes  map[string]sumEntry
	log     []string
	ops     map[string]int
	step    int
	// policy collects contract violations that lose no data, reported
	// once each so the sequence goes on.
	policy map[string]bool
}

func newRig(t *testing.T, seed int64) *rig {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	root := t.TempDir()
	r := &rig{t: t, seed: seed, rnd: rand.New(rand.NewSource(seed)), img: filepath.Join(root, "img"), state: filepath.Join(root, "state"),
		stable: map[string]string{}, extra: map[string]string{}, checked: map[string]fileID{}, sums: map[string]sumEntry{},
		hashes: map[string]sumEntry{}, ops: map[string]int{}, policy: map[string]bool{}}
	if err := os.MkdirAll(r.img, 0o700); err != nil {
		t.Fatal(err)
	}
	r.m = &Manager{BeforeStep: testHook, Store: &Store{Dir: r.state}, Ctx: context.Background()}
	r.gold = filepath.Join(r.img, "gold.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", r.gold, strconv.Itoa(rDiskSize))
	mustTool(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0x47 0 1M", "-c", "write -q -P 0x48 2M 1M", "-c", "write -q -z 2560k 128k", r.gold)
	r.goldID = r.fileHash(r.gold)
	return r
}

func (r *rig) logf(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf("step %d: ", r.step)+fmt.Sprintf(format, args...))
}

// fatalf stops the test with the seed and the last steps, to replay it.
func (r *rig) fatalf(format string, args ...any) {
	r.t.Helper()
	tail := r.log[max(0, len(r.log)-20):]
	r.t.Fatalf("seed %d, step %d: %s\nlast steps:\n  %s", r.seed, r.step, fmt.Sprintf(format, args...), strings.Join(tail, "\n  "))
}

// violation reports a broken contract that did not lose data, once.
func (r *rig) violation(key, format string, args ...any) {
	r.t.Helper()
	if r.policy[key] {
		return
	}
	r.policy[key] = true
	tail := r.log[max(0, len(r.log)-8):]
	r.t.Errorf("seed %d, step %d: %s\nlast steps:\n  %s", r.seed, r.step, fmt.Sprintf(format, args...), strings.Join(tail, "\n  "))
}

func (r *rig) fileHash(path string) string {
	id, err := idOf(path)
	if err != nil {
		r.fatalf("%v", err)
	}
	if e, ok := r.hashes[path]; ok && e.ids[0] == id {
		return e.sum
	}
	b, err := os.ReadFile(path)
	if err != nil {
		r.fatalf("%v", err)
	}
	s := hexSum(b)
	r.hashes[path] = sumEntry{[]fileID{id}, s}
	return s
}

// guestSum is the guest-visible checksum of file's chain, cached while no
// file of the chain changes.
func (r *rig) guestSum(file string) (string, error) {
	ch, err := ChainFiles(file)
	if err != nil {
		return "", err
	}
	var ids []fileID
	for _, f := range ch {
		id, err := idOf(f)
		if err != nil {
			return "", err
		}
		ids = append(ids, id)
	}
	if e, ok := r.sums[file]; ok && slices.Equal(e.ids, ids) {
		return e.sum, nil
	}
	b, err := guestBytes(file)
	if err != nil {
		return "", err
	}
	s := hexSum(b)
	r.sums[file] = sumEntry{ids, s}
	return s, nil
}

// defineVM defines a VM whose disks vda and vdb are new overlays of the
// given backing files.
func (r *rig) defineVM(name string, backing map[string]string) *vmModel {
	v := &vmModel{name: name, targets: []string{"vda", "vdb"}, cur: map[string][]byte{}, parent: map[string]string{}, snapSum: map[string]map[string]string{}}
	vm := &VM{Name: name}
	for _, tg := range v.targets {
		f := filepath.Join(r.img, name+"-"+tg+".qcow2")
		mustTool(r.t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", backing[tg], "-F", "qcow2", f)
		b, err := guestBytes(f)
		if err != nil {
			r.fatalf("%v", err)
		}
		v.cur[tg] = b
		v.originals = append(v.originals, f)
		vm.Disks = append(vm.Disks, Disk{Target: tg, Active: f})
	}
	if err := r.m.Store.Define(vm); err != nil {
		r.fatalf("define %s: %v", name, err)
	}
	r.vms = append(r.vms, v)
	r.logf("define VM %s on %v", name, backing)
	return v
}

func (r *rig) load(v *vmModel) *VM {
	vm, err := r.m.Store.Load(v.name)
	if err != nil {
		r.fatalf("load %s: %v", v.name, err)
	}
	return vm
}

func (r *rig) active(v *vmModel, target string) string { return r.load(v).Disk(target).Active }

// guestWrite writes through qemu-io into each disk's active image.
func (r *rig) guestWrite(v *vmModel) {
	zeroOnly := r.rnd.Intn(5) == 0
	for _, tg := range v.targets {
		if r.rnd.Intn(4) == 0 {
			continue // not every disk every time
		}
		act := r.active(v, tg)
		ops := randomGuestOps(r.rnd, zeroOnly)
		args := []string{"-f", "qcow2"}
		var cmds []string
		for _, g := range ops {
			args = append(args, "-c", g.cmd())
			cmds = append(cmds, g.cmd())
			g.apply(v.cur[tg])
		}
		mustTool(r.t, "qemu-io", append(args, act)...)
		v.dirty = true
		r.logf("%s %s: qemu-io %s on %s", v.name, tg, strings.Join(cmds, "; "), filepath.Base(act))
		got, err := r.guestSum(act)
		if err != nil {
			r.fatalf("%v", err)
		}
		if got != hexSum(v.cur[tg]) {
			r.fatalf("%s %s: after qemu-io the active image does not read as the model (qemu-io semantics?)", v.name, tg)
		}
	}
	r.ops["write"]++
}

func (r *rig) snapName(v *vmModel) string {
	if len(v.deleted) > 0 && r.rnd.Intn(5) == 0 {
		n := v.deleted[r.rnd.Intn(len(v.deleted))]
		if _, ok := v.parent[n]; !ok {
			return n // a name used before, deleted since
		}
	}
	v.next++
	return fmt.Sprintf("s%d", v.next)
}

func (r *rig) create(v *vmModel) {
	if len(v.parent) > 0 && r.rnd.Intn(12) == 0 {
		dup := v.snapshots()[r.rnd.Intn(len(v.parent))]
		r.refused(v, "create duplicate "+dup, func() error { _, err := r.m.CreateSnapshot(v.name, dup, "", false); return err })
		return
	}
	name := r.snapName(v)
	s, err := r.m.CreateSnapshot(v.name, name, "random", false)
	if err != nil {
		r.fatalf("%s: create %s: %v", v.name, name, err)
	}
	r.logf("%s: create %s (parent %q)", v.name, name, v.current)
	v.parent[name] = v.current
	v.current = name
	v.dirty = false
	v.snapSum[name] = map[string]string{}
	for _, tg := range v.targets {
		v.snapSum[name][tg] = hexSum(v.cur[tg])
		if s.File(tg) == "" {
			r.fatalf("%s: snapshot %s has no file for %s", v.name, name, tg)
		}
	}
	r.ops["create"]++
}

// refused runs an operation that must fail and checks that it changed
// nothing at all.
func (r *rig) refused(v *vmModel, what string, op func() error) error {
	r.t.Helper()
	before := dirState(r.t, r.img, r.state)
	err := op()
	if err == nil {
		r.fatalf("%s: %s succeeded; it must be refused", v.name, what)
	}
	if d := diffState(before, dirState(r.t, r.img, r.state)); d != "" {
		r.fatalf("%s: %s was refused (%v) but changed files: %s", v.name, what, err, d)
	}
	r.logf("%s: %s refused: %v", v.name, what, err)
	r.ops["refused"]++
	return err
}

// otherUses names another VM whose chains read file.
func (r *rig) otherUses(v *vmModel, file string) string {
	for _, o := range r.vms {
		if o == v {
			continue
		}
		vm := r.load(o)
		for _, d := range vm.Disks {
			for _, f := range vm.trackedFiles(d.Target) {
				ch, err := ChainFiles(f)
				if err != nil {
					r.fatalf("%v", err)
				}
				if slices.Contains(ch, file) {
					return o.name
				}
			}
		}
	}
	return ""
}

// commitVerdict says whether deleting name by commit must be refused
// ("" when it may go ahead) and whether it must succeed.
func (r *rig) commitVerdict(v *vmModel, name string) (refuse string, mustWork bool) {
	deps := len(v.children(name))
	if v.current == name {
		deps++
	}
	if deps == 0 {
		return "", true // nothing to merge: the file just goes
	}
	if deps > 1 {
		return fmt.Sprintf("%d images depend on it (branches)", deps), false
	}
	vm := r.load(v)
	s := vm.Snapshot(name)
	for _, tg := range v.targets {
		f := s.File(tg)
		if o := r.otherUses(v, f); o != "" {
			return fmt.Sprintf("VM %s reads %s", o, filepath.Base(f)), false
		}
	}
	return "", !v.forgotten
}

func (r *rig) deleteOne(v *vmModel) {
	snaps := v.snapshots()
	if len(snaps) == 0 {
		r.create(v)
		return
	}
	name := snaps[r.rnd.Intn(len(snaps))]
	merge := []string{MergeAuto, MergeCommit, MergePull}[r.rnd.Intn(3)]
	opts := DeleteOptions{Merge: merge}
	switch x := r.rnd.Intn(20); {
	case x < 3:
		opts.Children = true
	case x < 4:
		opts.MetadataOnly = true
	}
	desc := fmt.Sprintf("delete %s (merge %s, children %t, metadata %t; children %v, current %q)", name, merge, opts.Children, opts.MetadataOnly, v.children(name), v.current)
	if opts.Children && slices.Contains(v.subtree(name), v.current) {
		r.refused(v, desc, func() error { _, err := r.m.Delete(v.name, name, opts, false); return err })
		return
	}
	var refuse string
	mustWork := true
	if merge == MergeCommit && !opts.Children && !opts.MetadataOnly {
		refuse, mustWork = r.commitVerdict(v, name)
	}
	r.ops["position-"+v.position(name)]++
	if r.rnd.Intn(4) == 0 {
		before := dirState(r.t, r.img, r.state)
		p, err := r.m.Delete(v.name, name, opts, true)
		if d := diffState(before, dirState(r.t, r.img, r.state)); d != "" {
			r.fatalf("%s: dry run of %s changed files: %s", v.name, desc, d)
		}
		if err == nil && (len(p.Before) != len(v.targets) || len(p.After) != len(v.targets)) {
			r.fatalf("%s: dry run of %s: plan without before/after chains: %+v", v.name, desc, p)
		}
		r.logf("%s: dry run of %s: %v", v.name, desc, err)
	}
	before := dirState(r.t, r.img, r.state)
	p, err := r.m.Delete(v.name, name, opts, false)
	if err != nil {
		after := dirState(r.t, r.img, r.state)
		if d := diffState(before, after); d != "" {
			r.fatalf("%s: %s failed (%v) and changed files: %s", v.name, desc, err, d)
		}
		if refuse != "" || !mustWork {
			r.logf("%s: %s refused (%s): %v", v.name, desc, refuse, err)
			r.ops["refused"]++
			switch {
			case strings.HasPrefix(refuse, "VM "):
				r.ops["commit-refused-other-vm"]++
			case refuse != "":
				r.ops["commit-refused-branches"]++
			default:
				r.ops["commit-refused-other"]++
			}
			return
		}
		r.fatalf("%s: %s: %v", v.name, desc, err)
	}
	var steps []string
	for _, s := range p.Steps {
		steps = append(steps, s.String())
		// The VM's original images are its own: a commit or pull may
		// write into them when nothing else uses them (doc.go); only
		// gold.qcow2, under every VM, must never change (checked below).
		if (s.Kind == StepCommit && s.Base == r.gold) || (s.Kind == StepPull && s.File == r.gold) {
			r.violation("write-into-gold", "%s: %s writes into %s, shared by every VM", v.name, desc, r.gold)
		}
	}
	r.logf("%s: %s: %s; kept %v", v.name, desc, strings.Join(steps, "; "), p.Kept)
	r.noteKept(p)
	if refuse != "" {
		r.fatalf("%s: %s succeeded, but commit must be refused: %s", v.name, desc, refuse)
	}
	if opts.MetadataOnly {
		v.forgotten = true
		for _, f := range p.Steps {
			r.fatalf("%s: --metadata planned a file step: %s", v.name, f)
		}
	}
	if opts.Children {
		for _, s := range v.subtree(name) {
			v.forget(s)
		}
		v.deleted = append(v.deleted, name)
	} else {
		v.forget(name)
	}
	r.ops["delete-"+merge]++
	if opts.Children {
		r.ops["delete-children"]++
	}
	if opts.MetadataOnly {
		r.ops["delete-metadata"]++
	}
}

func (r *rig) revert(v *vmModel) {
	snaps := v.snapshots()
	if len(snaps) == 0 {
		r.create(v)
		return
	}
	name := snaps[r.rnd.Intn(len(snaps))]
	force := r.rnd.Intn(2) == 0
	desc := fmt.Sprintf("revert to %s (force %t, dirty %t)", name, force, v.dirty)
	if v.dirty && !force {
		r.refused(v, desc, func() error { _, err := r.m.Revert(v.name, name, false); return err })
		return
	}
	before := dirState(r.t, r.img, r.state)
	p, err := r.m.Revert(v.name, name, force)
	if err != nil {
		if d := diffState(before, dirState(r.t, r.img, r.state)); d != "" {
			r.fatalf("%s: %s failed (%v) and changed files: %s", v.name, desc, err, d)
		}
		if force {
			r.fatalf("%s: %s: %v", v.name, desc, err)
		}
		// The active image holds data a delete merged into it: a
		// refusal is the safe answer.
		r.logf("%s: %s refused: %v", v.name, desc, err)
		r.ops["refused"]++
		return
	}
	r.logf("%s: %s: removed %v, kept %v", v.name, desc, p.Removed, p.Kept)
	r.noteKept(p)
	vm := r.load(v)
	for _, tg := range v.targets {
		b, err := guestBytes(vm.Disk(tg).Active)
		if err != nil {
			r.fatalf("%v", err)
		}
		if hexSum(b) != v.snapSum[name][tg] {
			r.fatalf("%s: after %s disk %s does not read as the snapshot", v.name, desc, tg)
		}
		v.cur[tg] = b
	}
	v.current = name
	v.dirty = false
	r.ops["revert"]++
	if r.rnd.Intn(2) == 0 { // a branch: write, then snapshot
		r.guestWrite(v)
		r.create(v)
		r.ops["branch"]++
	}
}

func (r *rig) rotate(v *vmModel) {
	keep := 1 + r.rnd.Intn(4)
	gone := v.ancestors(v.current)
	if len(gone) > keep {
		gone = gone[keep:]
	} else {
		gone = nil
	}
	plans, err := r.m.Rotate(v.name, RotateOptions{Keep: keep})
	if err != nil {
		r.fatalf("%s: rotate --keep %d: %v", v.name, keep, err)
	}
	var got []string
	for _, p := range plans {
		got = append(got, p.Snapshot)
		r.noteKept(p)
	}
	slices.Reverse(gone) // oldest first
	if !slices.Equal(got, gone) {
		r.fatalf("%s: rotate --keep %d deleted %v, want %v", v.name, keep, got, gone)
	}
	for _, s := range gone {
		v.forget(s)
	}
	r.logf("%s: rotate --keep %d deleted %v", v.name, keep, got)
	r.ops["rotate"]++
}

// cloneVM defines a VM whose disks are overlays of one of a's snapshots.
func (r *rig) cloneVM(a *vmModel, name string) *vmModel {
	snaps := a.snapshots()
	s := snaps[r.rnd.Intn(len(snaps))]
	vm := r.load(a)
	back := map[string]string{}
	for _, tg := range a.targets {
		back[tg] = vm.Snapshot(s).File(tg)
	}
	return r.defineVM(name, back)
}

// check verifies every invariant of every VM.
func (r *rig) check() {
	r.t.Helper()
	inChains := map[string]bool{}
	for _, v := range r.vms {
		vm := r.load(v)
		if _, err := os.Stat(filepath.Join(r.state, "vms", v.name, "journal.json")); err == nil {
			r.fatalf("%s: a journal was left behind", v.name)
		}
		if err := Verify(vm); err != nil {
			r.fatalf("Verify: %v", err)
		}
		// Metadata against the model.
		if vm.Current != v.current {
			r.fatalf("%s: metadata says current %q, want %q", v.name, vm.Current, v.current)
		}
		var names []string
		for _, s := range vm.Snapshots {
			names = append(names, s.Name)
			if s.Parent != v.parent[s.Name] {
				r.fatalf("%s: snapshot %s has parent %q in the metadata, want %q", v.name, s.Name, s.Parent, v.parent[s.Name])
			}
			if s.Parent != "" && !slices.Contains(vm.Children(s.Parent), s.Name) {
				r.fatalf("%s: %s is not among its parent's children", v.name, s.Name)
			}
			if len(s.Disks) != len(v.targets) {
				r.fatalf("%s: snapshot %s has %d disks", v.name, s.Name, len(s.Disks))
			}
		}
		sort.Strings(names)
		if !slices.Equal(names, v.snapshots()) {
			r.fatalf("%s: metadata has snapshots %v, want %v", v.name, names, v.snapshots())
		}
		if len(vm.Ancestors(vm.Current)) > len(vm.Snapshots) {
			r.fatalf("%s: loop in the snapshot tree", v.name)
		}
		for _, f := range vm.Owned {
			if _, err := os.Stat(f); err != nil {
				r.fatalf("%s: owned file %s: %v", v.name, f, err)
			}
			if slices.Contains(v.originals, f) || f == r.gold {
				r.fatalf("%s: claims to own %s, which it did not create", v.name, f)
			}
		}
		for _, f := range vm.Originals {
			if _, err := os.Stat(f); err != nil {
				r.fatalf("%s: original image %s: %v", v.name, f, err)
			}
			if !slices.Contains(v.originals, f) {
				r.fatalf("%s: claims %s as an original image, but it was defined on %v", v.name, f, v.originals)
			}
		}
		// Content of every snapshot and of the current state.
		for _, s := range vm.Snapshots {
			for _, tg := range v.targets {
				got, err := r.guestSum(s.File(tg))
				if err != nil {
					r.fatalf("%s: snapshot %s disk %s: %v", v.name, s.Name, tg, err)
				}
				if got != v.snapSum[s.Name][tg] {
					r.fatalf("%s: snapshot %s disk %s (%s) no longer reads as when it was taken", v.name, s.Name, tg, s.File(tg))
				}
			}
		}
		for _, d := range vm.Disks {
			got, err := r.guestSum(d.Active)
			if err != nil {
				r.fatalf("%s: active %s: %v", v.name, d.Target, err)
			}
			if got != hexSum(v.cur[d.Target]) {
				r.fatalf("%s: the current state of %s (%s) lost data", v.name, d.Target, d.Active)
			}
		}
		// Every file of every chain passes qemu-img check.
		for _, d := range vm.Disks {
			for _, f := range vm.trackedFiles(d.Target) {
				ch, err := ChainFiles(f)
				if err != nil {
					r.fatalf("%v", err)
				}
				for _, c := range ch {
					inChains[c] = true
				}
			}
		}
	}
	for f := range inChains {
		id, err := idOf(f)
		if err != nil {
			r.fatalf("%v", err)
		}
		if r.checked[f] == id {
			continue
		}
		if out, err := runTool("qemu-img", "check", "-q", "-f", "qcow2", f); err != nil {
			r.fatalf("qemu-img check %s: %v\n%s", f, err, out)
		}
		r.checked[f] = id
	}
	r.checkOriginals()
	// No file left that nothing needs, unless a plan said why it kept it
	// (the VM's original images included: they are the VM's files).
	ents, err := os.ReadDir(r.img)
	if err != nil {
		r.fatalf("%v", err)
	}
	for _, e := range ents {
		p := filepath.Join(r.img, e.Name())
		if inChains[p] || p == r.gold || r.extra[p] != "" {
			continue
		}
		r.fatalf("%s is left behind: no snapshot and no chain needs it, and no operation said why it kept it", p)
	}
}

// noteKept records the files a plan kept, which check then accepts, and
// checks the reasons the rig can produce: --metadata, another VM, or an
// image of the folder sitting on the file (a VM's, or one --metadata left
// behind), a running VM's own -blockdev node (the live tests); no other
// process holds a file here.
func (r *rig) noteKept(p *Plan) {
	r.t.Helper()
	for _, k := range p.Kept {
		if k.Reason == "" {
			r.fatalf("%s kept %s without a reason", p.Op, k.File)
		}
		if !strings.Contains(k.Reason, "--metadata") && !strings.HasPrefix(k.Reason, "VM ") && !strings.Contains(k.Reason, "uses it as a backing file") &&
			!strings.Contains(k.Reason, "the running VM keeps it open as its node") {
			r.violation("kept-"+k.Reason, "%s of %s kept %s: %s", p.Op, p.Snapshot, k.File, k.Reason)
		}
		r.extra[k.File] = k.Reason
	}
	for _, f := range p.Removed {
		delete(r.extra, f)
	}
}

// checkOriginals checks gold.qcow2, shared by every VM, and records the
// bytes of the VMs' original images that still exist.
func (r *rig) checkOriginals() {
	actives := map[string]bool{}
	var originals []string
	for _, v := range r.vms {
		for _, d := range r.load(v).Disks {
			actives[d.Active] = true
		}
		originals = append(originals, v.originals...)
	}
	if h := r.fileHash(r.gold); h != r.goldID {
		r.fatalf("gold.qcow2, shared by every VM, was modified")
	}
	for _, f := range originals {
		if _, err := os.Stat(f); err != nil {
			continue // removed once nothing needed it
		}
		h := r.fileHash(f)
		if actives[f] || r.stable[f] == "" {
			r.stable[f] = h
			continue
		}
		r.stable[f] = h
	}
}

func randomSeeds() []int64 {
	if s := os.Getenv("QCHAIN_RANDOM_SEEDS"); s != "" {
		var out []int64
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
			if err == nil {
				out = append(out, n)
			}
		}
		return out
	}
	return []int64{1, 2, 3, 4}
}

func randomOps() int {
	if n, err := strconv.Atoi(os.Getenv("QCHAIN_RANDOM_OPS")); err == nil && n > 0 {
		return n
	}
	return 60
}

// TestRandomSnapshotOps runs random sequences of guest writes, creates,
// deletes (every position, every merge, --children, --metadata, dry
// runs), reverts, branches and rotations on three VMs of one state
// directory (a and b on one gold image, c on one of a's snapshots) and
// checks every invariant after each step. QCHAIN_RANDOM_SEEDS and
// QCHAIN_RANDOM_OPS replay or lengthen it.
func TestRandomSnapshotOps(t *testing.T) {
	total := 0
	for _, seed := range randomSeeds() {
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			r := newRig(t, seed)
			a := r.defineVM("a", map[string]string{"vda": "gold.qcow2", "vdb": "gold.qcow2"})
			b := r.defineVM("b", map[string]string{"vda": "gold.qcow2", "vdb": "gold.qcow2"})
			r.check()
			n := randomOps()
			start := time.Now()
			for r.step = 1; r.step <= n; r.step++ {
				v := a
				switch x := r.rnd.Intn(100); {
				case x < 20:
					v = b
				case x < 32 && len(r.vms) > 2:
					v = r.vms[2]
				}
				if len(r.vms) == 2 && len(a.parent) > 0 && r.step > n/4 && r.rnd.Intn(6) == 0 {
					r.cloneVM(a, "c")
					r.ops["clone"]++
					r.check()
					continue
				}
				switch x := r.rnd.Intn(100); {
				case x < 27:
					r.guestWrite(v)
				case x < 55:
					r.create(v)
				case x < 82:
					r.deleteOne(v)
				case x < 96:
					r.revert(v)
				default:
					r.rotate(v)
				}
				r.check()
			}
			t.Logf("seed %d: %d steps in %v: %v", seed, n, time.Since(start).Round(time.Millisecond), r.ops)
			total += n
		})
	}
	t.Logf("%d random steps in all", total)
}

// TestDeleteOldestCommitsIntoOriginalImage deletes the oldest snapshot,
// whose file is the VM's original image: nothing else uses it, so a commit
// into it is allowed (it is the VM's own image), every other point in time
// reads the same, and gold.qcow2 below it never changes.
func TestDeleteOldestCommitsIntoOriginalImage(t *testing.T) {
	r := newRig(t, 0)
	a := r.defineVM("a", map[string]string{"vda": "gold.qcow2", "vdb": "gold.qcow2"})
	r.mustCreate(a, "s1")
	r.fixedWrite(a, 0x11)
	r.check()
	p, err := r.m.Delete(a.name, "s1", DeleteOptions{Merge: MergeCommit}, false)
	if err != nil {
		t.Fatal(err)
	}
	committed := false
	for _, s := range p.Steps {
		if s.Kind == StepCommit && slices.Contains(a.originals, s.Base) {
			committed = true
		}
	}
	if !committed {
		t.Errorf("delete s1 --merge=commit did not commit into the original image: %v", p.Steps)
	}
	a.forget("s1")
	r.check()
}

// TestDeleteUnderCloneLeavesNoFile deletes a middle snapshot whose file
// another VM (a clone on the next snapshot) reads only through the file
// that the delete pulls into: after the pull nothing needs the deleted
// snapshot's file, so it must go.
func TestDeleteUnderCloneLeavesNoFile(t *testing.T) {
	r := newRig(t, 0)
	a := r.defineVM("a", map[string]string{"vda": "gold.qcow2", "vdb": "gold.qcow2"})
	chainABC(r, a)
	vm := r.load(a)
	r.defineVM("c", map[string]string{"vda": vm.Snapshot("s3").File("vda"), "vdb": vm.Snapshot("s3").File("vdb")})
	r.check()
	r.refused(a, "delete s2 --merge=commit (VM c reads it)", func() error {
		_, err := r.m.Delete(a.name, "s2", DeleteOptions{Merge: MergeCommit}, false)
		return err
	})
	p, err := r.m.Delete(a.name, "s2", DeleteOptions{Merge: MergeAuto}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range p.Steps {
		r.logf("%s", s)
	}
	a.forget("s2")
	r.check()
}
