package chain

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// TestStepErrorNamesFileOnce: the step's description names its file, so
// the cause does not name it again.
func TestStepErrorNamesFileOnce(t *testing.T) {
	const f = "/img/vm.vda.s1.qcow2"
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"name-colon", errors.New(f + ": locking: bad file descriptor"), "remove " + f + "): locking: bad file descriptor;"},
		{"name-is", errors.New(f + " is in use by another process (qemu holds its lock)"), "remove " + f + "): it is in use by another process"},
		{"other", os.ErrPermission, "remove " + f + "): permission denied;"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &StepError{VM: "vm", Op: "delete", Snapshot: "s1", Index: 1, Step: Step{Kind: StepRemove, File: f}, Err: tc.err}
			msg := e.Error()
			if !strings.Contains(msg, tc.want) || strings.Count(msg, f) != 1 {
				t.Errorf("%q: want %q and the file named once", msg, tc.want)
			}
			if !errors.Is(e, tc.err) || !errors.Is(e.Cause(), tc.err) {
				t.Error("the step error does not unwrap to its cause")
			}
		})
	}
}
