package chain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/qchain/qchain/qcow2"
)

// Merge directions for Delete.
const (
	MergeAuto   = "auto"
	MergeCommit = "commit"
	MergePull   = "pull"
)

// DeleteOptions choose how Delete removes a snapshot.
type DeleteOptions struct {
	// Merge is auto (the direction that copies fewer bytes), commit or pull.
	Merge string
	// Children deletes the snapshot's whole subtree and its files.
	Children bool
	// MetadataOnly forgets the snapshot and touches no file.
	MetadataOnly bool
	// ForceExports commits and pulls on the running VM's disks although
	// a block export can (or may) write to them. By default Delete
	// refuses that before it starts: QEMU loses writes an export's new
	// clients make while a job changes the chain (qmp.ExportError).
	ForceExports bool
}

// Plan is what an operation will do: its steps and the metadata after.
type Plan struct {
	VM       string `json:"vm"`
	Op       string `json:"op"`
	Snapshot string `json:"snapshot"`
	Steps    []Step `json:"steps"`
	// Before and After draw each disk's active chain, `base <- a <- b*`.
	Before map[string]string `json:"before"`
	After  map[string]string `json:"after"`
	// Changed lists the files the plan writes, creates or removes.
	Changed []string `json:"changed"`
	// Bytes is the total data the plan copies.
	Bytes uint64 `json:"bytes"`
	// Notes explain the choices (merge direction, refusals avoided).
	Notes []string `json:"notes,omitempty"`
	// Removed lists the VM's files the plan removes (its remove steps):
	// overlays, and original images nothing needs any more.
	Removed []string `json:"removed,omitempty"`
	// Kept lists the VM's files no chain of the VM needs after the plan
	// and that it does not remove, each with the reason.
	Kept  []KeptFile `json:"kept,omitempty"`
	Final *VM        `json:"-"`
	// why says why a file may go, for its remove step.
	why map[string]string
}

// hint records why file may be removed, should planUnused remove it.
func (p *Plan) hint(file, why string) {
	if p.why == nil {
		p.why = map[string]string{}
	}
	p.why[file] = why
}

// PlanDelete computes how to delete snapshot name of vm without changing
// what any other snapshot or the current state reads, for a VM that is not
// running. It reads headers and allocation only; nothing is written.
func (m *Manager) PlanDelete(vm *VM, name string, opts DeleteOptions) (*Plan, error) {
	return m.planDelete(vm, name, opts, nil)
}

