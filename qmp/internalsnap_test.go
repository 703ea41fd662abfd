package qmp

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestInternalSnapshotCommands takes, refuses and deletes internal
// snapshots of the top image on a storage daemon and on a -drive VM, and
// reads the result with qemu-img once the process has quit.
func TestInternalSnapshotCommands(t *testing.T) {
	for _, kind := range []string{kindQSD, kindDrive} {
		t.Run(kind, func(t *testing.T) {
			ctx := testCtx(t, 20*time.Second)
			c := buildChain(t)
			tg := startTarget(t, kind, c)
			for _, name := range []string{"s1", "s2"} {
				if err := tg.conn.BlockdevSnapshotInternalSync(ctx, BlockdevSnapshotInternal{Device: tg.disk, Name: name}); err != nil {
					t.Fatalf("creating %s: %v", name, err)
				}
			}
			err := tg.conn.BlockdevSnapshotInternalSync(ctx, BlockdevSnapshotInternal{Device: tg.disk, Name: "s1"})
			var qe *Error
			if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "already exists") {
				t.Errorf("second s1: got %v, want QEMU's 'already exists'", err)
			}
			info, err := tg.conn.BlockdevSnapshotDeleteInternalSync(ctx, BlockdevSnapshotDeleteInternal{Device: tg.disk, ID: "1", Name: "s1"})
			if err != nil {
				t.Fatal(err)
			}
			if info.ID != "1" || info.Name != "s1" || info.DateSec == 0 {
				t.Errorf("deleted snapshot %+v, want ID 1 named s1 with a date", info)
			}
			if _, err := tg.conn.BlockdevSnapshotDeleteInternalSync(ctx, BlockdevSnapshotDeleteInternal{Device: tg.disk, Name: "s1"}); !errors.As(err, &qe) {
				t.Errorf("deleting s1 again: got %v, want a QMP error", err)
			}
			tg.quit()
			out := run(t, "qemu-img", "snapshot", "-l", c.top)
			if !strings.Contains(out, " s2 ") || strings.Contains(out, " s1 ") {
				t.Errorf("qemu-img snapshot -l after the commands:\n%s", out)
			}
			run(t, "qemu-img", "check", c.top)
		})
	}
}

// TestJobIDInUse starts a snapshot job under an id a concluded job still
// holds: QEMU refuses it with "already in use", which chain's job runner
// reads as "attach to the job an interrupted run left".
func TestJobIDInUse(t *testing.T) {
	ctx := testCtx(t, 20*time.Second)
	c := buildChain(t)
	tg := startTarget(t, kindDrive, c)
	// The job fails (no such node) but stays until dismissed: snapshot
	// jobs are manual-dismiss.
	js := SnapshotDelete{JobID: "qchain-test-job", Tag: "none", Devices: []string{"no-such-node"}}
	if _, err := StartJob(ctx, tg.conn, js); err != nil {
		t.Fatal(err)
	}
	_, err := StartJob(ctx, tg.conn, js)
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("second job under the same id: %v, want QEMU's 'already in use'", err)
	}
}
