package chain

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/qchain/qchain/qcow2"
)

// crashSentinel is what the step hook panics with to stop an operation
// before a step, as a crash would.
type crashSentinel struct{ step int }

// crashCase is one operation whose every journal step is crashed at.
type crashCase struct {
	name string
	// setup builds VM a's snapshots and writes (VM b shares the gold
	// image and is left alone).
	setup func(r *rig, a *vmModel)
	// op runs the operation.
	op func(r *rig, a *vmModel) error
	// done updates the model as the finished operation does.
	done func(r *rig, a *vmModel)
	// kinds are step kinds the plan must contain.
	kinds []string
	// native: a pull or commit of the plan has nothing to copy and must
	// run without a storage daemon (the case gets none).
	native bool
	// after, when set, checks what the model does not cover, after the
	// operation finished or was recovered.
	after func(r *rig, a *vmModel)
}

// fixedWrite writes a pattern at a few clusters of each disk.
func (r *rig) fixedWrite(v *vmModel, pattern byte) {
	for i, tg := range v.targets {
		ops := []guestOp{
			{kind: "write", pattern: pattern, off: (int(pattern)%8 + i) * rCluster, length: 2 * rCluster},
			{kind: "write", pattern: pattern + 1, off: (20 + int(pattern)%16) * rCluster, length: rCluster},
		}
		args := []string{"-f", "qcow2"}
		for _, g := range ops {
			args = append(args, "-c", g.cmd())
			g.apply(v.cur[tg])
		}
		mustTool(r.t, "qemu-io", append(args, r.active(v, tg))...)
	}
	v.dirty = true
	r.logf("%s: fixed write 0x%02x", v.name, pattern)
}

func (r *rig) mustCreate(v *vmModel, name string) {
	if _, err := r.m.CreateSnapshot(v.name, name, "", false); err != nil {
		r.fatalf("create %s: %v", name, err)
	}
	v.parent[name] = v.current
	v.current = name
	v.dirty = false
	v.snapSum[name] = map[string]string{}
	for _, tg := range v.targets {
		v.snapSum[name][tg] = hexSum(v.cur[tg])
	}
	r.logf("%s: create %s", v.name, name)
}

func (r *rig) mustRevert(v *vmModel, name string) {
	if _, err := r.m.Revert(v.name, name, true); err != nil {
		r.fatalf("revert %s: %v", name, err)
	}
	r.revertModel(v, name)
}

func (r *rig) revertModel(v *vmModel, name string) {
	vm := r.load(v)
	for _, tg := range v.targets {
		b, err := guestBytes(vm.Disk(tg).Active)
		if err != nil {
			r.fatalf("%v", err)
		}
		if hexSum(b) != v.snapSum[name][tg] {
			r.fatalf("%s: after reverting to %s disk %s does not read as the snapshot", v.name, name, tg)
		}
		v.cur[tg] = b
	}
	v.current = name
	v.dirty = false
}

// chainABC builds s1 <- s2 <- s3 <- current, with writes between.
func chainABC(r *rig, a *vmModel) {
	r.mustCreate(a, "s1")
	r.fixedWrite(a, 0x11)
	r.mustCreate(a, "s2")
	r.fixedWrite(a, 0x22)
	r.mustCreate(a, "s3")
	r.fixedWrite(a, 0x33)
}

// writtenChainABC is chainABC with a write into the original images
// before s1, so that s1's file holds data to pull.
func writtenChainABC(r *rig, a *vmModel) {
	r.fixedWrite(a, 0x0f)
	chainABC(r, a)
}

// branches builds s0 <- s1 <- {s2, s3 <- current}.
func branches(r *rig, a *vmModel) {
	r.mustCreate(a, "s0")
	r.fixedWrite(a, 0x10)
	r.mustCreate(a, "s1")
	r.fixedWrite(a, 0x11)
	r.mustCreate(a, "s2")
	r.fixedWrite(a, 0x22)
	r.mustRevert(a, "s1")
	r.fixedWrite(a, 0x33)
	r.mustCreate(a, "s3")
	r.fixedWrite(a, 0x44)
}

