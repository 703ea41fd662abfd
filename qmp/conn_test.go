package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
)

func dialFake(t *testing.T, path string, opts Options) *Conn {
	t.Helper()
	c, err := Dial(testCtx(t, 5*time.Second), path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRepliesRoutedByID has the server answer a batch of concurrent
// commands in reverse order; each caller must get its own reply.
func TestRepliesRoutedByID(t *testing.T) {
	const n = 8
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		var cmds []fakeCmd
		seen := make(map[string]bool)
		for len(cmds) < n {
			c, ok := f.recv()
			if !ok {
				return
			}
			if len(c.ID) == 0 || seen[string(c.ID)] {
				t.Errorf("command %s has missing or repeated id %s", c.Execute, c.ID)
			}
			seen[string(c.ID)] = true
			cmds = append(cmds, c)
		}
		for i := len(cmds) - 1; i >= 0; i-- {
			f.reply(cmds[i], map[string]any{"echo": json.RawMessage(cmds[i].Arguments)})
		}
		for {
			if _, ok := f.recv(); !ok {
				return
			}
		}
	})
	c := dialFake(t, path, Options{})
	ctx := testCtx(t, 5*time.Second)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out struct {
				Echo struct{ N int } `json:"echo"`
			}
			if err := c.Execute(ctx, "echo", map[string]int{"N": i}, &out); err != nil {
				t.Error(err)
				return
			}
			if out.Echo.N != i {
				t.Errorf("call %d got the reply of call %d", i, out.Echo.N)
			}
		}()
	}
	wg.Wait()
}

// TestConcurrentRealQEMU mixes commands with different reply shapes from
// many goroutines on one connection to a real qemu-storage-daemon.
func TestConcurrentRealQEMU(t *testing.T) {
	c := buildChain(t)
	tg := startTarget(t, kindQSD, c)
	ctx := testCtx(t, 20*time.Second)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				switch (g + i) % 3 {
				case 0:
					var v struct {
						QEMU struct{ Major int } `json:"qemu"`
					}
					if err := tg.conn.Execute(ctx, "query-version", nil, &v); err != nil || v.QEMU.Major == 0 {
						t.Errorf("query-version: %+v %v", v, err)
						return
					}
				case 1:
					nodes, err := tg.conn.QueryNamedBlockNodes(ctx)
					if err != nil || len(nodes) != 6 {
						t.Errorf("query-named-block-nodes: %d nodes, %v", len(nodes), err)
						return
					}
				case 2:
					name := fmt.Sprintf("nonode-%d-%d", g, i)
					err := tg.conn.BlockdevDel(ctx, name)
					if !IsClass(err, ClassGenericError) || !strings.Contains(err.Error(), "'"+name+"'") {
						t.Errorf("blockdev-del of a missing node: %v", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestErrorClass checks that QEMU's error class survives as *Error, through
// Execute, Run and go-qemu's raw package.
func TestErrorClass(t *testing.T) {
	c := buildChain(t)
	tg := startTarget(t, kindQSD, c)
	ctx := testCtx(t, 10*time.Second)

	err := tg.conn.BlockdevDel(ctx, "no-such-node")
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != ClassGenericError || qe.Command != "blockdev-del" || qe.Desc == "" {
		t.Fatalf("blockdev-del of a missing node: %#v", err)
	}
	if err := tg.conn.Execute(ctx, "no-such-command", nil, nil); !IsClass(err, ClassCommandNotFound) {
		t.Fatalf("unknown command: %v, want CommandNotFound", err)
	}
	if _, err := tg.conn.Run([]byte(`{"execute":"job-cancel","arguments":{"id":"x"}}`)); !IsClass(err, ClassGenericError) {
		t.Fatalf("Run job-cancel: %v", err)
	}

	// go-qemu's generated commands over Conn.
	mon := raw.NewMonitor(tg.conn)
	v, err := mon.QueryVersion()
	if err != nil || v.Qemu.Major < 2 {
		t.Fatalf("raw QueryVersion: %+v %v", v, err)
	}
	if err := mon.BlockJobCancel("nojob", nil); !IsClass(err, ClassDeviceNotActive) && !IsClass(err, ClassGenericError) {
		t.Fatalf("raw BlockJobCancel: %v, want a typed *Error", err)
	}
}

// TestBigReply parses reply and event lines larger than 16 MiB.
func TestBigReply(t *testing.T) {
	const size = 17 << 20
	big := strings.Repeat("x", size)
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		c, ok := f.recv()
		if !ok {
			return
		}
		f.send(map[string]any{"event": "BIG", "data": map[string]string{"s": big}, "timestamp": map[string]int{"seconds": 1}})
		f.reply(c, big)
		for {
			if _, ok := f.recv(); !ok {
				return
			}
		}
	})
	c := dialFake(t, path, Options{})
	ctx := testCtx(t, 90*time.Second) // slow under -race
	sub, err := c.Subscribe(ctx, "BIG")
	if err != nil {
		t.Fatal(err)
	}
	var s string
	if err := c.Execute(ctx, "big", nil, &s); err != nil {
		t.Fatal(err)
	}
	if len(s) != size {
		t.Fatalf("reply of %d bytes, want %d", len(s), size)
	}
	ev := <-sub.C()
	var d struct{ S string }
	if err := ev.DecodeData(&d); err != nil || len(d.S) != size {
		t.Fatalf("event of %d bytes, %v", len(d.S), err)
	}
}

// TestLineTooLong: a line over the bound closes the connection and fails
// the waiting call with both ErrClosed and ErrLineTooLong.
func TestLineTooLong(t *testing.T) {
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		c, ok := f.recv()
		if !ok {
			return
		}
		f.reply(c, strings.Repeat("y", MinMaxLineSize+1))
		for {
			if _, ok := f.recv(); !ok {
				return
			}
		}
	})
	c := dialFake(t, path, Options{MaxLineSize: 1}) // raised to MinMaxLineSize
	err := c.Execute(testCtx(t, 10*time.Second), "big", nil, nil)
	if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("Execute: %v, want ErrClosed and ErrLineTooLong", err)
	}
}

