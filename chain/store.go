package chain

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
)

// ErrNoVM reports a VM that is not defined in the state directory.
var ErrNoVM = errors.New("no such VM")

// ErrUnfinished reports a VM with an interrupted operation: run Recover.
var ErrUnfinished = errors.New("an interrupted operation must be recovered first")

// DefaultStateDir returns $QCHAIN_STATE_DIR, else /var/lib/qchain for
// root and $XDG_STATE_HOME/qchain (~/.local/state/qchain) otherwise.
func DefaultStateDir() string {
	if d := os.Getenv("QCHAIN_STATE_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/qchain"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "qchain")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "qchain")
}

// Store is a state directory: one folder per VM holding vm.json, a lock
// file and, during an operation, journal.json. Folders are 0700, files 0600.
type Store struct {
	Dir string
}

func (st *Store) vmDir(name string) string { return filepath.Join(st.Dir, "vms", name) }

// List returns the names of the defined VMs, sorted.
func (st *Store) List() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(st.Dir, "vms"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(st.Dir, "vms", e.Name(), "vm.json")); err == nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Load reads a VM's metadata without locking (for listing).
func (st *Store) Load(name string) (*VM, error) {
	if err := validName("VM", name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(st.vmDir(name), "vm.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (state directory %s)", ErrNoVM, name, st.Dir)
	}
	if err != nil {
		return nil, err
	}
	vm := &VM{}
	if err := json.Unmarshal(b, vm); err != nil {
		return nil, fmt.Errorf("VM %s: metadata %s is corrupt: %w", name, filepath.Join(st.vmDir(name), "vm.json"), err)
	}
	return vm, vm.validate()
}

// save writes a VM's metadata atomically; the caller holds its lock.
func (st *Store) save(vm *VM) error {
	if err := vm.validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(vm, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(st.vmDir(vm.Name), "vm.json"), append(b, '\n'))
}

// writeAtomic replaces path with data: temp file, fsync, rename, fsync of
// the folder, so a crash leaves the old or the new content, never a mix.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Locked is a VM's metadata held under its lock.
type Locked struct {
	st   *Store
	VM   *VM
	lock *os.File
}

// Lock takes the VM's exclusive lock (waiting for another qchain process
// to finish) and loads it. Unless recovering, a VM with an unfinished
// journal is refused with ErrUnfinished.
func (st *Store) Lock(name string, recovering bool) (*Locked, error) {
	vm, err := st.Load(name)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(st.vmDir(name), "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("VM %s: locking: %w", name, err)
	}
	// Reload under the lock: another process may have changed it.
	if vm, err = st.Load(name); err != nil {
		f.Close()
		return nil, err
	}
	l := &Locked{st: st, VM: vm, lock: f}
	if !recovering {
		if j, err := l.journal(); err != nil || j != nil {
			l.Unlock()
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("VM %s: %w: %s of snapshot %s stopped at step %d of %d; run `qchain recover %s`",
				name, ErrUnfinished, j.Op, j.Snapshot, j.nextStep()+1, len(j.Steps), name)
		}
	}
	return l, nil
}

// Unlock releases the lock.
func (l *Locked) Unlock() {
	if l.lock != nil {
		l.lock.Close()
		l.lock = nil
	}
}

// Save writes the metadata atomically.
func (l *Locked) Save() error { return l.st.save(l.VM) }

// Define creates a VM. Its disks' images must exist; they are recorded by
// absolute path, and as the VM's original images (VM.Originals): they
// belong to the VM from now on.
func (st *Store) Define(vm *VM) error {
	vm.Originals = nil
	for i := range vm.Disks {
		abs, err := filepath.Abs(vm.Disks[i].Active)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("VM %s: disk %s: %w", vm.Name, vm.Disks[i].Target, err)
		}
		vm.Disks[i].Active = abs
		if !slices.Contains(vm.Originals, abs) {
			vm.Originals = append(vm.Originals, abs)
		}
	}
	if err := vm.validate(); err != nil {
		return err
	}
	if len(vm.Command) > 0 {
		if vm.QMP == "" {
			p, err := st.defaultQMP(vm.Name)
			if err != nil {
				return err
			}
			vm.QMP = p
		} else if abs, err := filepath.Abs(vm.QMP); err == nil {
			vm.QMP = abs // qemu may run in another folder
		}
		if err := vm.checkCommand(); err != nil {
			return err
		}
	}
	if vm.NVRAM != "" {
		abs, err := filepath.Abs(vm.NVRAM)
		if err != nil {
			return err
		}
		vm.NVRAM = abs
	}
	if err := os.MkdirAll(filepath.Join(st.Dir, "vms"), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(st.vmDir(vm.Name), 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("VM %s is already defined", vm.Name)
		}
		return err
	}
	// The lock file exists from the start: a command refused before it
	// changes anything leaves the folder as it was.
	lf, err := os.OpenFile(filepath.Join(st.vmDir(vm.Name), "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	lf.Close()
	return st.save(vm)
}

// Undefine forgets a VM (its files stay).
func (st *Store) Undefine(name string) error {
	l, err := st.Lock(name, false)
	if err != nil {
		return err
	}
	defer l.Unlock()
	return os.RemoveAll(st.vmDir(name))
}