func deleteCase(name, snap string, setup func(*rig, *vmModel), opts DeleteOptions, kinds ...string) crashCase {
	return crashCase{
		name:  name,
		setup: setup,
		op: func(r *rig, a *vmModel) error {
			_, err := r.m.Delete(a.name, snap, opts, false)
			return err
		},
		done: func(r *rig, a *vmModel) {
			if opts.Children {
				for _, s := range a.subtree(snap) {
					a.forget(s)
				}
				return
			}
			a.forget(snap)
		},
		kinds: kinds,
	}
}

func crashCases() []crashCase {
	return []crashCase{
		{
			name:  "create",
			setup: func(r *rig, a *vmModel) { r.mustCreate(a, "s1"); r.fixedWrite(a, 0x11) },
			op:    func(r *rig, a *vmModel) error { _, err := r.m.CreateSnapshot(a.name, "s2", "", false); return err },
			done: func(r *rig, a *vmModel) {
				a.parent["s2"] = a.current
				a.current = "s2"
				a.snapSum["s2"] = map[string]string{}
				for _, tg := range a.targets {
					a.snapSum["s2"][tg] = hexSum(a.cur[tg])
				}
				a.dirty = false
			},
			kinds: []string{StepCreateOverlay},
		},
		{
			name: "revert",
			setup: func(r *rig, a *vmModel) {
				r.mustCreate(a, "s1")
				r.fixedWrite(a, 0x11)
				r.mustCreate(a, "s2")
				r.fixedWrite(a, 0x22)
			},
			op:    func(r *rig, a *vmModel) error { _, err := r.m.Revert(a.name, "s1", true); return err },
			done:  func(r *rig, a *vmModel) { r.revertModel(a, "s1") },
			kinds: []string{StepCreateOverlay, StepRemove},
		},
		{
			// A bitmap recorded the disks since before s1: the revert's
			// new overlays get it back, recording.
			name: "revert-bitmaps",
			setup: func(r *rig, a *vmModel) {
				for _, tg := range a.targets {
					mustTool(r.t, "qemu-img", "bitmap", "--add", r.active(a, tg), "bk")
				}
				r.mustCreate(a, "s1")
				r.fixedWrite(a, 0x11)
				r.mustCreate(a, "s2")
				r.fixedWrite(a, 0x22)
			},
			op:   func(r *rig, a *vmModel) error { _, err := r.m.Revert(a.name, "s1", true); return err },
			done: func(r *rig, a *vmModel) { r.revertModel(a, "s1") },
			after: func(r *rig, a *vmModel) {
				for _, tg := range a.targets {
					if got := imageBitmapFlags(r.t, r.active(a, tg)); len(got) != 1 || got["bk"] != qcow2.BitmapAuto {
						r.fatalf("disk %s's new active image has the bitmaps %v, want bk recording", tg, got)
					}
				}
				if lr := r.load(a).LastRevert; lr == nil || !slices.Equal(lr.Kept, []string{"bk"}) {
					r.fatalf("LastRevert %+v, want bk kept", lr)
				}
			},
			kinds: []string{StepCreateOverlay, StepResumeBitmaps, StepRemove},
		},
		deleteCase("delete-middle-commit", "s2", chainABC, DeleteOptions{Merge: MergeCommit}, StepCommit, StepRebase, StepRemove),
		deleteCase("delete-newest-commit", "s3", chainABC, DeleteOptions{Merge: MergeCommit}, StepCommit, StepRemove),
		deleteCase("delete-middle-pull", "s2", chainABC, DeleteOptions{Merge: MergePull}, StepPull, StepRemove),
		deleteCase("delete-oldest-pull", "s1", writtenChainABC, DeleteOptions{Merge: MergePull}, StepPull),
		deleteCase("delete-branches-pull", "s1", branches, DeleteOptions{Merge: MergeAuto}, StepPull, StepRemove),
		deleteCase("delete-children", "s2", branches, DeleteOptions{Children: true}, StepRemove),
		nativeCase(deleteCase("delete-newest-empty-commit", "s2", emptyNewest, DeleteOptions{Merge: MergeAuto}, StepCommit, StepRemove)),
		nativeCase(deleteCase("delete-oldest-empty-pull", "s1", chainABC, DeleteOptions{Merge: MergePull}, StepPull)),
		nativeCase(deleteCase("delete-newest-empty-pull", "s3", emptyMiddle, DeleteOptions{Merge: MergePull}, StepPull, StepRemove)),
	}
}

