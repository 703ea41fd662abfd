package chain

import (
	"fmt"
)

// Verify compares the metadata with the chains the files show: every
// snapshot file exists, a parent's file is in its children's chains, and
// the snapshot the current state descends from is in every active chain.
// A mismatch (a file changed behind qchain's back) is an error.
func Verify(vm *VM) error {
	for _, d := range vm.Disks {
		active, err := chainOf(d.Active)
		if err != nil {
			return fmt.Errorf("VM %s disk %s: active image: %w", vm.Name, d.Target, err)
		}
		if vm.Current != "" {
			s := vm.Snapshot(vm.Current)
			if i := inChain(active, s.File(d.Target)); i < minIndex(s) {
				return fmt.Errorf("VM %s disk %s: the metadata says the current state descends from snapshot %s (%s), but the chain of %s does not contain it: the files changed behind qchain's back",
					vm.Name, d.Target, s.Name, s.File(d.Target), d.Active)
			}
		}
		for _, s := range vm.Snapshots {
			f := s.File(d.Target)
			if f == "" {
				return fmt.Errorf("VM %s: snapshot %s has no file for disk %s", vm.Name, s.Name, d.Target)
			}
			ch, err := chainOf(f)
			if err != nil {
				return fmt.Errorf("VM %s disk %s: snapshot %s: %w", vm.Name, d.Target, s.Name, err)
			}
			if s.Parent != "" {
				pf := vm.Snapshot(s.Parent).File(d.Target)
				if inChain(ch, pf) < minIndex(vm.Snapshot(s.Parent)) {
					return fmt.Errorf("VM %s disk %s: snapshot %s (%s) should sit on its parent %s (%s), but its chain does not contain it: the files changed behind qchain's back",
						vm.Name, d.Target, s.Name, f, s.Parent, pf)
				}
			}
		}
	}
	return nil
}

// trackedFiles returns, for one disk, every file the metadata names: the
// snapshot files and the active image.
func (vm *VM) trackedFiles(target string) []string {
	var out []string
	for _, s := range vm.Snapshots {
		out = append(out, s.File(target))
	}
	if d := vm.Disk(target); d != nil {
		out = append(out, d.Active)
	}
	return out
}

// minIndex is where a snapshot's file may sit in a descendant's chain: an
// external snapshot's file is below the descendant's (1 or deeper); an
// internal one lives inside an image that may still be the descendant's
// own file (0).
func minIndex(s *Snapshot) int {
	if s.Internal {
		return 0
	}
	return 1
}
