//go:build !linux

package qcow2

import (
	"errors"
	"os"
)

// punchHole is not available here: freed clusters keep their bytes.
func punchHole(f *os.File, off, n uint64) error {
	return errors.New("punching holes is not supported on this system")
}
