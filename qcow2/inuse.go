package qcow2

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ErrInUse reports an image that another process has open for use: a
// QEMU (qemu-system, qemu-img, qemu-storage-daemon, qemu-nbd) holds one of
// its lock bytes.
var ErrInUse = errors.New("in use by another process (qemu holds its lock)")

// fOFDGetlk is F_OFD_GETLK: which lock, if any, would block one we ask
// about, without taking it.
const fOFDGetlk = 36

// CheckNotInUse returns an error wrapping ErrInUse when another process
// holds any of QEMU's lock bytes of the file name, so that a writer can
// refuse before it starts. It takes the lock bytes and releases them at
// once, and so changes nothing in the file; the file must be writable. A
// process may still open the image right after: writers that need the
// image to themselves hold the locks (or, like qemu-storage-daemon, take
// them) for as long as they work.
func CheckNotInUse(name string) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	release, err := lockImage(f)
	if err != nil {
		return err
	}
	release()
	return nil
}

// HeldByOther reports whether another process holds any of QEMU's lock
// bytes of the file name: a QEMU has it open. It only asks the kernel
// (F_OFD_GETLK) and takes no lock, so it is safe for inspection.
func HeldByOther(name string) (bool, error) {
	f, err := os.Open(name)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return heldByOther(f)
}

func heldByOther(f *os.File) (bool, error) {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: qemuLockFirst, Len: qemuLockLen}
	if err := syscall.FcntlFlock(f.Fd(), fOFDGetlk, &lk); err != nil {
		return false, fmt.Errorf("%s: asking for locks: %w", f.Name(), err)
	}
	return lk.Type != syscall.F_UNLCK, nil
}
