package qcow2

import (
	"errors"
	"os"
)

// ErrInUse reports an image that another process has open for use: a
// QEMU (qemu-system, qemu-img, qemu-storage-daemon, qemu-nbd) holds one of
// its lock bytes.
var ErrInUse = errors.New("qcow2: in use by another process (it holds QEMU's image lock)")

// CheckNotInUse reports whether a process holds QEMU's locks on the named
// image, with an error wrapping ErrInUse if one does. It takes the lock
// bytes and releases them at once, and so changes nothing in the file; the
// file must be writable. A process may still open the image right after:
// writers that need the image to themselves hold the locks (or, like
// qemu-storage-daemon, take them) for as long as they work.
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
