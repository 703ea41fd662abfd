package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// Limits and defaults of a Conn.
const (
	// MinMaxLineSize is the smallest line bound a Conn accepts: QEMU's
	// replies to query-named-block-nodes or query-qmp-schema on a large VM
	// run to megabytes, so smaller bounds are raised to this.
	MinMaxLineSize = 16 << 20
	// DefaultMaxLineSize is the line bound when Options.MaxLineSize is zero.
	DefaultMaxLineSize = 64 << 20
	// DefaultEventBuffer is the per-subscriber event buffer when
	// Options.EventBuffer is zero.
	DefaultEventBuffer = 4096
	// maxNotReadyDials and notReadyDelay bound how often and how fast Dial
	// connects again to a QEMU whose monitor is still starting.
	maxNotReadyDials = 50
	notReadyDelay    = 20 * time.Millisecond
	// maxHandshakeWait caps the bound of one handshake attempt in Dial.
	maxHandshakeWait = 16 * time.Second
	// DefaultCallTimeout bounds the calls that take no context (the
	// go-qemu Monitor methods Connect and Run) when Options.CallTimeout is
	// zero.
	DefaultCallTimeout = 60 * time.Second
)

// Options configure a Conn. The zero value is ready to use.
type Options struct {
	// MaxLineSize bounds the length of one reply or event line. Zero means
	// DefaultMaxLineSize; values below MinMaxLineSize are raised to it. A
	// longer line closes the connection with ErrLineTooLong.
	MaxLineSize int
	// EventBuffer is how many events each subscriber may have queued before
	// further events for it are dropped (and counted). Zero means
	// DefaultEventBuffer.
	EventBuffer int
	// CallTimeout bounds Connect and Run, which have no context parameter
	// because go-qemu's Monitor interface has none. Zero means
	// DefaultCallTimeout.
	CallTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.MaxLineSize == 0 {
		o.MaxLineSize = DefaultMaxLineSize
	}
	if o.MaxLineSize < MinMaxLineSize {
		o.MaxLineSize = MinMaxLineSize
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	return o
}

// Greeting is what QEMU announces when a client connects.
type Greeting struct {
	// Version is QEMU's version.
	Version goqmp.Version `json:"version"`
	// Capabilities lists optional protocol features offered ("oob").
	// None is enabled by this package.
	Capabilities []string `json:"capabilities"`
}

// Stats counts what a Conn received but could not deliver.
type Stats struct {
	// UnmatchedReplies counts replies whose id matched no waiting call,
	// usually replies that arrived after their call's context ended.
	UnmatchedReplies uint64
	// DroppedEvents counts events dropped, over all subscribers, because a
	// subscriber's buffer was full.
	DroppedEvents uint64
}

// Conn is a QMP client connection. It implements go-qemu's qmp.Monitor, so
// raw.NewMonitor(conn) runs go-qemu's generated commands over it, and adds
// what go-qemu's SocketMonitor lacks: every command carries an id and its
// reply is routed by that id, so calls from many goroutines run
// concurrently; lines up to Options.MaxLineSize are read; every call takes
// a context; events go to per-subscriber buffers and never hold up
// replies; QMP errors come back as *Error; and when the socket closes
// every waiting call fails at once with an error wrapping ErrClosed.
//
// A Conn is safe for concurrent use.
type Conn struct {
	nc   net.Conn
	opts Options

	// wsem serialises writes; a channel so that waiting for it obeys a
	// context.
	wsem chan struct{}

	nextID atomic.Uint64

	mu        sync.Mutex
	connected bool
	greeting  Greeting
	pending   map[string]chan reply
	subs      map[*subscriber]struct{}
	err       error // why the connection closed; set once

	done      chan struct{} // closed when the connection is finished
	readerOut chan struct{} // closed when the read loop returns
	finish    sync.Once

	unmatched atomic.Uint64
	dropped   atomic.Uint64
}

var _ goqmp.Monitor = (*Conn)(nil)

// reply is one routed reply line.
type reply struct {
	line []byte
	ret  json.RawMessage
	err  *Error
}

// NewConn wraps an established stream (usually a unix socket) to a QMP
// server. The handshake has not happened yet: call Connect or
// ConnectContext before anything else.
func NewConn(nc net.Conn, opts Options) *Conn {
	return &Conn{
		nc:        nc,
		opts:      opts.withDefaults(),
		wsem:      make(chan struct{}, 1),
		pending:   make(map[string]chan reply),
		subs:      make(map[*subscriber]struct{}),
		done:      make(chan struct{}),
		readerOut: make(chan struct{}),
	}
}

// Dial connects to the QMP unix socket at path and performs the handshake
// (greeting and qmp_capabilities) within ctx.
//
// A handshake that QEMU leaves unanswered for handshakeWait (doubling with
// each attempt) is given up and Dial connects again, as long as ctx has
// time left: a connection made while QEMU starts can hang for good on
// qmp_capabilities (seen on 7.2 and 10.0), while a new one is answered.
// A QEMU that is merely slow to start costs only the new connections.
func Dial(ctx context.Context, path string, opts Options) (*Conn, error) {
	wait := handshakeWait
	for attempt := 1; ; attempt++ {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", path)
		if errors.Is(err, syscall.EAGAIN) && attempt < maxNotReadyDials {
			// QEMU listens with a backlog of one, and a connection it
			// has not accepted yet (one given up above, or another
			// client's) fills it until its main loop runs.
			select {
			case <-ctx.Done():
			case <-time.After(notReadyDelay):
				continue
			}
		}
		if err != nil {
			return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
		}
		c := NewConn(nc, opts)
		actx, cancel := context.WithTimeout(ctx, wait)
		err = c.ConnectContext(actx)
		hung := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return c, nil
		}
		if hung {
			err = fmt.Errorf("%w: no answer in %v (%v)", ErrNotReady, wait, err)
			wait = min(2*wait, maxHandshakeWait)
		}
		if !errors.Is(err, ErrNotReady) || attempt == maxNotReadyDials {
			return nil, fmt.Errorf("qmp: %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: %s: %w", path, err)
		case <-time.After(notReadyDelay):
		}
	}
}