// TestCloseFailsWaiters: when the peer closes the socket, every waiting
// call fails at once (not at its deadline), and later calls fail too.
func TestCloseFailsWaiters(t *testing.T) {
	const n = 5
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		for i := 0; i < n; i++ {
			if _, ok := f.recv(); !ok {
				return
			}
		}
		// Every call is in flight: hang up without replying.
	})
	c := dialFake(t, path, Options{})
	ctx := testCtx(t, 30*time.Second)
	sub, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { errs <- c.Execute(ctx, "hang", nil, nil) }()
	}
	for i := 0; i < n; i++ {
		err := <-errs
		if !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
			t.Errorf("waiter %d: %v, want ErrClosed wrapping io.EOF", i, err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("waiters failed after %v", d)
	}
	if _, ok := <-sub.C(); ok {
		t.Error("subscription channel not closed")
	}
	if err := c.Execute(ctx, "after", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("call after close: %v", err)
	}
	if _, err := c.Subscribe(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after close: %v", err)
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done not closed")
	}
}

// TestDisconnectFailsWaiters: Disconnect on our side fails waiters with
// ErrDisconnected.
func TestDisconnectFailsWaiters(t *testing.T) {
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		for {
			if _, ok := f.recv(); !ok {
				return
			}
		}
	})
	c := dialFake(t, path, Options{})
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(testCtx(t, 30*time.Second), "hang", nil, nil) }()
	time.Sleep(50 * time.Millisecond)
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrDisconnected) {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("waiter not failed by Disconnect")
	}
}

// TestContextDeadline: a call past its deadline returns promptly; the
// connection stays usable and the late reply is counted, not misrouted.
func TestContextDeadline(t *testing.T) {
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		slow, ok := f.recv()
		if !ok {
			return
		}
		next, ok := f.recv()
		if !ok {
			return
		}
		f.reply(slow, "late")
		f.reply(next, "next")
		for {
			if _, ok := f.recv(); !ok {
				return
			}
		}
	})
	c := dialFake(t, path, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Execute(ctx, "slow", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow call: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("deadline honoured after %v", d)
	}
	var s string
	if err := c.Execute(testCtx(t, 5*time.Second), "next", nil, &s); err != nil || s != "next" {
		t.Fatalf("next call: %q %v", s, err)
	}
	if st := c.Stats(); st.UnmatchedReplies != 1 {
		t.Fatalf("stats %+v, want 1 unmatched reply", st)
	}
}

