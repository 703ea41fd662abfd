package qcow2

import (
	"syscall"
	"unsafe"
)

// hugeThreshold is the size from which counting arrays get their own
// mapping with transparent huge pages: page faults on millions of fresh
// 4 KiB pages cost more than the check's arithmetic.
const hugeThreshold = 2 << 20

const madvHugepage = 14 // MADV_HUGEPAGE

// bigZeroed returns n zeroed bytes, in an anonymous mapping advised for
// huge pages when n is large (release it with freeBig), else on the heap.
func bigZeroed(n uint64) (b []byte, mapped bool) {
	if n < hugeThreshold || n > 1<<40 {
		return make([]byte, n), false
	}
	m, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return make([]byte, n), false
	}
	syscall.Syscall(syscall.SYS_MADVISE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), madvHugepage)
	return m, true
}

func freeBig(b []byte, mapped bool) {
	if mapped {
		syscall.Munmap(b)
	}
}
