package qcow2

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Lock bytes QEMU's file driver takes with open file description locks:
// 100+n for each permission it uses, 200+n for each it refuses to share.
const (
	qemuLockFirst = 100
	qemuLockLen   = 200
	fOFDGetlk     = 36 // F_OFD_GETLK
	fOFDSetlk     = 37 // F_OFD_SETLK
)

// lockImage takes QEMU's lock bytes exclusively, so the file is not in
// use by qemu (or qemu-img) now and cannot be opened by it until the
// returned release is called.
func lockImage(f *os.File) (func(), error) {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: qemuLockFirst, Len: qemuLockLen}
	if err := syscall.FcntlFlock(f.Fd(), fOFDSetlk, &lk); err != nil {
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("%s is %w", f.Name(), ErrInUse)
		}
		return nil, fmt.Errorf("%s: locking: %w", f.Name(), err)
	}
	return func() {
		lk.Type = syscall.F_UNLCK
		syscall.FcntlFlock(f.Fd(), fOFDSetlk, &lk)
	}, nil
}

// InUse reports whether a process holds any of QEMU's lock bytes of the
// named file: a QEMU, qemu-img or qemu-storage-daemon that has it open
// (unless opened with locking off or with -U, which take none). It only
// asks (F_OFD_GETLK) and takes no lock, so it works on a file opened
// read-only and changes nothing. A process that opens the file right after
// is not seen: writers take the lock themselves (see Rebase).
func InUse(name string) (bool, error) {
	f, err := os.Open(name)
	if err != nil {
		return false, err
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: qemuLockFirst, Len: qemuLockLen}
	if err := syscall.FcntlFlock(f.Fd(), fOFDGetlk, &lk); err != nil {
		return false, fmt.Errorf("%s: asking for its locks: %w", name, err)
	}
	return lk.Type != syscall.F_UNLCK, nil
}

// ErrInUse reports a file a process holds QEMU's locks of.
var ErrInUse = errors.New("in use by another process (qemu holds its lock)")

// RemoveUnused removes the named file unless a process holds QEMU's locks
// of it; it holds them itself while removing, so no QEMU can open the
// file in between. A missing file is not an error.
func RemoveUnused(name string) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if errors.Is(err, os.ErrPermission) {
		// A read-only file cannot carry a write lock: ask, then remove.
		busy, err := InUse(name)
		if err != nil {
			return err
		}
		if busy {
			return fmt.Errorf("%s is %w", name, ErrInUse)
		}
		return os.Remove(name)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	release, err := lockImage(f)
	if err != nil {
		return err
	}
	defer release()
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
