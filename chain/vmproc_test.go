package chain

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// TestWaitPID waits for a process that exits, one that does not within
// the time given, and one that is gone already.
func TestWaitPID(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	if waitPID(context.Background(), pid, 30*time.Millisecond) {
		t.Fatal("waitPID reported a running process as exited")
	}
	exited := make(chan bool)
	go func() { exited <- waitPID(context.Background(), pid, time.Minute) }()
	cmd.Process.Kill()
	if !<-exited {
		t.Fatal("waitPID missed the exit of a killed process")
	}
	cmd.Wait()
	if !waitPID(context.Background(), pid, time.Second) {
		t.Fatal("waitPID: a reaped process is not gone")
	}
	ctx, cancel := context.WithCancel(context.Background())
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	cancel()
	if waitPID(ctx, other.Process.Pid, time.Minute) {
		t.Fatal("waitPID: a cancelled wait reported a running process as exited")
	}
}
