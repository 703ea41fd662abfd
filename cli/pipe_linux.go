package cli

import (
	"os"
	"syscall"
)

// fSetPipeSz is F_SETPIPE_SZ.
const fSetPipeSz = 1031

// growPipe enlarges the pipe behind f (when it is one) to 1 MiB: map and
// clusters write megabytes of JSON, and the default 64 KiB pipe costs a
// context switch per 64 KiB on the way to the reader.
func growPipe(f *os.File) {
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		return
	}
	syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), fSetPipeSz, 1<<20)
}
