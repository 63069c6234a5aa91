package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Client is the host's end of the channel to a guest agent: it sends
// invocations and routes their results back by ID. Logs and the ready
// notice arrive on their channels; a reader that falls behind loses log
// lines, never results.
type Client struct {
	w       io.Writer
	wmu     sync.Mutex
	mu      sync.Mutex
	pending map[string]chan Frame
	err     error // set when the channel broke
	// Logs carries the task's output lines.
	Logs chan Frame
	// Ready is closed when the task first asks for an invocation.
	Ready chan struct{}
	ready sync.Once
	done  chan struct{}
	// Profiles carries the agent's TypeProfile frames; a reader that
	// falls behind loses profiles, never results.
	Profiles chan Frame
	// Restored is closed when the agent answers a restored VM's hello
	// (TypeRestored); restoredFrame is that answer.
	Restored      chan struct{}
	restoredOnce  sync.Once
	restoredFrame Frame
	snapStart     bool
}

// controlKey is where pending holds the waiter for a checkpoint's or an
// artifact's answer, by its frame type: one request of each kind at a
// time. The NUL keeps it apart from every invocation ID.
func controlKey(answer string) string { return "\x00" + answer }

// ErrAgentGone means the channel to the agent closed or broke.
var ErrAgentGone = errors.New("guest agent connection closed")

// NewClient serves conn until it closes.
func NewClient(conn io.ReadWriter) *Client {
	c := &Client{w: conn, pending: map[string]chan Frame{}, Logs: make(chan Frame, 256),
		Ready: make(chan struct{}), done: make(chan struct{}), Profiles: make(chan Frame, 8),
		Restored: make(chan struct{})}
	go c.read(conn)
	return c
}

func (c *Client) read(r io.Reader) {
	defer close(c.done)
	for {
		f, err := ReadFrame(r)
		if err != nil {
			c.mu.Lock()
			c.err = fmt.Errorf("%w: %v", ErrAgentGone, err)
			if errors.Is(err, ErrProtocol) {
				// The peer broke the framing (a declared length over the
				// limits, a header that is not JSON): not a connection
				// that broke under a live agent, which redials and is
				// asked again, but a guest that is not to be trusted.
				// Say so (no ErrAgentGone), and close the stream rather
				// than leave the peer writing into a socket nobody reads.
				c.err = err
				if cl, ok := r.(io.Closer); ok {
					cl.Close()
				}
			}
			for id, ch := range c.pending {
				close(ch)
				delete(c.pending, id)
			}
			c.mu.Unlock()
			return
		}
		switch f.Type {
		case TypeReady:
			c.ready.Do(func() {
				c.mu.Lock()
				c.snapStart = f.SnapStart
				c.mu.Unlock()
				close(c.Ready)
			})
		case TypeRestored:
			c.restoredOnce.Do(func() {
				c.restoredFrame = f
				close(c.Restored)
			})
		case TypeProfile:
			select {
			case c.Profiles <- f:
			default:
			}
		case TypeCheckpoint, TypeArtifact:
			c.deliver(controlKey(f.Type), f)
		case TypeLog:
			select {
			case c.Logs <- f:
			default:
			}
		case TypeResponse, TypeError:
			c.deliver(f.ID, f)
		}
	}
}

// deliver hands f to the request waiting under key, if one is.
func (c *Client) deliver(key string, f Frame) {
	c.mu.Lock()
	ch := c.pending[key]
	delete(c.pending, key)
	c.mu.Unlock()
	if ch != nil {
		ch <- f
	}
}

// Hello sends the host's clock and a fresh entropy seed; a host sends it
// on every connection, so a restored guest fixes its clock and stops
// sharing random state with its siblings before its first invocation.
func (c *Client) Hello(seed []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return WriteFrame(c.w, Frame{Header: Header{Type: TypeHello, TimeNs: time.Now().UnixNano()}, Body: seed})
}

// SnapStart reports whether the task, by its first request, speaks
// SnapStart (valid once Ready is closed).
func (c *Client) SnapStart() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapStart
}

// RestoredFrame is the agent's TypeRestored answer, once Restored is
// closed: an ErrorType says an after-restore hook failed.
func (c *Client) RestoredFrame() Frame { return c.restoredFrame }

// Checkpoint asks the agent to get the task to a point where a snapshot
// may be cut and waits for its answer (ctx bounds the wait: a hook that
// hangs). The answer's ErrorType says why not; its SnapStart says the
// task's before-snapshot hooks ran.
func (c *Client) Checkpoint(ctx context.Context) (Frame, error) {
	return c.roundTrip(ctx, TypeCheckpoint, controlKey(TypeCheckpoint), Frame{Header: Header{Type: TypeCheckpoint}})
}

// Collect asks the agent for the artifact name (a tar stream).
func (c *Client) Collect(ctx context.Context, name string) (Frame, error) {
	return c.roundTrip(ctx, TypeCollect, controlKey(TypeArtifact), Frame{Header: Header{Type: TypeCollect, Name: name}})
}

// roundTrip sends f and waits for the frame that answers it, routed to
// pending[key]: an invocation's ID, or a control request's controlKey.
// verb starts its errors.
func (c *Client) roundTrip(ctx context.Context, verb, key string, f Frame) (Frame, error) {
	ch := make(chan Frame, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return Frame{}, c.err
	}
	if c.pending[key] != nil {
		c.mu.Unlock()
		return Frame{}, fmt.Errorf("%s: already waiting for its answer", verb)
	}
	c.pending[key] = ch
	c.mu.Unlock()
	drop := func() {
		c.mu.Lock()
		if c.pending[key] == ch {
			delete(c.pending, key)
		}
		c.mu.Unlock()
	}
	c.wmu.Lock()
	err := WriteFrame(c.w, f)
	c.wmu.Unlock()
	if err != nil {
		drop()
		return Frame{}, fmt.Errorf("%s: %w: %v", verb, ErrAgentGone, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			c.mu.Lock()
			defer c.mu.Unlock()
			return Frame{}, fmt.Errorf("%s: %w", verb, c.err)
		}
		return r, nil
	case <-ctx.Done():
		drop()
		return Frame{}, fmt.Errorf("%s: %w", verb, ctx.Err())
	}
}

// Invoke sends one invocation and waits for its response or error frame.
// The agent enforces timeout (its deadline); ctx bounds the wait here. An
// error return means no result came (the channel broke: ErrAgentGone, or
// the agent broke the protocol: ErrProtocol; or ctx ended); a handler
// error or a timeout is a Frame of TypeError.
func (c *Client) Invoke(ctx context.Context, id string, payload []byte, timeout time.Duration) (Frame, error) {
	if len(payload) > MaxPayload {
		return Frame{}, fmt.Errorf("invoke %s: payload of %d bytes exceeds the %d-byte limit", id, len(payload), MaxPayload)
	}
	f := Frame{Header: Header{Type: TypeInvoke, ID: id, DeadlineMs: time.Now().Add(timeout).UnixMilli()}, Body: payload}
	return c.roundTrip(ctx, "invoke "+id, id, f)
}
