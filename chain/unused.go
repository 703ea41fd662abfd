package chain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qchain/qchain/qcow2"
)

// KeptFile is a file of the VM that no chain of the VM needs and that
// qchain did not remove, with the reason.
type KeptFile struct {
	File   string `json:"file"`
	Reason string `json:"reason"`
}

// links is the backing file of each file as a plan leaves it: the steps'
// rewrites over what the headers say now.
type links struct {
	after map[string]string // file -> its backing file after the plan ("" none)
	memo  map[string][]string
}

// linksAfter reads the backing rewrites of the steps: a pull's file then
// sits on the pull's base, a rebase's on its new backing file. A commit
// changes no link (the images above its top are rebased by steps of
// their own).
func linksAfter(steps []Step) *links {
	l := &links{after: map[string]string{}, memo: map[string][]string{}}
	for _, s := range steps {
		switch s.Kind {
		case StepPull:
			l.after[s.File] = s.Base
		case StepRebase:
			b := ""
			if s.Backing != "" {
				b, _ = filepath.Abs(qcow2.BackingPath(s.File, s.Backing))
			}
			l.after[s.File] = b
		}
	}
	return l
}

// chain returns file's chain after the plan, file first (absolute paths);
// a file that cannot be read ends it.
func (l *links) chain(file string) []string {
	if c, ok := l.memo[file]; ok {
		return c
	}
	var out []string
	for f := file; f != "" && len(out) <= qcow2.MaxChainDepth && !slices.Contains(out, f); {
		out = append(out, f)
		if b, ok := l.after[f]; ok {
			f = b
			continue
		}
		b, _, _, err := backingOf(f)
		if err != nil {
			break
		}
		f = b
	}
	l.memo[file] = out
	return out
}

// uses reports whether file's chain after the plan contains target.
func (l *links) uses(file, target string) bool {
	return inChain(l.chain(file)[1:], target) >= 0
}