// Connect performs the QMP handshake, bounded by Options.CallTimeout. It
// implements go-qemu's qmp.Monitor.
func (c *Conn) Connect() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.CallTimeout)
	defer cancel()
	return c.ConnectContext(ctx)
}

// handshakeWait bounds Dial's first handshake attempt; a variable so that
// tests can shorten it.
var handshakeWait = 2 * time.Second

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// ConnectContext reads the greeting, enables commands with
// qmp_capabilities and starts the read loop. If it fails the connection is
// closed.
func (c *Conn) ConnectContext(ctx context.Context) (err error) {
	c.mu.Lock()
	if c.connected || c.err != nil {
		c.mu.Unlock()
		return errors.New("qmp: Connect called twice")
	}
	c.connected = true
	c.mu.Unlock()

	defer func() {
		if err != nil {
			c.closeWith(err)
			c.finishOnce()
		}
	}()

	stop := interruptIO(ctx, c.nc.SetReadDeadline)
	lr := newLineReader(c.nc, c.opts.MaxLineSize)
	var g struct {
		QMP   *Greeting `json:"QMP"`
		Event string    `json:"event"`
	}
	line, err := lr.readLine()
	if err != nil {
		stop()
		return ctxErr(ctx, fmt.Errorf("reading greeting: %w", err))
	}
	if json.Unmarshal(line, &g) == nil && g.QMP == nil && g.Event != "" {
		// QEMU emits events to a monitor that is still in command mode
		// from its start-up, before it has set the new connection up;
		// such a connection can then hang. Dial connects again.
		stop()
		return fmt.Errorf("%w: event %s before the greeting", ErrNotReady, g.Event)
	}
	if g.QMP == nil {
		stop()
		return fmt.Errorf("%w: unexpected greeting %.200q", ErrProtocol, line)
	}

	id := c.newID()
	cmd, _ := json.Marshal(command{Execute: "qmp_capabilities", ID: id})
	wstop := interruptIO(ctx, c.nc.SetWriteDeadline)
	_, err = c.nc.Write(append(cmd, '\n'))
	wstop()
	if err != nil {
		stop()
		return ctxErr(ctx, fmt.Errorf("sending qmp_capabilities: %w", err))
	}
	for {
		line, err = lr.readLine()
		if err != nil {
			stop()
			return ctxErr(ctx, fmt.Errorf("reading qmp_capabilities reply: %w", err))
		}
		var m wireMsg
		if err := json.Unmarshal(line, &m); err != nil {
			stop()
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if m.Event != "" {
			continue // no events are sent before capabilities, but be lenient
		}
		if m.Error != nil {
			stop()
			return &Error{Command: "qmp_capabilities", Class: m.Error.Class, Desc: m.Error.Desc}
		}
		break
	}
	stop()

	c.mu.Lock()
	c.greeting = *g.QMP
	c.mu.Unlock()
	go c.readLoop(lr)
	return nil
}

// interruptIO arranges for blocked I/O to fail when ctx ends, by moving the
// deadline (set with setDeadline) into the past. The returned stop clears
// the deadline again once the I/O is over.
func interruptIO(ctx context.Context, setDeadline func(time.Time) error) (stop func()) {
	// Only the context's own end moves the deadline: a socket deadline
	// copied from ctx.Deadline() can fire a moment before ctx.Err() is
	// set, and callers test ctx.Err() to tell a timeout from a failure.
	var mu sync.Mutex
	active := true
	stopAfter := context.AfterFunc(ctx, func() {
		mu.Lock()
		if active {
			_ = setDeadline(aLongTimeAgo)
		}
		mu.Unlock()
	})
	return func() {
		mu.Lock()
		active = false
		mu.Unlock()
		stopAfter()
		_ = setDeadline(time.Time{})
	}
}

// ctxErr prefers the context's error when the context has ended, since an
// I/O timeout caused by an expired context is really the context's doing.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// Greeting returns what the server announced on connect.
func (c *Conn) Greeting() Greeting {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.greeting
}

// Stats returns counters of undelivered replies and events.
func (c *Conn) Stats() Stats {
	return Stats{UnmatchedReplies: c.unmatched.Load(), DroppedEvents: c.dropped.Load()}
}

// Done returns a channel closed when the connection has closed and every
// waiter has been failed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection closed (wrapping ErrClosed), or nil while
// it is open.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Disconnect closes the connection. Calls in flight fail with an error
// wrapping ErrClosed and ErrDisconnected; event channels are closed. It
// implements go-qemu's qmp.Monitor and is safe to call more than once.
func (c *Conn) Disconnect() error {
	c.closeWith(ErrDisconnected)
	c.mu.Lock()
	started := c.connected
	c.mu.Unlock()
	if started {
		select {
		case <-c.readerOut:
		case <-c.done:
		}
	}
	c.finishOnce()
	return nil
}

// Close is Disconnect, for use with defer and io.Closer.
func (c *Conn) Close() error { return c.Disconnect() }

// closeWith records the first cause and closes the socket, which makes the
// read loop return.
func (c *Conn) closeWith(cause error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %w", ErrClosed, cause)
	}
	c.mu.Unlock()
	_ = c.nc.Close()
}