// planDelete is PlanDelete; live, when set, is the running VM's QEMU,
// which holds the files of its current chains.
func (m *Manager) planDelete(vm *VM, name string, opts DeleteOptions, live *Live) (*Plan, error) {
	s := vm.Snapshot(name)
	if s == nil {
		return nil, fmt.Errorf("VM %s has no snapshot %s", vm.Name, name)
	}
	if opts.Merge == "" {
		opts.Merge = MergeAuto
	}
	if opts.Merge != MergeAuto && opts.Merge != MergeCommit && opts.Merge != MergePull {
		return nil, fmt.Errorf("--merge must be auto, commit or pull, not %q", opts.Merge)
	}
	p := &Plan{VM: vm.Name, Op: "delete", Snapshot: name, Before: map[string]string{}, After: map[string]string{}}
	final := clone(vm)
	if opts.Children {
		for _, n := range vm.Subtree(name) {
			if vm.Snapshot(n).Internal {
				return nil, fmt.Errorf("VM %s: the subtree of %s holds %s %s: delete it first", vm.Name, name, internalKind(vm.Snapshot(n)), n)
			}
		}
	}
	switch {
	case opts.MetadataOnly:
		p.Notes = append(p.Notes, "metadata only: the snapshot is forgotten, every file stays as it is")
		if s.Internal {
			p.Notes = append(p.Notes, internalKind(s)+" "+name+" stays inside its images (qchain image-snapshot -d removes it)")
		}
	case s.Internal:
		// Inside the images: no overlay to merge, only the tag to delete.
		st := Step{Kind: StepInternalDelete, Tag: name, Why: internalKind(s) + " " + name + " is inside these images"}
		for _, d := range s.Disks {
			st.Targets = append(st.Targets, d.Target)
			st.Files = append(st.Files, d.File)
		}
		if live != nil {
			for _, f := range st.Files {
				if d, idx, err := live.diskFor(m.ctx(), f); err == nil && d != nil && idx > 0 {
					return nil, fmt.Errorf("VM %s: %s %s lives in %s, which the running VM reads as a read-only backing file: stop the VM to delete it", vm.Name, internalKind(s), name, f)
				}
			}
		}
		p.Steps = append(p.Steps, st)
	case opts.Children:
		if err := m.planSubtree(vm, p, name); err != nil {
			return nil, err
		}
	default:
		for _, d := range vm.Disks {
			if err := m.planMerge(vm, final, p, s, d.Target, opts.Merge); err != nil {
				return nil, err
			}
		}
	}
	removeSnapshots(final, name, opts.Children)
	if live != nil && mergesIntoActive(vm, p.Steps) {
		// The removed layers' bitmaps go into the active image, not into
		// the layer that takes their data: the snapshots above that
		// layer no longer have their writes in their own chain's bitmaps,
		// so a revert to them must not keep any.
		for _, x := range final.Snapshots {
			for i := range x.Disks {
				x.Disks[i].Bitmaps = nil
			}
		}
	}
	keepAll := ""
	if opts.MetadataOnly {
		keepAll = "the snapshot was forgotten with --metadata, which touches no file: the file is no longer the VM's"
	}
	if err := m.planUnused(vm, final, p, live, keepAll); err != nil {
		return nil, err
	}
	planMemoryFiles(vm, final, p, keepAll)
	p.Final = final
	for _, st := range p.Steps {
		p.Bytes += st.Bytes
		f := st.File
		if st.Kind == StepCommit {
			f = st.Base
		}
		if f != "" && !slices.Contains(p.Changed, f) {
			p.Changed = append(p.Changed, f)
		}
	}
	if err := drawChains(vm, final, p); err != nil {
		return nil, err
	}
	return p, nil
}

// removeSnapshots drops name (and with children its subtree) from the
// metadata, reparenting children to name's parent.
func removeSnapshots(vm *VM, name string, subtree bool) {
	s := vm.Snapshot(name)
	gone := []string{name}
	if subtree {
		gone = vm.Subtree(name)
	}
	for _, c := range vm.Snapshots {
		if c.Parent == name && !subtree {
			c.Parent = s.Parent
		}
	}
	if slices.Contains(gone, vm.Current) {
		vm.Current = s.Parent
	}
	vm.Snapshots = slices.DeleteFunc(vm.Snapshots, func(x *Snapshot) bool { return slices.Contains(gone, x.Name) })
}

// trackedParent returns the nearest file below f in its chain that the
// metadata names as a snapshot file ("" when none).
func trackedParent(f string, snapFiles []string) (string, error) {
	ch, err := chainOf(f)
	if err != nil {
		return "", err
	}
	for _, g := range ch[1:] {
		for _, sf := range snapFiles {
			if sameFile(g, sf) {
				return sf, nil
			}
		}
	}
	return "", nil
}

// usedElsewhere names another VM of the state directory that reads file
// through any of its chains ("" when none does).
func (m *Manager) usedElsewhere(vm *VM, file string) (string, error) {
	names, err := m.Store.List()
	if err != nil {
		return "", err
	}
	for _, n := range names {
		if n == vm.Name {
			continue
		}
		other, err := m.Store.Load(n)
		if err != nil {
			continue
		}
		for _, d := range other.Disks {
			for _, t := range other.trackedFiles(d.Target) {
				if ch, err := chainOf(t); err == nil && inChain(ch, file) >= 0 {
					return n, nil
				}
			}
		}
	}
	return "", nil
}

