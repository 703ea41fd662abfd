package chain

import (
	"fmt"
)

// RotateOptions configure Rotate.
type RotateOptions struct {
	// Keep is how many snapshots of the current branch stay.
	Keep int
	// ForceExports is DeleteOptions.ForceExports for each delete.
	ForceExports bool
}

// Rotate keeps the opts.Keep newest snapshots of the current branch (the
// current snapshot and its ancestors) and deletes the older ones, oldest
// first, each merged the cheaper way.
func (m *Manager) Rotate(vmName string, opts RotateOptions) ([]*Plan, error) {
	keep := opts.Keep
	if keep < 0 {
		return nil, fmt.Errorf("--keep must be 0 or more")
	}
	vm, err := m.Store.Load(vmName)
	if err != nil {
		return nil, err
	}
	branch := vm.Ancestors(vm.Current)
	var plans []*Plan
	for i := len(branch) - 1; i >= keep; i-- {
		p, err := m.Delete(vmName, branch[i], DeleteOptions{Merge: MergeAuto, ForceExports: opts.ForceExports}, false)
		if err != nil {
			return plans, err
		}
		plans = append(plans, p)
	}
	return plans, nil
}
