package chain

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
			if j.Steps[i].Kind == StepLiveSnapshot {
				j.Steps[i].Done = true
			}
		}
	}
	return j, l.run(j, ex, m.BeforeStep)
}