// planMerge adds the steps that delete snapshot s's point in time from one
// disk, by commit or by pull.
func (m *Manager) planMerge(vm, final *VM, p *Plan, s *Snapshot, target, merge string) error {
	fs := s.File(target)
	var snapFiles []string
	for _, x := range vm.Snapshots {
		snapFiles = append(snapFiles, x.File(target))
	}
	// The files that sit directly on fs (no other snapshot file between):
	// the children's files and, when s is current, the active image.
	var deps []string
	for _, t := range vm.trackedFiles(target) {
		if t == fs {
			continue
		}
		tp, err := trackedParent(t, snapFiles)
		if err != nil {
			return err
		}
		if tp == fs && !slices.Contains(deps, t) {
			deps = append(deps, t)
		}
	}
	other, err := m.usedElsewhere(vm, fs)
	if err != nil {
		return err
	}
	if len(deps) == 0 {
		p.hint(fs, "nothing depends on it any more")
		return nil
	}
	fsBacking, _, fsFmt, err := backingOf(fs)
	if err != nil {
		return err
	}
	// Measure both directions with the reader.
	commitOK, why := true, ""
	switch {
	case len(deps) > 1:
		commitOK, why = false, fmt.Sprintf("%d images depend on %s (branches)", len(deps), filepath.Base(fs))
	case other != "":
		commitOK, why = false, fmt.Sprintf("VM %s also uses %s", other, filepath.Base(fs))
	}
	var commitBytes, pullBytes uint64
	depPull := map[string]uint64{} // what a pull copies into each dependant
	for _, dep := range deps {
		db, _, _, err := backingOf(dep)
		if err != nil {
			return err
		}
		if !sameFile(db, fs) {
			commitOK, why = false, fmt.Sprintf("%s does not sit directly on %s", filepath.Base(dep), filepath.Base(fs))
		}
		c, err := qcow2.OpenChain(dep, qcow2.ChainOptions{})
		if err != nil {
			return err
		}
		stats, err := c.Stats()
		var files []string
		for _, l := range c.Layers {
			abs, _ := filepath.Abs(l.Filename())
			files = append(files, abs)
		}
		c.Close()
		if err != nil {
			return err
		}
		commitBytes += stats[0].AllocatedBytes
		idx := inChain(files, fs)
		for d := 1; d <= idx; d++ {
			depPull[dep] += stats[d].VisibleBytes
		}
		pullBytes += depPull[dep]
	}
	useCommit := false
	switch merge {
	case MergeCommit:
		if !commitOK {
			return fmt.Errorf("VM %s disk %s: cannot delete snapshot %s by commit: %s; committing would change what they read (use --merge=pull or auto)", vm.Name, target, s.Name, why)
		}
		useCommit = true
	case MergeAuto:
		useCommit = commitOK && commitBytes <= pullBytes
	}
	// No merge may lose internal snapshots: a commit removes the image
	// above fs, a pull takes fs out of every chain, and a pull into an
	// image changes the backing file its internal snapshots read through.
	// auto takes the direction that keeps them, if one does.
	var commitLoss error
	if commitOK {
		commitLoss = mergeLoses(vm, target, s.Name, "commit", deps[0])
	}
	pullLoss := mergeLoses(vm, target, s.Name, "pull", fs)
	for _, dep := range deps {
		if pullLoss == nil {
			pullLoss = pullChangesTags(vm, target, s.Name, dep, fs)
		}
	}
	switch {
	case useCommit && commitLoss != nil && (merge != MergeAuto || pullLoss != nil):
		return commitLoss
	case useCommit && commitLoss != nil:
		useCommit = false
		p.Notes = append(p.Notes, fmt.Sprintf("disk %s: pull, not commit: %s holds internal snapshots", target, filepath.Base(deps[0])))
	case !useCommit && pullLoss != nil && (merge != MergeAuto || !commitOK || commitLoss != nil):
		return pullLoss
	case !useCommit && pullLoss != nil:
		useCommit = true
		p.Notes = append(p.Notes, fmt.Sprintf("disk %s: commit, not pull: %s holds internal snapshots", target, filepath.Base(fs)))
	}
	if useCommit {
		dep := deps[0]
		p.Notes = append(p.Notes, fmt.Sprintf("disk %s: commit %s into %s copies %d bytes, pull would copy %d", target, filepath.Base(dep), filepath.Base(fs), commitBytes, pullBytes))
		p.Steps = append(p.Steps, Step{Kind: StepCommit, Target: target, Top: dep, Base: fs, Bytes: commitBytes,
			Why: filepath.Base(fs) + " is used by " + filepath.Base(dep) + " alone, and then holds its point in time"})
		// Images sitting on dep now sit on fs, which reads the same.
		for _, t := range vm.trackedFiles(target) {
			if b, _, _, err := backingOf(t); err == nil && sameFile(b, dep) {
				p.Steps = append(p.Steps, Step{Kind: StepRebase, Target: target, File: t, Backing: relName(t, fs), BackingFmt: "qcow2",
					Why: "its backing file " + filepath.Base(dep) + " was committed into " + filepath.Base(fs)})
			}
		}
		p.hint(dep, "committed into "+filepath.Base(fs))
		for _, x := range final.Snapshots {
			if x.File(target) == dep {
				x.setFile(target, fs)
			}
		}
		if d := final.Disk(target); d.Active == dep {
			d.Active = fs
		}
		return nil
	}
	reason := ""
	if !commitOK {
		reason = " (commit impossible: " + why + ")"
	}
	p.Notes = append(p.Notes, fmt.Sprintf("disk %s: pull %s into %d image(s) copies %d bytes%s", target, filepath.Base(fs), len(deps), pullBytes, reason))
	for _, dep := range deps {
		st := Step{Kind: StepPull, Target: target, File: dep, Base: fsBacking, BackingFmt: fsFmt, Why: "keep what " + filepath.Base(dep) + " reads without " + filepath.Base(fs)}
		if fsBacking != "" {
			st.Backing = relName(dep, fsBacking)
		}
		st.Bytes = depPull[dep]
		p.Steps = append(p.Steps, st)
	}
	p.hint(fs, "pulled into every image that used it")
	return nil
}

