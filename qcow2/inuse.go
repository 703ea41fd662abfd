package qcow2

import "os"

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
