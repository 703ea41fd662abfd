//go:build linux && (386 || amd64 || arm || arm64 || loong64 || riscv64 || s390x)

package qcow2

import (
	"os"
	"syscall"
	"unsafe"
)

// fsxattr is the kernel's struct fsxattr (linux/fs.h).
type fsxattr struct {
	XFlags     uint32
	ExtSize    uint32
	NExtents   uint32
	ProjID     uint32
	CowExtSize uint32
	Pad        [8]byte
}

// fsIocFsGetXattr is FS_IOC_FSGETXATTR, _IOR('X', 31, struct fsxattr), in
// the generic ioctl encoding of the architectures this file builds for.
const fsIocFsGetXattr = 2<<30 | uint32(unsafe.Sizeof(fsxattr{}))<<16 | 'X'<<8 | 31

// extentSizeHint returns the extent size hint of f, as QEMU's file driver
// reads it for qemu-img info: only a file system that supports the ioctl
// and a hint that is not zero give one.
func extentSizeHint(f *os.File) (uint64, bool) {
	sc, err := f.SyscallConn()
	if err != nil {
		return 0, false
	}
	var attr fsxattr
	var errno syscall.Errno
	if err := sc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, uintptr(fsIocFsGetXattr), uintptr(unsafe.Pointer(&attr)))
	}); err != nil || errno != 0 || attr.ExtSize == 0 {
		return 0, false
	}
	return uint64(attr.ExtSize), true
}
