package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"
)

// DefaultThawTimeout bounds the thaw that WithFrozenFilesystems always
// sends, whatever happened to its context.
const DefaultThawTimeout = 30 * time.Second

// gaDelimiter is the byte qemu-ga sends before the reply to
// guest-sync-delimited, and that a client sends to reset the agent's JSON
// parser. It cannot occur in UTF-8 JSON.
const gaDelimiter = 0xFF

// Filesystem freeze states reported by guest-fsfreeze-status.
const (
	FSThawed = "thawed"
	FSFrozen = "frozen"
)

// GuestAgent is a client of the QEMU guest agent (qemu-ga) over the host
// side of its virtio-serial channel, usually a unix socket. Unlike QMP the
// agent sends no greeting and echoes no ids, and the channel may hold
// stale replies from an earlier client or from a call that timed out; so
// the client resynchronises with guest-sync-delimited before its first
// command and after any call that did not complete. Calls are serialised.
// A GuestAgent is safe for concurrent use.
type GuestAgent struct {
	nc  net.Conn
	lr  *lineReader
	sem chan struct{}

	synced bool // guarded by sem
}

// DialGuestAgent connects to the agent's unix socket at path and
// synchronises within ctx. With no agent running in the guest, the
// connection succeeds but the synchronisation times out with ctx.
func DialGuestAgent(ctx context.Context, path string) (*GuestAgent, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: guest agent: dial %s: %w", path, err)
	}
	g := NewGuestAgent(nc)
	if err := g.Sync(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("qmp: guest agent %s: %w", path, err)
	}
	return g, nil
}

// NewGuestAgent wraps an established stream to the agent. The first call
// synchronises.
func NewGuestAgent(nc net.Conn) *GuestAgent {
	return &GuestAgent{
		nc:  nc,
		lr:  newLineReader(nc, DefaultMaxLineSize),
		sem: make(chan struct{}, 1),
	}
}

// Close closes the connection.
func (g *GuestAgent) Close() error { return g.nc.Close() }

