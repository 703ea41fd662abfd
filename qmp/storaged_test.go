package qmp

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestStorageDaemonMissingBinary(t *testing.T) {
	for _, bin := range []string{"qchain-no-such-daemon", "/nonexistent/qemu-storage-daemon"} {
		_, err := StartStorageDaemon(context.Background(), StorageDaemonOptions{Binary: bin})
		if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), bin) {
			t.Errorf("%s: %v, want ErrNoBinary naming the binary", bin, err)
		}
	}
}

func TestStorageDaemonStartFailure(t *testing.T) {
	needBins(t, "qemu-storage-daemon")
	_, err := StartStorageDaemon(testCtx(t, 10*time.Second), StorageDaemonOptions{
		Blockdevs: []any{"driver=qcow2,node-name=x,file.driver=file,file.filename=/nonexistent.qcow2"},
	})
	if err == nil || !strings.Contains(err.Error(), "nonexistent.qcow2") {
		t.Fatalf("err %v, want the daemon's message", err)
	}
}

func TestStorageDaemonLifecycle(t *testing.T) {
	needBins(t, "qemu-storage-daemon")
	d, err := StartStorageDaemon(testCtx(t, 10*time.Second), StorageDaemonOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Conn.Greeting().Version.QEMU.Major == 0 {
		t.Errorf("greeting %+v", d.Conn.Greeting())
	}
	sock := d.SocketPath
	if err := d.Close(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Exited():
	default:
		t.Fatal("daemon still running after Close")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind: %v", sock, err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
