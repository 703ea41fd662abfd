package qmp

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
)

// fakeConn is the server side of a fake QMP (or guest agent) peer.
type fakeConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

// sendLine writes one raw line.
func (f *fakeConn) sendLine(s string) {
	if _, err := f.nc.Write([]byte(s + "\r\n")); err != nil {
		f.t.Logf("fake server write: %v", err)
	}
}

// send writes v as one JSON line.
func (f *fakeConn) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	f.sendLine(string(b))
}

// fakeCmd is a command as the fake server received it.
type fakeCmd struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// recv reads one command line; ok is false when the client has gone.
func (f *fakeConn) recv() (fakeCmd, bool) {
	line, err := f.br.ReadBytes('\n')
	if err != nil {
		return fakeCmd{}, false
	}
	var c fakeCmd
	if err := json.Unmarshal(line, &c); err != nil {
		f.t.Errorf("fake server: bad command %q: %v", line, err)
		return fakeCmd{}, false
	}
	return c, true
}

// reply sends a return value for c, echoing its id.
func (f *fakeConn) reply(c fakeCmd, ret any) {
	f.send(map[string]any{"return": ret, "id": c.ID})
}

// greet sends the QMP greeting and answers qmp_capabilities.
func (f *fakeConn) greet() bool {
	f.sendLine(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`)
	c, ok := f.recv()
	if !ok {
		return false
	}
	if c.Execute != "qmp_capabilities" {
		f.t.Errorf("first command %q, want qmp_capabilities", c.Execute)
	}
	f.reply(c, map[string]any{})
	return true
}

// answerAll greets, then answers every command with an empty return
// until the client goes.
func (f *fakeConn) answerAll() {
	if !f.greet() {
		return
	}
	for {
		c, ok := f.recv()
		if !ok {
			return
		}
		f.reply(c, map[string]any{})
	}
}

// startFake listens on a unix socket and runs serve for the first client
// on its own goroutine. It returns the socket path.
func startFake(t testing.TB, serve func(f *fakeConn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer nc.Close()
		serve(&fakeConn{t: t, nc: nc, br: bufio.NewReader(nc)})
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return path
}
