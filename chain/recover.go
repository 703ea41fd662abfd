package chain

import "os"

// Recover finishes an interrupted operation of the VM from its journal
// (every step can be run again), then saves the metadata it was to save.
func (m *Manager) Recover(vmName string) (*Journal, error) {
	l, err := m.Store.Lock(vmName, true)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	j, err := l.journal()
	if err != nil || j == nil {
		return nil, err
	}
	ex, done, err := m.executor(l.VM)
	if err != nil {
		return nil, err
	}
	defer done()
	if ex.Live == nil {
		// The VM stopped: making overlays active is now the metadata alone.
		for i := range j.Steps {
			switch j.Steps[i].Kind {
			case StepLiveSnapshot:
				j.Steps[i].Done = true
			case StepInternalSave:
				if j.Steps[i].Done {
					continue
				}
				// QEMU died during snapshot-save: no checkpoint (a
				// partial tag may stay in the image).
				j.Steps[i].Done = true
				j.Final = clone(l.VM)
			case StepSaveMemory, StepResume:
				if j.Steps[i].Done {
					continue
				}
				// QEMU died with the checkpoint's memory unsaved: the
				// disks hold a disk-only snapshot of an instant before
				// the new overlays took any write.
				j.Steps[i].Done = true
				if j.Steps[i].Kind == StepSaveMemory {
					if s := j.Final.Snapshot(j.Snapshot); s != nil {
						s.Memory = nil
					}
					os.Remove(j.Steps[i].File)
				}
			}
		}
	}
	return j, l.run(j, &vmExecutor{ex: ex, m: m, final: j.Final}, m.BeforeStep)
}
