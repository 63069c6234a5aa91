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
}

// ErrAgentGone means the channel to the agent closed or broke.
var ErrAgentGone = errors.New("guest agent connection closed")

// NewClient serves conn until it closes.
func NewClient(conn io.ReadWriter) *Client {
	c := &Client{w: conn, pending: map[string]chan Frame{}, Logs: make(chan Frame, 256),
		Ready: make(chan struct{}), done: make(chan struct{})}
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
			c.ready.Do(func() { close(c.Ready) })
		case TypeLog:
			select {
			case c.Logs <- f:
			default:
			}
		case TypeResponse, TypeError:
			c.mu.Lock()
			ch := c.pending[f.ID]
			delete(c.pending, f.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- f
			}
		}
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

// Invoke sends one invocation and waits for its response or error frame.
// The agent enforces timeout (its deadline); ctx bounds the wait here. An
// error return means no result came (the channel broke: ErrAgentGone, or
// the agent broke the protocol: ErrProtocol; or ctx ended); a handler
// error or a timeout is a Frame of TypeError.
func (c *Client) Invoke(ctx context.Context, id string, payload []byte, timeout time.Duration) (Frame, error) {
	if len(payload) > MaxPayload {
		return Frame{}, fmt.Errorf("invoke %s: payload of %d bytes exceeds the %d-byte limit", id, len(payload), MaxPayload)
	}
	ch := make(chan Frame, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return Frame{}, c.err
	}
	if c.pending[id] != nil {
		c.mu.Unlock()
		return Frame{}, fmt.Errorf("invoke %s: already waiting for that ID", id)
	}
	c.pending[id] = ch
	c.mu.Unlock()
	f := Frame{Header: Header{Type: TypeInvoke, ID: id, DeadlineMs: time.Now().Add(timeout).UnixMilli()}, Body: payload}
	c.wmu.Lock()
	err := WriteFrame(c.w, f)
	c.wmu.Unlock()
	if err != nil {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return Frame{}, fmt.Errorf("invoke %s: %w: %v", id, ErrAgentGone, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			c.mu.Lock()
			defer c.mu.Unlock()
			return Frame{}, fmt.Errorf("invoke %s: %w", id, c.err)
		}
		return r, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return Frame{}, fmt.Errorf("invoke %s: %w", id, ctx.Err())
	}
}
