package integration

import (
	"testing"
)

// TestBackupGuestSnapshots backs up a real guest's disk across live
// snapshot operations while the guest writes acknowledged records (issue
// 11): a snapshot create, a delete by active commit, a delete by pull and
// a checkpoint with memory each come before an incremental point, which
// must be incremental and hold every record acknowledged before its
// backup began, intact and in order, as must its restore.
func TestBackupGuestSnapshots(t *testing.T) {
	b := startGuestBackups(t, "bksnap")
	steps := [][][]string{
		nil,
		{{"snapshot", "create", b.vm, "s1"}},
		{{"snapshot", "create", b.vm, "s2"}, {"snapshot", "delete", "--merge=commit", b.vm, "s2"}},
		{{"snapshot", "create", b.vm, "s3"}, {"snapshot", "delete", "--merge=pull", b.vm, "s3"}},
		{{"snapshot", "create", "--memory", b.vm, "c1"}},
	}
	for i, ops := range steps {
		for _, op := range ops {
			t.Logf("%v: %s", op, b.ok(op...))
			b.wait(100)
		}
		if p := b.take(); (i > 0) != (p.Kind == "incremental") {
			t.Errorf("point %d after %v: %+v", p.Point, ops, p)
		}
		b.wait(100)
	}
	b.finish()
}
