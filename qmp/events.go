package qmp

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// Event is an asynchronous QMP event.
type Event struct {
	// Name is the event name, e.g. "JOB_STATUS_CHANGE".
	Name string
	// Data is the event's "data" object, undecoded (may be nil).
	Data json.RawMessage
	// Time is QEMU's timestamp of the event.
	Time time.Time
}

// DecodeData decodes the event's data into v.
func (e Event) DecodeData(v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	return json.Unmarshal(e.Data, v)
}

// Subscription is a stream of events from one Conn. Each subscription has
// its own buffer (Options.EventBuffer events); when it is full, further
// events for this subscription are dropped and counted, so a slow reader
// never holds up replies or other subscribers.
type Subscription struct {
	s *subscriber
	c chan Event
}

// subscriber is the Conn-side half of a subscription. Its fields are
// guarded by Conn.mu.
type subscriber struct {
	conn    *Conn
	names   map[string]bool // nil: every event
	deliver func(Event) bool
	close   func()
	closed  bool
	dropped atomic.Uint64
	stopCtx func() bool
}

func (s *subscriber) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	s.close()
}

// Subscribe returns a subscription to the events named (all events when
// none is named). Its channel is closed when ctx ends, when Close is
// called, or when the connection closes. If the connection is already
// closed, Subscribe returns an error wrapping ErrClosed.
func (c *Conn) Subscribe(ctx context.Context, names ...string) (*Subscription, error) {
	ch := make(chan Event, c.opts.EventBuffer)
	s := &subscriber{
		conn: c,
		deliver: func(ev Event) bool {
			select {
			case ch <- ev:
				return true
			default:
				return false
			}
		},
		close: func() { close(ch) },
	}
	if len(names) > 0 {
		s.names = make(map[string]bool, len(names))
		for _, n := range names {
			s.names[n] = true
		}
	}
	if err := c.addSubscriber(ctx, s); err != nil {
		return nil, err
	}
	return &Subscription{s: s, c: ch}, nil
}

func (c *Conn) addSubscriber(ctx context.Context, s *subscriber) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.subs[s] = struct{}{}
	s.stopCtx = context.AfterFunc(ctx, func() { c.removeSubscriber(s) })
	return nil
}

func (c *Conn) removeSubscriber(s *subscriber) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.subs, s)
	s.closeLocked()
}

// C returns the channel events are delivered on.
func (s *Subscription) C() <-chan Event { return s.c }

// Dropped returns how many events this subscription lost to a full buffer.
func (s *Subscription) Dropped() uint64 { return s.s.dropped.Load() }

// Close ends the subscription and closes its channel. It is safe to call
// more than once.
func (s *Subscription) Close() {
	s.s.stopCtx()
	s.s.conn.removeSubscriber(s.s)
}

// publish hands ev to every interested subscriber without blocking.
func (c *Conn) publish(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		if s.closed || (s.names != nil && !s.names[ev.Name]) {
			continue
		}
		if !s.deliver(ev) {
			s.dropped.Add(1)
			c.dropped.Add(1)
		}
	}
}

// Events returns a channel of every event in go-qemu's form, closed when
// ctx ends or the connection closes. It implements go-qemu's qmp.Monitor;
// unlike SocketMonitor it may be called any number of times, and each
// channel has its own buffer (full buffers drop events, counted in
// Stats.DroppedEvents).
func (c *Conn) Events(ctx context.Context) (<-chan goqmp.Event, error) {
	ch := make(chan goqmp.Event, c.opts.EventBuffer)
	s := &subscriber{
		conn: c,
		deliver: func(ev Event) bool {
			ge := goqmp.Event{Event: ev.Name}
			if len(ev.Data) > 0 {
				_ = json.Unmarshal(ev.Data, &ge.Data)
			}
			ge.Timestamp.Seconds = ev.Time.Unix()
			ge.Timestamp.Microseconds = int64(ev.Time.Nanosecond() / 1000)
			select {
			case ch <- ge:
				return true
			default:
				return false
			}
		},
		close: func() { close(ch) },
	}
	if err := c.addSubscriber(ctx, s); err != nil {
		return nil, err
	}
	return ch, nil
}