// planSubtree deletes snapshot name, every snapshot below it and their
// files (planUnused removes those nothing else needs). The current state
// must not descend from them.
func (m *Manager) planSubtree(vm *VM, p *Plan, name string) error {
	sub := vm.Subtree(name)
	if slices.Contains(sub, vm.Current) {
		return fmt.Errorf("VM %s: the current state descends from snapshot %s; revert to a snapshot outside its subtree before deleting it with --children", vm.Name, name)
	}
	for _, d := range vm.Disks {
		for _, x := range sub {
			p.hint(vm.Snapshot(x).File(d.Target), "file of snapshot "+x+", deleted with its subtree")
		}
	}
	return nil
}

// drawChains fills Before (from the files) and After (simulating the steps
// on the backing links) for each disk's active image.
func drawChains(vm, final *VM, p *Plan) error {
	for _, d := range vm.Disks {
		ch, err := chainOf(d.Active)
		if err != nil {
			return err
		}
		p.Before[d.Target] = Tree(ch, d.Active)
		// Backing links after the steps.
		link := map[string]string{}
		var known []string
		for _, t := range append(vm.trackedFiles(d.Target), ch...) {
			c, err := chainOf(t)
			if err != nil {
				continue
			}
			for i := 0; i+1 < len(c); i++ {
				link[c[i]] = c[i+1]
			}
			known = append(known, c...)
		}
		removed := map[string]bool{}
		for _, s := range p.Steps {
			if s.Kind == StepRemove {
				removed[s.File] = true // whichever disk's file it was
			}
			if s.Target != d.Target {
				continue
			}
			switch s.Kind {
			case StepPull:
				link[s.File] = s.Base
			case StepRebase:
				link[s.File] = qcow2.BackingPath(s.File, s.Backing)
				if abs, err := filepath.Abs(link[s.File]); err == nil {
					link[s.File] = abs
				}
			case StepRemove:
				removed[s.File] = true
			}
		}
		active := final.Disk(d.Target).Active
		var after []string
		for f := active; f != "" && len(after) <= qcow2.MaxChainDepth; f = link[f] {
			if removed[f] {
				return fmt.Errorf("plan for disk %s removes %s, which the result still needs", d.Target, f)
			}
			after = append(after, f)
		}
		p.After[d.Target] = Tree(after, active)
	}
	return nil
}