// TestConnectDeadline: a server that never greets makes Dial fail at the
// context's deadline.
func TestConnectDeadline(t *testing.T) {
	path := startFake(t, func(f *fakeConn) {
		_, _ = f.br.ReadByte() // wait for the client to go away
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, path, Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Dial returned after %v", d)
	}
}

// TestEventsDoNotBlockReplies floods a subscriber that never reads; the
// reply behind the flood still arrives and the overflow is counted.
func TestEventsDoNotBlockReplies(t *testing.T) {
	const flood = 1000
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		c, ok := f.recv()
		if !ok {
			return
		}
		for i := 0; i < flood; i++ {
			f.send(map[string]any{"event": "TICK", "data": map[string]int{"n": i}, "timestamp": map[string]int{"seconds": 1, "microseconds": 5}})
		}
		f.reply(c, "done")
		for {
			if _, ok := f.recv(); !ok {
				return
			}
		}
	})
	c := dialFake(t, path, Options{EventBuffer: 4})
	ctx := testCtx(t, 10*time.Second)
	stuck, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gctx, gcancel := context.WithCancel(ctx)
	goqemu, err := c.Events(gctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "x", nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := stuck.Dropped(); got != flood-4 {
		t.Errorf("dropped %d events, want %d", got, flood-4)
	}
	if st := c.Stats(); st.DroppedEvents != 2*(flood-4) {
		t.Errorf("stats %+v", st)
	}
	ev := <-goqemu
	if ev.Event != "TICK" || ev.Data["n"] != float64(0) || ev.Timestamp.Seconds != 1 || ev.Timestamp.Microseconds != 5 {
		t.Errorf("go-qemu event %+v", ev)
	}
	first := <-stuck.C()
	if first.Name != "TICK" || !first.Time.Equal(time.Unix(1, 5000)) {
		t.Errorf("event %+v", first)
	}
	gcancel()
	for range goqemu { // closed once its context ends
	}
	stuck.Close()
	stuck.Close()
	for range stuck.C() {
	}
}

