//go:build linux && (386 || amd64 || arm || arm64 || loong64 || riscv64 || s390x)

package qcow2

import (
	"os"
	"testing"
)

func TestExtentSizeHint(t *testing.T) {
	if fsIocFsGetXattr != 0x801c581f {
		t.Errorf("FS_IOC_FSGETXATTR is %#x, want 0x801c581f", fsIocFsGetXattr)
	}
	f, err := os.Open(writeImage(t, "m.qcow2", minimalImage()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Whatever the file system, a file gets a hint only when it has one,
	// and never a zero one.
	if hint, ok := extentSizeHint(f); ok && hint == 0 {
		t.Errorf("extent size hint 0 reported as set")
	}
}