// planUnused settles the VM's files (its overlays and original images)
// that the plan leaves needed by no chain of the VM: each is removed by a
// step added to p, or named in p.Kept with the reason it stays. A file
// stays while another VM of the state directory reads it, while an image
// in its folder (qcow2.WhoUses) has it in its chain after the plan (one
// that is not itself removed), or while a process holds QEMU's locks of it
// (qcow2.InUse); with keepAll every such file stays for that reason and
// is no longer the VM's (qchain will not remove it later).
// live, when set, is the running VM's QEMU: it holds the files of the
// VM's current chains, and releases those the plan's jobs drop unless
// they are nodes of their own (a -blockdev node the user made stays open
// until it is deleted). Removed files leave final's lists of the VM's
// files.
func (m *Manager) planUnused(vm, final *VM, p *Plan, live *Live, keepAll string) error {
	l := linksAfter(p.Steps)
	needed := map[string]bool{}
	for _, d := range final.Disks {
		for _, t := range final.trackedFiles(d.Target) {
			for _, f := range l.chain(t) {
				needed[f] = true
			}
		}
	}
	var candidates []string
	for _, f := range vm.files() {
		if needed[f] || inChainAny(needed, f) {
			continue
		}
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			final.disown(f) // gone already (by hand, or a step ran before)
			continue
		} else if err != nil {
			return err
		}
		candidates = append(candidates, f)
	}
	if len(candidates) == 0 {
		return nil
	}
	keep := func(f, why string) {
		p.Kept = append(p.Kept, KeptFile{File: f, Reason: why})
	}
	if keepAll != "" {
		for _, f := range candidates {
			keep(f, keepAll)
			final.disown(f)
		}
		return nil
	}
	otherVM, err := m.otherVMChains(vm, l)
	if err != nil {
		return err
	}
	current := map[string]bool{} // the running VM's files now
	if live != nil {
		for _, d := range vm.Disks {
			ch, err := chainOf(d.Active)
			if err != nil {
				return err
			}
			for _, f := range ch {
				current[f] = true
			}
		}
	}
	remove := map[string]bool{}
	for _, f := range candidates {
		if n := otherVM(f); n != "" {
			keep(f, "VM "+n+" uses it")
			continue
		}
		if live != nil {
			node, err := live.keptNode(m.ctx(), f)
			if err != nil {
				return err
			}
			if node != "" {
				keep(f, "the running VM keeps it open as its node "+node+" (a -blockdev node stays until it is deleted)")
				continue
			}
		}
		if live == nil || !current[f] && !inChainAny(current, f) {
			busy, err := qcow2.InUse(f)
			if err != nil {
				return err
			}
			if busy {
				keep(f, "a process has it open (it holds QEMU's lock of the file)")
				continue
			}
		}
		remove[f] = true
	}
	// Images of the folder that sit on a file to remove: a file to remove
	// among them goes too, any other keeps it.
	users := map[string][]string{}
	for _, f := range candidates {
		if !remove[f] {
			continue
		}
		err := qcow2.WhoUses(f, []string{filepath.Dir(f)}, func(d qcow2.Dependant) error {
			img, err := filepath.Abs(d.Image)
			if err != nil {
				return err
			}
			if !sameFile(img, f) && l.uses(img, f) {
				users[f] = append(users[f], img)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for changed := true; changed; {
		changed = false
		for _, f := range candidates {
			if !remove[f] {
				continue
			}
			for _, u := range users[f] {
				if remove[u] || inChainAny(remove, u) {
					continue
				}
				delete(remove, f)
				changed = true
				why := fmt.Sprintf("%s uses it as a backing file", u)
				if slices.Contains(candidates, u) {
					why += ", and stays"
				}
				keep(f, why)
				break
			}
		}
	}
	for _, f := range candidates {
		if !remove[f] {
			continue
		}
		why := "nothing needs it any more"
		if w := p.why[f]; w != "" {
			why = w
		}
		if vm.isOriginal(f) {
			why = "the VM's original image: " + why
		}
		p.Steps = append(p.Steps, Step{Kind: StepRemove, Target: vm.targetOf(f), File: f, Why: why})
		p.Removed = append(p.Removed, f)
		final.disown(f)
	}
	return nil
}

// inChainAny reports whether file is one of the set's files by identity
// (the set's names may spell it differently).
func inChainAny(set map[string]bool, file string) bool {
	for f := range set {
		if sameFile(f, file) {
			return true
		}
	}
	return false
}

// otherVMChains returns a function that names another VM of the state
// directory whose chains (after the plan) hold a file, or "".
func (m *Manager) otherVMChains(vm *VM, l *links) (func(string) string, error) {
	names, err := m.Store.List()
	if err != nil {
		return nil, err
	}
	var others []*VM
	for _, n := range names {
		if n == vm.Name {
			continue
		}
		o, err := m.Store.Load(n)
		if err != nil {
			continue
		}
		others = append(others, o)
	}
	return func(file string) string {
		for _, o := range others {
			for _, d := range o.Disks {
				for _, t := range o.trackedFiles(d.Target) {
					if inChain(l.chain(t), file) >= 0 {
						return o.Name
					}
				}
			}
		}
		return ""
	}, nil
}

// targetOf returns the disk whose chains hold file ("" if none does).
func (vm *VM) targetOf(file string) string {
	for _, d := range vm.Disks {
		if vm.isOriginal(file) && d.Active == file {
			return d.Target
		}
		for _, t := range vm.trackedFiles(d.Target) {
			if ch, err := chainOf(t); err == nil && inChain(ch, file) >= 0 {
				return d.Target
			}
		}
	}
	return ""
}

// UnusedFiles lists the VM's files (its overlays and original images)
// that no chain of the VM needs now, with the reason each is still there:
// the same reasons a snapshot operation keeps a file for, or, when none
// holds, that the next snapshot operation of the VM removes it.
func (m *Manager) UnusedFiles(vm *VM) ([]KeptFile, error) {
	p := &Plan{}
	if err := m.planUnused(vm, clone(vm), p, nil, ""); err != nil {
		return nil, err
	}
	out := p.Kept
	for _, f := range p.Removed {
		out = append(out, KeptFile{File: f, Reason: "nothing needs it: the next snapshot operation of the VM removes it"})
	}
	return out, nil
}

// keptNode returns the name of the running VM's node of file when the
// user named it (a -blockdev node), which QEMU keeps open after a job
// drops it from a disk's chain; "" for the nodes QEMU named itself (-drive)
// or qchain added, which go with the chain.
func (l *Live) keptNode(ctx context.Context, file string) (string, error) {
	d, idx, err := l.diskFor(ctx, file)
	if err != nil || d == nil || idx < 0 {
		return "", err
	}
	node := d.Chain[idx].NodeName
	if node == "" || strings.HasPrefix(node, "#") || strings.HasPrefix(node, "qchain-") {
		return "", nil
	}
	return node, nil
}