// TestRunReplacesID: Run accepts go-qemu's command bytes (with or without
// an id) and returns the full reply line.
func TestRunReplacesID(t *testing.T) {
	path := startFake(t, func(f *fakeConn) {
		if !f.greet() {
			return
		}
		for {
			c, ok := f.recv()
			if !ok {
				return
			}
			var id string
			if json.Unmarshal(c.ID, &id) != nil || !strings.HasPrefix(id, "qchain-") {
				t.Errorf("command id %s", c.ID)
			}
			f.reply(c, map[string]string{"cmd": c.Execute})
		}
	})
	c := dialFake(t, path, Options{})
	out, err := c.Run([]byte(`{"execute":"a","id":"mine"}`))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Return struct{ Cmd string } `json:"return"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.Return.Cmd != "a" {
		t.Fatalf("Run reply %s: %v", out, err)
	}
	if _, err := c.Run([]byte(`not json`)); err == nil {
		t.Fatal("Run accepted a non-JSON command")
	}
	if err := c.Connect(); err == nil {
		t.Fatal("second Connect succeeded")
	}
	if g := c.Greeting(); g.Version.QEMU.Major != 7 || len(g.Capabilities) != 1 {
		t.Fatalf("greeting %+v", g)
	}
}

// TestEventBeforeGreeting: a client that connects while QEMU starts may
// read an event (RESUME) before the greeting, and such a connection can
// then hang; Dial connects again. A line that is neither stays a protocol
// error.
func TestEventBeforeGreeting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "early.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			f := &fakeConn{t: t, nc: nc, br: bufio.NewReader(nc)}
			if conns.Add(1) == 1 {
				// The first connection: an event, a greeting, then
				// silence, as QEMU 7.2 was seen to do at start-up.
				f.sendLine(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}`)
				f.sendLine(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}`)
				defer nc.Close()
				continue
			}
			go func() {
				defer nc.Close()
				f.answerAll()
			}()
		}
	}()
	c := dialFake(t, path, Options{})
	if n := conns.Load(); n != 2 {
		t.Errorf("Dial connected %d times, want 2", n)
	}
	if err := c.Execute(testCtx(t, 5*time.Second), "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}

	bad := startFake(t, func(f *fakeConn) {
		f.sendLine(`{"return": {}}`)
		f.recv()
	})
	_, err = Dial(testCtx(t, 5*time.Second), bad, Options{})
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("Dial to a server without greeting: %v, want ErrProtocol", err)
	}
}

// TestHandshakeHang: a connection whose qmp_capabilities QEMU never
// answers (seen on 10.0 at start-up, after a normal greeting) is given up
// after handshakeWait and Dial connects again; a peer that never answers
// costs the caller's whole context and no more.
func TestHandshakeHang(t *testing.T) {
	defer func(w time.Duration) { handshakeWait = w }(handshakeWait)
	handshakeWait = 50 * time.Millisecond
	silent := make(chan struct{})
	defer close(silent)
	// serve answers every connection after the first `mute` ones, which
	// greet, take qmp_capabilities in and say no more.
	serve := func(mute int32) (path string, conns *atomic.Int32) {
		path = filepath.Join(t.TempDir(), "hang.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		conns = new(atomic.Int32)
		go func() {
			for {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				f := &fakeConn{t: t, nc: nc, br: bufio.NewReader(nc)}
				n := conns.Add(1)
				go func() {
					defer nc.Close()
					if mute < 0 || n <= mute {
						f.sendLine(`{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}`)
						f.recv()
						<-silent
						return
					}
					f.answerAll()
				}()
			}
		}()
		return path, conns
	}

	path, conns := serve(2)
	start := time.Now()
	c, err := Dial(testCtx(t, 10*time.Second), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := conns.Load(); n != 3 {
		t.Errorf("Dial connected %d times, want 3", n)
	}
	// 50 ms, then 100 ms: the bound doubles.
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("Dial gave the silent connections %v in all, want at least 150ms", d)
	}
	if err := c.Execute(testCtx(t, 5*time.Second), "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}

	// A peer that never answers: Dial gives up with the caller's context.
	path, conns = serve(-1)
	ctx := testCtx(t, 300*time.Millisecond)
	_, err = Dial(ctx, path, Options{})
	if err == nil || ctx.Err() == nil {
		t.Fatalf("Dial to a mute peer returned %v before its context ended", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial to a mute peer: %v, want the context's deadline", err)
	}
	if n := conns.Load(); n < 2 {
		t.Errorf("Dial to a mute peer connected %d times, want at least 2", n)
	}
}

// TestDialBacklogFull: QEMU listens with a backlog of one; while
// connections it has not accepted fill it, a connect fails with EAGAIN,
// and Dial tries again until QEMU accepts.
func TestDialBacklogFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "backlog.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(os.NewFile(uintptr(fd), path))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Fill the backlog with connections nobody accepts yet.
	var fillers []net.Conn
	for {
		c, err := net.Dial("unix", path)
		if err != nil {
			if !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("filling the backlog: %v", err)
			}
			break
		}
		fillers = append(fillers, c)
		if len(fillers) > 8 {
			t.Skip("the kernel queues more connections than the backlog asks")
		}
	}
	defer func() {
		for _, c := range fillers {
			c.Close()
		}
	}()
	go func() {
		time.Sleep(150 * time.Millisecond)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			f := &fakeConn{t: t, nc: nc, br: bufio.NewReader(nc)}
			go func() {
				defer nc.Close()
				f.answerAll()
			}()
		}
	}()
	c, err := Dial(testCtx(t, 10*time.Second), path, Options{})
	if err != nil {
		t.Fatalf("Dial while the backlog was full: %v", err)
	}
	c.Close()
}