// finishOnce fails every waiter and closes every subscription.
func (c *Conn) finishOnce() {
	c.finish.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = fmt.Errorf("%w: %w", ErrClosed, ErrDisconnected)
		}
		c.pending = make(map[string]chan reply)
		for s := range c.subs {
			s.stopCtx()
			s.closeLocked()
		}
		c.subs = make(map[*subscriber]struct{})
		close(c.done)
		c.mu.Unlock()
	})
}

// wireMsg is any line QEMU sends: a greeting, a reply or an event.
type wireMsg struct {
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *wireError      `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type wireError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// command is a command line as sent.
type command struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

func (c *Conn) readLoop(lr *lineReader) {
	defer func() {
		close(c.readerOut)
		c.finishOnce()
	}()
	for {
		line, err := lr.readLine()
		if err != nil {
			c.closeWith(err)
			return
		}
		var m wireMsg
		if err := json.Unmarshal(line, &m); err != nil {
			c.closeWith(fmt.Errorf("%w: %v in line %.200q", ErrProtocol, err, line))
			return
		}
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			c.publish(ev)
			continue
		}
		var id string
		if len(m.ID) == 0 || json.Unmarshal(m.ID, &id) != nil {
			c.unmatched.Add(1)
			continue
		}
		r := reply{line: line, ret: m.Return}
		if m.Error != nil {
			r.err = &Error{Class: m.Error.Class, Desc: m.Error.Desc}
		} else if m.Return == nil {
			r.err = &Error{Class: "ProtocolError", Desc: "reply has neither return nor error"}
		}
		c.mu.Lock()
		ch, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if !ok {
			c.unmatched.Add(1)
			continue
		}
		ch <- r // buffered, never blocks
	}
}

func (c *Conn) newID() string {
	return "qchain-" + strconv.FormatUint(c.nextID.Add(1), 10)
}

// roundTrip sends line (a command carrying id) and waits for its reply.
func (c *Conn) roundTrip(ctx context.Context, name, id string, line, oob []byte) (reply, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return reply{}, err
	}
	if !c.connected {
		c.mu.Unlock()
		return reply{}, errors.New("qmp: not connected (call Connect first)")
	}
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	if err := c.writeRights(ctx, line, oob); err != nil {
		forget()
		return reply{}, fmt.Errorf("qmp: %s: %w", name, err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		forget()
		return reply{}, fmt.Errorf("qmp: %s: %w", name, ctx.Err())
	case <-c.done:
		select {
		case r := <-ch:
			return r, nil
		default:
		}
		return reply{}, fmt.Errorf("qmp: %s: %w", name, c.Err())
	}
}

// write sends one line. A write that fails after sending part of the line
// leaves the stream out of step, so it closes the connection.
func (c *Conn) write(ctx context.Context, line []byte) error {
	return c.writeRights(ctx, line, nil)
}

// writeRights sends one line with oob (SCM_RIGHTS control data, or nil)
// attached to its first byte.
func (c *Conn) writeRights(ctx context.Context, line, oob []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.Err()
	}
	defer func() { <-c.wsem }()
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := interruptIO(ctx, c.nc.SetWriteDeadline)
	var n int
	var err error
	if oob != nil {
		uc, ok := c.nc.(*net.UnixConn)
		if !ok {
			stop()
			return errors.New("passing a file needs a unix socket")
		}
		n, _, err = uc.WriteMsgUnix(line, oob, nil)
	} else {
		n, err = c.nc.Write(line)
	}
	stop()
	if err != nil {
		if n > 0 {
			c.closeWith(fmt.Errorf("partial write: %w", err))
		}
		return ctxErr(ctx, err)
	}
	return nil
}

// Run sends a command given as JSON ({"execute": ..., "arguments": ...})
// and returns the whole reply line. Any "id" in cmd is replaced by the
// Conn's own. A QMP error reply is returned as *Error. The call is bounded
// by Options.CallTimeout. Run implements go-qemu's qmp.Monitor.
func (c *Conn) Run(cmd []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.CallTimeout)
	defer cancel()
	return c.RunContext(ctx, cmd)
}

// RunContext is Run with a context.
func (c *Conn) RunContext(ctx context.Context, cmd []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(cmd, &m); err != nil {
		return nil, fmt.Errorf("qmp: command is not a JSON object: %w", err)
	}
	var name string
	if err := json.Unmarshal(m["execute"], &name); err != nil || name == "" {
		return nil, errors.New(`qmp: command has no "execute" string`)
	}
	id := c.newID()
	m["id"], _ = json.Marshal(id)
	line, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", name, err)
	}
	r, err := c.roundTrip(ctx, name, id, append(line, '\n'), nil)
	if err != nil {
		return nil, err
	}
	if r.err != nil {
		r.err.Command = name
		return nil, r.err
	}
	return r.line, nil
}

// Execute runs the command name with args (marshalled to the "arguments"
// object; nil for none) and decodes the "return" value into result (nil to
// ignore it). A QMP error reply is returned as *Error.
func (c *Conn) Execute(ctx context.Context, name string, args, result any) error {
	return c.execute(ctx, name, args, result, nil)
}

// ExecuteWithFile is Execute with f's descriptor passed along (SCM_RIGHTS,
// so only over a unix socket), as getfd and add-fd expect it. QEMU keeps
// its own copy; the caller still owns f.
func (c *Conn) ExecuteWithFile(ctx context.Context, name string, args, result any, f *os.File) error {
	return c.execute(ctx, name, args, result, syscall.UnixRights(int(f.Fd())))
}

func (c *Conn) execute(ctx context.Context, name string, args, result any, oob []byte) error {
	id := c.newID()
	line, err := json.Marshal(command{Execute: name, Arguments: args, ID: id})
	if err != nil {
		return fmt.Errorf("qmp: %s: encoding arguments: %w", name, err)
	}
	r, err := c.roundTrip(ctx, name, id, append(line, '\n'), oob)
	if err != nil {
		return err
	}
	if r.err != nil {
		r.err.Command = name
		return r.err
	}
	if result == nil {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(r.ret))
	if err := dec.Decode(result); err != nil {
		return fmt.Errorf("qmp: %s: decoding reply: %w", name, err)
	}
	return nil
}
