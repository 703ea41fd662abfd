package qcow2

import (
	"os"
	"syscall"
)

// punchHole deallocates [off, off+n) of f, keeping its size, as QEMU's
// file driver discards (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).
func punchHole(f *os.File, off, n uint64) error {
	const (
		fallocFlKeepSize  = 0x01
		fallocFlPunchHole = 0x02
	)
	return syscall.Fallocate(int(f.Fd()), fallocFlKeepSize|fallocFlPunchHole, int64(off), int64(n))
}
