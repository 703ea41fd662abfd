package chain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/qchain/qchain/qmp"
)

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
	waitDaemons(m.ctx(), journalFiles(l.VM, j))
	vx := &vmExecutor{ex: ex, m: m, final: j.Final}
	err = l.run(j, vx, m.BeforeStep)
	var se *StepError
	if errors.As(err, &se) && errors.Is(err, errMemoryLost) {
		// As CreateCheckpoint does: the disks switched at the instant,
		// so the checkpoint is kept as a disk-only snapshot.
		if s := j.Final.Snapshot(j.Snapshot); s != nil {
			s.Memory = nil
		}
		j.Steps[se.Index].Done = true
		os.Remove(se.Step.File)
		if err = l.run(j, vx, m.BeforeStep); err != nil {
			return j, err
		}
		return j, fmt.Errorf("VM %s: checkpoint %s: %v; %s was kept as a disk-only snapshot", l.VM.Name, j.Snapshot, se.Err, j.Snapshot)
	}
	if err != nil {
		return j, err
	}
	return j, recordMemorySize(l, j.Snapshot)
}

// recordMemorySize records the size of a checkpoint's memory state file
// once saved (a shorter file later is a truncated one).
func recordMemorySize(l *Locked, name string) error {
	s := l.VM.Snapshot(name)
	if s == nil || s.Memory == nil || s.Internal || s.Memory.Size != 0 {
		return nil
	}
	fi, err := os.Stat(s.Memory.File)
	if err != nil {
		return nil
	}
	s.Memory.Size = fi.Size()
	return l.Save()
}

// daemonExitWait bounds how long Recover waits for the storage daemons
// of the qchain that died to quit.
const daemonExitWait = 30 * time.Second

// waitDaemons waits until no storage daemon that qchain started has one
// of files open, or daemonExitWait passes (the steps then say which image
// is in use). A dead qchain's daemons quit on their own, a SIGTERM one
// once it has finished its command (internal snapshots), and until then
// hold the images' locks: while the VM's lock is held, no live qchain
// runs one on the VM's files.
func waitDaemons(ctx context.Context, files []string) {
	deadline := time.Now().Add(daemonExitWait)
	for len(qmp.DaemonsOn(files)) > 0 && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// journalFiles lists the files an interrupted operation's steps and the
// VM's disks name, absolute.
func journalFiles(vm *VM, j *Journal) []string {
	var files []string
	add := func(f string) {
		if f == "" {
			return
		}
		if abs, err := filepath.Abs(f); err == nil && !slices.Contains(files, abs) {
			files = append(files, abs)
		}
	}
	for _, d := range vm.Disks {
		add(d.Active)
	}
	for _, s := range j.Steps {
		for _, f := range append([]string{s.File, s.Top, s.Base}, s.Files...) {
			add(f)
		}
	}
	return files
}