func (g *GuestAgent) lock(ctx context.Context) error {
	select {
	case g.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *GuestAgent) unlock() { <-g.sem }

// Sync runs the guest-sync-delimited handshake: it sends 0xFF (flushing
// any partial command in the agent), then the command with a random id,
// and discards everything up to the 0xFF the agent puts before the reply,
// and any reply whose id is not the one sent.
func (g *GuestAgent) Sync(ctx context.Context) error {
	if err := g.lock(ctx); err != nil {
		return err
	}
	defer g.unlock()
	return g.syncLocked(ctx)
}

func (g *GuestAgent) syncLocked(ctx context.Context) (err error) {
	g.synced = false
	rstop := interruptIO(ctx, g.nc.SetReadDeadline)
	defer rstop()
	wstop := interruptIO(ctx, g.nc.SetWriteDeadline)
	defer wstop()

	id := rand.Int64N(1 << 52) // exact in a float64, as the agent's parser needs
	line, _ := json.Marshal(command0{Execute: "guest-sync-delimited", Arguments: map[string]int64{"id": id}})
	msg := append([]byte{gaDelimiter}, line...)
	if _, err := g.nc.Write(append(msg, '\n')); err != nil {
		return ctxErr(ctx, fmt.Errorf("guest-sync-delimited: %w", err))
	}
	for {
		if err := g.skipToDelimiter(); err != nil {
			return ctxErr(ctx, fmt.Errorf("guest-sync-delimited: %w", err))
		}
		reply, err := g.lr.readLine()
		if err != nil {
			return ctxErr(ctx, fmt.Errorf("guest-sync-delimited: %w", err))
		}
		var r struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(reply, &r) == nil && r.Return != nil && *r.Return == id {
			g.synced = true
			return nil
		}
		// A stale reply to an earlier sync: keep looking.
	}
}

// skipToDelimiter discards input up to and including the next 0xFF.
func (g *GuestAgent) skipToDelimiter() error {
	for {
		_, err := g.lr.br.ReadSlice(gaDelimiter)
		if err == nil {
			return nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

// command0 is a guest agent command; the agent needs no id.
type command0 struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

// Execute runs an agent command and decodes its "return" into result (nil
// to ignore). An error reply is returned as *Error. A call that fails
// half-way (context, I/O) leaves the channel unsynchronised; the next call
// synchronises again first.
func (g *GuestAgent) Execute(ctx context.Context, name string, args, result any) error {
	if err := g.lock(ctx); err != nil {
		return fmt.Errorf("qmp: guest agent %s: %w", name, err)
	}
	defer g.unlock()
	if !g.synced {
		if err := g.syncLocked(ctx); err != nil {
			return fmt.Errorf("qmp: guest agent %s: %w", name, err)
		}
	}
	g.synced = false // until the reply has been read whole

	line, err := json.Marshal(command0{Execute: name, Arguments: args})
	if err != nil {
		return fmt.Errorf("qmp: guest agent %s: %w", name, err)
	}
	rstop := interruptIO(ctx, g.nc.SetReadDeadline)
	defer rstop()
	wstop := interruptIO(ctx, g.nc.SetWriteDeadline)
	defer wstop()
	if _, err := g.nc.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("qmp: guest agent %s: %w", name, ctxErr(ctx, err))
	}
	reply, err := g.lr.readLine()
	if err != nil {
		return fmt.Errorf("qmp: guest agent %s: %w", name, ctxErr(ctx, err))
	}
	var m wireMsg
	if err := json.Unmarshal(reply, &m); err != nil {
		return fmt.Errorf("%w: guest agent %s: %v", ErrProtocol, name, err)
	}
	g.synced = true
	if m.Error != nil {
		return &Error{Command: name, Class: m.Error.Class, Desc: m.Error.Desc}
	}
	if m.Return == nil {
		return fmt.Errorf("%w: guest agent %s: reply has neither return nor error", ErrProtocol, name)
	}
	if result != nil {
		if err := json.Unmarshal(m.Return, result); err != nil {
			return fmt.Errorf("qmp: guest agent %s: decoding reply: %w", name, err)
		}
	}
	return nil
}

// FsfreezeFreeze freezes the guest's filesystems and returns how many were
// frozen. On failure the agent thaws what it froze.
func (g *GuestAgent) FsfreezeFreeze(ctx context.Context) (int, error) {
	var n int
	err := g.Execute(ctx, "guest-fsfreeze-freeze", nil, &n)
	return n, err
}

// FsfreezeThaw thaws the guest's filesystems and returns how many were
// thawed. Thawing thawed filesystems is not an error.
func (g *GuestAgent) FsfreezeThaw(ctx context.Context) (int, error) {
	var n int
	err := g.Execute(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}

// FsfreezeStatus returns FSThawed or FSFrozen.
func (g *GuestAgent) FsfreezeStatus(ctx context.Context) (string, error) {
	var s string
	err := g.Execute(ctx, "guest-fsfreeze-status", nil, &s)
	return s, err
}

// fnOutcome is how the function run by WithFrozenFilesystems ended.
type fnOutcome struct {
	err      error
	panicVal any
	panicked bool
}

// WithFrozenFilesystems freezes the guest's filesystems, runs fn, and
// thaws them on every path: fn returning, fn panicking (the panic is
// re-raised after the thaw), the freeze itself failing or timing out (the
// agent may have frozen anyway), and ctx being cancelled, in which case
// the thaw is sent at once, without waiting for fn, and fn's return is
// then awaited. The thaw has its own DefaultThawTimeout. A failed thaw is
// reported joined with fn's error, saying the guest may still be frozen.
func WithFrozenFilesystems(ctx context.Context, g *GuestAgent, fn func(ctx context.Context) error) error {
	thaw := func() error {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultThawTimeout)
		defer cancel()
		if _, err := g.FsfreezeThaw(tctx); err != nil {
			return fmt.Errorf("qmp: guest filesystems may still be frozen: %w", err)
		}
		return nil
	}
	if _, err := g.FsfreezeFreeze(ctx); err != nil {
		return errors.Join(fmt.Errorf("qmp: freezing guest filesystems: %w", err), thaw())
	}

	done := make(chan fnOutcome, 1)
	go func() {
		var out fnOutcome
		defer func() {
			if r := recover(); r != nil {
				out = fnOutcome{panicVal: r, panicked: true}
			}
			done <- out
		}()
		out.err = fn(ctx)
	}()

	var out fnOutcome
	var thawErr error
	select {
	case out = <-done:
		thawErr = thaw()
	case <-ctx.Done():
		thawErr = thaw()
		out = <-done
		if out.err == nil && !out.panicked {
			out.err = fmt.Errorf("qmp: frozen section: %w", ctx.Err())
		}
	}
	if out.panicked {
		// Re-raise the original value, so callers' recover sees what fn
		// panicked with. fn ran on another goroutine; its stack is lost.
		panic(out.panicVal)
	}
	return errors.Join(out.err, thawErr)
}