// nativeCase marks a case whose merges copy nothing.
func nativeCase(c crashCase) crashCase {
	c.native = true
	return c
}

// emptyNewest builds s1 <- s2 <- current with nothing written since s2:
// deleting s2 commits an empty overlay.
func emptyNewest(r *rig, a *vmModel) {
	r.mustCreate(a, "s1")
	r.fixedWrite(a, 0x11)
	r.mustCreate(a, "s2")
}

// emptyMiddle builds s1 <- s2 <- s3 <- current with nothing written
// between s2 and s3: s3's file allocates nothing, so pulling it into the
// current image only rewrites that image's backing name.
func emptyMiddle(r *rig, a *vmModel) {
	r.mustCreate(a, "s1")
	r.fixedWrite(a, 0x11)
	r.mustCreate(a, "s2")
	r.mustCreate(a, "s3")
	r.fixedWrite(a, 0x33)
}

// crashMode says where the crash falls relative to step k.
type crashMode int

const (
	// beforeStep: step k has not run.
	beforeStep crashMode = iota
	// afterStepUnrecorded: step k ran but the journal does not say so.
	afterStepUnrecorded
	// allRecordedUnsaved: every step is recorded, the metadata not saved.
	allRecordedUnsaved
	// duringStep: a data move (pull, commit) stops at its first progress
	// report; its daemon quits, so a commit leaves its base half written.
	duringStep
)

func (m crashMode) String() string {
	return [...]string{"before", "after-unrecorded", "all-recorded-unsaved", "during"}[m]
}

func setStepHook(t *testing.T, h func(op string, index int, s Step)) {
	StepHook = h
	t.Cleanup(func() { StepHook = nil })
}

func (r *rig) journalPath(v *vmModel) string {
	return filepath.Join(r.state, "vms", v.name, "journal.json")
}

func (r *rig) editJournal(v *vmModel, edit func(j *Journal)) {
	b, err := os.ReadFile(r.journalPath(v))
	if err != nil {
		r.fatalf("reading the journal: %v", err)
	}
	j := &Journal{}
	if err := json.Unmarshal(b, j); err != nil {
		r.fatalf("%v", err)
	}
	edit(j)
	b, _ = json.MarshalIndent(j, "", "  ")
	if err := os.WriteFile(r.journalPath(v), b, 0o600); err != nil {
		r.fatalf("%v", err)
	}
}

// crashRig builds a case's state directory once and checks it; restore
// puts the same files (same paths, same bytes) and model back for each
// crash run, faster than building it again.
type crashRig struct {
	r     *rig
	files map[string][]byte
	model []vmModel
}