// Delete removes snapshot name as PlanDelete plans it. With dryRun it only
// returns the plan.
func (m *Manager) Delete(vmName, name string, opts DeleteOptions, dryRun bool) (*Plan, error) {
	l, err := m.Store.Lock(vmName, false)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	if err := Verify(l.VM); err != nil {
		return nil, err
	}
	ex, done, err := m.liveExecutor(l.VM)
	if err != nil {
		return nil, err
	}
	defer done()
	p, err := m.planDelete(l.VM, name, opts, ex.Live)
	if err != nil || dryRun {
		return p, err
	}
	if ex.Live != nil && !opts.ForceExports {
		if err := ex.Live.checkExports(m.ctx(), l.VM, name, p.Steps); err != nil {
			return nil, err
		}
	}
	j := &Journal{Op: "delete", Snapshot: name, Started: m.now(), Steps: p.Steps, Final: p.Final, Live: ex.Live != nil}
	return p, l.run(j, ex, m.BeforeStep)
}

// planMemoryFiles removes the memory state files of the checkpoints the
// plan deletes that no snapshot left needs (or, with keepAll, names them
// as kept).
func planMemoryFiles(vm, final *VM, p *Plan, keepAll string) {
	needed := map[string]bool{}
	for _, s := range final.Snapshots {
		if s.Memory != nil {
			needed[s.Memory.File] = true
		}
	}
	for _, s := range vm.Snapshots {
		if s.Memory == nil || s.Internal || final.Snapshot(s.Name) != nil || needed[s.Memory.File] {
			continue
		}
		if keepAll != "" {
			p.Kept = append(p.Kept, KeptFile{File: s.Memory.File, Reason: keepAll})
			continue
		}
		if _, err := os.Stat(s.Memory.File); errors.Is(err, os.ErrNotExist) {
			continue
		}
		p.Steps = append(p.Steps, Step{Kind: StepRemove, File: s.Memory.File, Why: "the memory state of checkpoint " + s.Name + ", which no snapshot needs any more"})
		p.Removed = append(p.Removed, s.Memory.File)
		if n := s.Memory.NVRAM; n != "" {
			if _, err := os.Stat(n); err == nil {
				p.Steps = append(p.Steps, Step{Kind: StepRemove, File: n, Why: "the NVRAM copy of checkpoint " + s.Name})
				p.Removed = append(p.Removed, n)
			}
		}
	}
}

// mergesIntoActive reports whether a live delete's steps merge layers
// other than through an active commit: a pull, or a commit whose top is
// not the disk's active image. Live, such a merge moves the removed
// layers' bitmaps into the active image (see bitmaps.go).
func mergesIntoActive(vm *VM, steps []Step) bool {
	for _, st := range steps {
		switch st.Kind {
		case StepPull:
			return true
		case StepCommit:
			if d := vm.Disk(st.Target); d == nil || !same(st.Top, d.Active) {
				return true
			}
		}
	}
	return false
}
