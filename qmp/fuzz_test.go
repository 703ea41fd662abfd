package qmp

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"
)

// FuzzReadLoop feeds arbitrary bytes to a connected Conn as if QEMU sent
// them after the handshake. It must not panic or hang: calls end with a
// reply, an error, or ErrClosed.
func FuzzReadLoop(f *testing.F) {
	f.Add([]byte(`{"return": {}, "id": "qchain-2"}` + "\n"))
	f.Add([]byte(`{"event": "X", "data": {"id": "j"}, "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n"))
	f.Add([]byte(`{"error": {"class": "GenericError", "desc": "x"}, "id": "qchain-2"}` + "\r\n"))
	f.Add([]byte(`{"return": 1}` + "\n" + `[1,2]` + "\n"))
	f.Add([]byte("\n\n\xff{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			defer server.Close()
			_, _ = server.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\n"))
			buf := make([]byte, 4096)
			if _, err := server.Read(buf); err != nil {
				return
			}
			_, _ = server.Write([]byte(`{"return": {}, "id": "qchain-1"}` + "\n"))
			go func() {
				for {
					if _, err := server.Read(buf); err != nil {
						return
					}
				}
			}()
			_, _ = server.Write(data)
		}()
		c := NewConn(client, Options{})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := c.ConnectContext(ctx); err != nil {
			t.Fatal(err)
		}
		sub, _ := c.Subscribe(ctx)
		_ = c.Execute(ctx, "x", nil, nil)
		c.Close()
		if sub != nil {
			for range sub.C() {
			}
		}
	})
}

// FuzzGuestAgentSync feeds arbitrary agent output before a valid sync
// reply: the client must find the reply or fail, never panic.
func FuzzGuestAgentSync(f *testing.F) {
	f.Add([]byte(`{"return": 42}` + "\n"))
	f.Add([]byte("\xff{\"return\": 7}\n\xff"))
	f.Fuzz(func(t *testing.T, junk []byte) {
		client, server := net.Pipe()
		go func() {
			defer server.Close()
			buf := make([]byte, 4096)
			n, err := server.Read(buf)
			if err != nil {
				return
			}
			line := bytes.TrimLeft(buf[:n], "\xff")
			go func() {
				for {
					if _, err := server.Read(buf); err != nil {
						return
					}
				}
			}()
			_, _ = server.Write(junk)
			i := bytes.Index(line, []byte(`"id":`))
			if i < 0 {
				return
			}
			id := bytes.TrimRight(line[i+5:], "}\n")
			_, _ = server.Write(append(append([]byte("\xff{\"return\": "), id...), "}\n"...))
		}()
		g := NewGuestAgent(client)
		defer g.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = g.Sync(ctx)
	})
}
