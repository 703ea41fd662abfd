package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeAgent is a qemu-ga stand-in: it answers guest-sync-delimited (after
// some stale output, as a channel left by an earlier client would hold)
// and keeps a frozen flag.
type fakeAgent struct {
	mu         sync.Mutex
	frozen     bool
	freezes    int
	thaws      int
	hangFreeze bool // never answer guest-fsfreeze-freeze (but freeze)
	thawed     chan struct{}
}

func newFakeAgent() *fakeAgent { return &fakeAgent{thawed: make(chan struct{}, 16)} }

func (a *fakeAgent) state() (frozen bool, freezes, thaws int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.frozen, a.freezes, a.thaws
}

func (a *fakeAgent) serve(f *fakeConn) {
	// Stale output from an earlier session.
	f.sendLine(`{"return": 42}`)
	f.sendLine("\xff" + `{"return": 7}`)
	for {
		line, err := f.br.ReadBytes('\n')
		if err != nil {
			return
		}
		line = bytes.TrimLeft(line, "\xff")
		var c struct {
			Execute   string `json:"execute"`
			Arguments struct {
				ID json.Number `json:"id"`
			} `json:"arguments"`
		}
		if err := json.Unmarshal(line, &c); err != nil {
			f.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "bad JSON"}})
			continue
		}
		a.mu.Lock()
		switch c.Execute {
		case "guest-sync-delimited":
			f.sendLine("\xff" + `{"return": ` + c.Arguments.ID.String() + `}`)
		case "guest-fsfreeze-freeze":
			a.frozen = true
			a.freezes++
			if !a.hangFreeze {
				f.send(map[string]int{"return": 2})
			}
		case "guest-fsfreeze-thaw":
			a.frozen = false
			a.thaws++
			f.send(map[string]int{"return": 2})
			a.thawed <- struct{}{}
		case "guest-fsfreeze-status":
			st := FSThawed
			if a.frozen {
				st = FSFrozen
			}
			f.send(map[string]string{"return": st})
		default:
			f.send(map[string]any{"error": map[string]string{"class": "CommandNotFound",
				"desc": fmt.Sprintf("The command %s has not been found", c.Execute)}})
		}
		a.mu.Unlock()
	}
}

func dialAgent(t *testing.T, a *fakeAgent) *GuestAgent {
	t.Helper()
	path := startFake(t, a.serve)
	g, err := DialGuestAgent(testCtx(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func TestGuestAgentCommands(t *testing.T) {
	a := newFakeAgent()
	g := dialAgent(t, a)
	ctx := testCtx(t, 5*time.Second)
	if st, err := g.FsfreezeStatus(ctx); err != nil || st != FSThawed {
		t.Fatalf("status %q %v", st, err)
	}
	if n, err := g.FsfreezeFreeze(ctx); err != nil || n != 2 {
		t.Fatalf("freeze %d %v", n, err)
	}
	if st, _ := g.FsfreezeStatus(ctx); st != FSFrozen {
		t.Fatalf("status after freeze %q", st)
	}
	if n, err := g.FsfreezeThaw(ctx); err != nil || n != 2 {
		t.Fatalf("thaw %d %v", n, err)
	}
	err := g.Execute(ctx, "guest-nothing", nil, nil)
	if !IsClass(err, ClassCommandNotFound) {
		t.Fatalf("unknown command: %v", err)
	}
}

func TestWithFrozenFilesystems(t *testing.T) {
	errFn := errors.New("snapshot failed")
	tests := []struct {
		name    string
		fn      func(ctx context.Context) error
		wantErr error
	}{
		{"returns nil", func(ctx context.Context) error { return nil }, nil},
		{"returns error", func(ctx context.Context) error { return errFn }, errFn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeAgent()
			g := dialAgent(t, a)
			ctx := testCtx(t, 5*time.Second)
			var frozenInside bool
			err := WithFrozenFilesystems(ctx, g, func(ctx context.Context) error {
				frozenInside, _, _ = a.state()
				return tc.fn(ctx)
			})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			frozen, freezes, thaws := a.state()
			if !frozenInside || frozen || freezes != 1 || thaws != 1 {
				t.Fatalf("frozen inside %v, after %v, freezes %d, thaws %d", frozenInside, frozen, freezes, thaws)
			}
		})
	}
}

func TestWithFrozenFilesystemsPanic(t *testing.T) {
	a := newFakeAgent()
	g := dialAgent(t, a)
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want the original panic value", r)
			}
		}()
		_ = WithFrozenFilesystems(testCtx(t, 5*time.Second), g, func(context.Context) error { panic("boom") })
	}()
	if frozen, _, thaws := a.state(); frozen || thaws != 1 {
		t.Fatalf("after panic: frozen %v, thaws %d", frozen, thaws)
	}
}

// TestWithFrozenFilesystemsCancel: cancelling the context thaws at once,
// before the function (which here ignores its context for a while) ends.
func TestWithFrozenFilesystemsCancel(t *testing.T) {
	a := newFakeAgent()
	g := dialAgent(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- WithFrozenFilesystems(ctx, g, func(context.Context) error {
			<-release
			return nil
		})
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-a.thawed:
	case <-time.After(2 * time.Second):
		t.Fatal("no thaw after cancel")
	}
	close(release)
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if frozen, _, thaws := a.state(); frozen || thaws != 1 {
		t.Fatalf("frozen %v thaws %d", frozen, thaws)
	}
}

// TestWithFrozenFilesystemsFreezeTimeout: the agent froze but its reply
// never came; the thaw is still sent (after a resync) and fn never runs.
func TestWithFrozenFilesystemsFreezeTimeout(t *testing.T) {
	a := newFakeAgent()
	a.hangFreeze = true
	g := dialAgent(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	ran := false
	err := WithFrozenFilesystems(ctx, g, func(context.Context) error { ran = true; return nil })
	if !errors.Is(err, context.DeadlineExceeded) || ran {
		t.Fatalf("err %v, ran %v", err, ran)
	}
	if frozen, _, thaws := a.state(); frozen || thaws != 1 {
		t.Fatalf("frozen %v thaws %d", frozen, thaws)
	}
}