func newCrashRig(t *testing.T, c crashCase) *crashRig {
	r := newRig(t, 0)
	a := r.defineVM("a", map[string]string{"vda": "gold.qcow2", "vdb": "gold.qcow2"})
	r.defineVM("b", map[string]string{"vda": "gold.qcow2", "vdb": "gold.qcow2"})
	c.setup(r, a)
	r.check()
	cr := &crashRig{r: r, files: map[string][]byte{}}
	for _, dir := range []string{r.img, r.state} {
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			cr.files[p] = b
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range r.vms {
		cr.model = append(cr.model, v.clone())
	}
	return cr
}

// restore returns the rig to the state newCrashRig built.
func (cr *crashRig) restore(t *testing.T) (*rig, *vmModel) {
	r := cr.r
	for _, dir := range []string{r.img, r.state} {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	for p, b := range cr.files {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r.t = t
	r.vms = nil
	for _, v := range cr.model {
		v := v.clone()
		r.vms = append(r.vms, &v)
	}
	r.log = nil
	r.extra = map[string]string{}
	r.checkOriginals()
	return r, r.vms[0]
}

func (v *vmModel) clone() vmModel {
	c := *v
	c.originals = slices.Clone(v.originals)
	c.deleted = slices.Clone(v.deleted)
	c.cur = map[string][]byte{}
	for k, b := range v.cur {
		c.cur[k] = slices.Clone(b)
	}
	c.parent = maps.Clone(v.parent)
	c.snapSum = map[string]map[string]string{}
	for k, m := range v.snapSum {
		c.snapSum[k] = maps.Clone(m)
	}
	return c
}

// runCrashing runs op with the hook panicking at step stopAt, and returns
// whether it stopped there.
func runCrashing(t *testing.T, op func() error, stopAt int) (stopped bool, err error) {
	setStepHook(t, func(_ string, i int, _ Step) {
		if i == stopAt {
			panic(crashSentinel{i})
		}
	})
	defer func() {
		if p := recover(); p != nil {
			if _, ok := p.(crashSentinel); !ok {
				panic(p)
			}
			stopped = true
		}
		StepHook = nil
	}()
	return false, op()
}

// refusesUnfinished checks that every other operation refuses the VM with
// ErrUnfinished and changes nothing.
func (r *rig) refusesUnfinished(v *vmModel) {
	snap := v.snapshots()[0]
	before := dirState(r.t, r.img, r.state)
	for what, op := range map[string]func() error{
		"create":         func() error { _, err := r.m.CreateSnapshot(v.name, "other", "", false); return err },
		"delete":         func() error { _, err := r.m.Delete(v.name, snap, DeleteOptions{}, false); return err },
		"delete dry run": func() error { _, err := r.m.Delete(v.name, snap, DeleteOptions{}, true); return err },
		"revert":         func() error { _, err := r.m.Revert(v.name, snap, true); return err },
		"rotate":         func() error { _, err := r.m.Rotate(v.name, RotateOptions{}); return err },
	} {
		if err := op(); !errors.Is(err, ErrUnfinished) {
			r.fatalf("%s on a VM with an unfinished journal: got %v, want ErrUnfinished", what, err)
		}
	}
	if d := diffState(before, dirState(r.t, r.img, r.state)); d != "" {
		r.fatalf("refused operations changed files: %s", d)
	}
}

// TestCrashEveryStep stops create, revert and delete (commit and pull
// plans, oldest, middle, newest, branches, --children) at every journal
// step, in three ways: before the step runs, after it ran but before the
// journal recorded it, and after every step was recorded but before the
// metadata was saved. Each time every other operation must refuse with
// ErrUnfinished, and Recover must finish the operation with every
// snapshot, the current state, Verify, qemu-img check and the files left
// as after an uninterrupted run.
func TestCrashEveryStep(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	runs := 0
	start := time.Now()
	for _, c := range crashCases() {
		t.Run(c.name, func(t *testing.T) {
			// The uninterrupted run: count the steps, check the kinds.
			cr := newCrashRig(t, c)
			if c.native {
				// A block job would fail: the merge must run natively, also
				// when Recover runs it again.
				cr.r.m.StorageDaemon = filepath.Join(t.TempDir(), "no-qemu-storage-daemon")
			}
			r, a := cr.restore(t)
			var steps []Step
			setStepHook(t, func(_ string, _ int, s Step) { steps = append(steps, s) })
			if err := c.op(r, a); err != nil {
				r.fatalf("%s: %v", c.name, err)
			}
			StepHook = nil
			c.done(r, a)
			r.check()
			if c.after != nil {
				c.after(r, a)
			}
			for _, k := range c.kinds {
				found := false
				for _, s := range steps {
					found = found || s.Kind == k
				}
				if !found {
					r.fatalf("%s: the plan has no %s step: %v", c.name, k, steps)
				}
			}
			if c.native && !slices.ContainsFunc(steps, func(s Step) bool { return (s.Kind == StepPull || s.Kind == StepCommit) && s.Bytes == 0 }) {
				r.fatalf("%s: no merge of the plan has nothing to copy: %v", c.name, steps)
			}
			n := len(steps)
			for _, mode := range []crashMode{beforeStep, afterStepUnrecorded, allRecordedUnsaved, duringStep} {
				for k := range n {
					if mode == allRecordedUnsaved && k > 0 {
						break
					}
					if mode == duringStep && (steps[k].Kind != StepPull && steps[k].Kind != StepCommit || steps[k].Bytes == 0) {
						continue // no data moves: nothing to stop half way
					}
					t.Run(fmt.Sprintf("%s-step%d", mode, k+1), func(t *testing.T) {
						r, a := cr.restore(t)
						r.logf("crash %s step %d of %d (%s)", mode, k+1, n, steps[k])
						switch {
						case mode == duringStep:
							reached := false
							setStepHook(t, func(_ string, i int, _ Step) { reached = reached || i == k })
							r.m.Progress = func(s Step, cur, total int64) {
								if reached {
									panic(crashSentinel{k})
								}
							}
							stopped := false
							err := func() (err error) {
								defer func() {
									if p := recover(); p != nil {
										if _, ok := p.(crashSentinel); !ok {
											panic(p)
										}
										stopped = true
									}
								}()
								return c.op(r, a)
							}()
							r.m.Progress = nil
							StepHook = nil
							if !stopped {
								r.fatalf("step %d reported no progress: %v", k+1, err)
							}
						case mode == beforeStep || (mode == afterStepUnrecorded && k+1 < n):
							stop := k
							if mode == afterStepUnrecorded {
								stop = k + 1
							}
							stopped, err := runCrashing(t, func() error { return c.op(r, a) }, stop)
							if !stopped {
								r.fatalf("the operation did not reach step %d: %v", stop+1, err)
							}
							if mode == afterStepUnrecorded {
								r.editJournal(a, func(j *Journal) { j.Steps[k].Done = false })
							}
						default:
							// The last step ran (and with allRecordedUnsaved
							// was recorded) but the metadata is the old one.
							vmJSON := filepath.Join(r.state, "vms", a.name, "vm.json")
							old, err := os.ReadFile(vmJSON)
							if err != nil {
								t.Fatal(err)
							}
							var last []byte
							setStepHook(t, func(_ string, i int, _ Step) {
								if i == n-1 {
									last, _ = os.ReadFile(r.journalPath(a))
								}
							})
							if err := c.op(r, a); err != nil {
								r.fatalf("%v", err)
							}
							StepHook = nil
							if err := os.WriteFile(vmJSON, old, 0o600); err != nil {
								t.Fatal(err)
							}
							if err := os.WriteFile(r.journalPath(a), last, 0o600); err != nil {
								t.Fatal(err)
							}
							r.editJournal(a, func(j *Journal) { j.Steps[n-1].Done = mode == allRecordedUnsaved })
						}
						r.refusesUnfinished(a)
						j, err := r.m.Recover(a.name)
						if err != nil {
							r.fatalf("recover after a crash %s step %d (%s): %v", mode, k+1, steps[k], err)
						}
						if j == nil {
							r.fatalf("recover found no journal")
						}
						c.done(r, a)
						r.check()
						if c.after != nil {
							c.after(r, a)
						}
						if j, err := r.m.Recover(a.name); err != nil || j != nil {
							r.fatalf("second recover: %v, %v", j, err)
						}
						runs++
					})
				}
			}
		})
	}
	t.Logf("%d crashes recovered in %v", runs, time.Since(start).Round(time.Millisecond))
}
