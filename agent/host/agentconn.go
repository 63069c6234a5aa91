package host

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
)

// Both backends reach their guest agent the same way: kindlingd listens on
// a Unix socket (the process backend's --channel, or the VMM's vsock
// <uds>_1024) and the agent dials it, again and again whenever the
// connection drops (a snapshot restore, a kindlingd restart). agentLink is
// kindlingd's end of that: it accepts every connection, greets it (hello:
// the clock and a fresh entropy seed), runs one invocation at a time over
// the newest, and tells an invocation whose sandbox died from one whose
// connection merely broke.

const (
	// agentReconnectWait bounds how long a live sandbox's agent may take
	// to dial again after its connection broke: kindling-init backs off
	// to at most 1 s between attempts.
	agentReconnectWait = 5 * time.Second
	// logFlushWait bounds how long an invocation's return waits for the
	// log lines that arrived before its result to reach the callback.
	logFlushWait = time.Second
	// maxUnixSocketPath is sun_path's size less its terminating NUL.
	maxUnixSocketPath = 107
	// recentOutputLines is how many of the task's lines outside any
	// invocation are kept for a failed start's error message.
	recentOutputLines = 20
	// maxInvocationLogBytes bounds the output one invocation streams to
	// its caller: the lines after it are dropped, with one marker line
	// (logTruncated). A task (or a hostile guest) that writes without end
	// would otherwise hold kindlingd's reader, pump and the caller's
	// stream busy for its whole timeout. 1 MiB: as much as one line may
	// be (guest.MaxLogLine, the agent's line scanner's limit); Lambda
	// keeps less (4 KiB of tail for LogType=Tail).
	maxInvocationLogBytes = 1 << 20
	// logTruncated starts the marker line of an invocation whose output
	// passed maxInvocationLogBytes.
	logTruncated = "... log truncated"
)

// sandboxError is a sandbox's end, as an error wrapping ErrSandboxCrashed
// or ErrSandboxGone.
type sandboxError struct {
	msg  string
	kind error
}

func (e *sandboxError) Error() string { return e.msg }
func (e *sandboxError) Unwrap() error { return e.kind }

func crashedDuring(sandbox, invocation, reason string) error {
	return &sandboxError{msg: fmt.Sprintf("sandbox %s crashed during invocation %s: %s", sandbox, invocation, reason), kind: ErrSandboxCrashed}
}

// listenAgent listens on the Unix socket path, removing a stale socket
// left by a previous listener.
func listenAgent(path string) (*net.UnixListener, error) {
	if len(path) > maxUnixSocketPath {
		return nil, fmt.Errorf("agent socket %s: path of %d bytes exceeds the %d a Unix socket allows; use a shorter state directory", path, len(path), maxUnixSocketPath)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("agent socket %s: exists and is not a socket (%v)", path, st.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("agent socket %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	return ln, nil
}

// agentLink is kindlingd's end of one sandbox's agent channel.
//
// Lock order: turn (held for a whole invocation or snapshot), then mu,
// then logMu. The log callback is called with logMu held and must not
// call back into the sandbox.
type agentLink struct {
	id   string
	log  *slog.Logger
	ln   *net.UnixListener
	dead *procEnd // the sandbox process's end

	turn     chan struct{} // a token: one invocation (or snapshot) at a time
	flushReq chan chan struct{}
	closed   chan struct{} // closed by close
	acceptWG sync.WaitGroup

	mu       sync.Mutex
	client   *guest.Client
	conn     net.Conn
	changed  chan struct{} // closed, and replaced, when client changes
	pumpStop chan struct{} // stops the current client's log pump
	isClosed bool

	logMu    sync.Mutex
	logs     func(guest.Frame)
	profiles func(guest.Frame)
	recent   []string // the task's last lines outside invocations
}

// newAgentLink starts accepting the agent's connections on ln.
func newAgentLink(id string, log *slog.Logger, ln *net.UnixListener, dead *procEnd) *agentLink {
	l := &agentLink{id: id, log: log, ln: ln, dead: dead, turn: make(chan struct{}, 1),
		flushReq: make(chan chan struct{}), closed: make(chan struct{}), changed: make(chan struct{})}
	l.acceptWG.Add(1)
	go l.acceptLoop()
	return l
}

func (l *agentLink) acceptLoop() {
	defer l.acceptWG.Done()
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
			default:
				l.log.Error("agent socket stopped accepting", "error", err)
			}
			return
		}
		l.attach(conn)
	}
}

// attach greets a new connection from the agent and makes it the current
// one; an invocation waiting on the previous connection asks again on
// this one, by ID.
func (l *agentLink) attach(conn net.Conn) {
	c := guest.NewClient(conn)
	seed := make([]byte, 32)
	rand.Read(seed)
	if err := c.Hello(seed); err != nil {
		l.log.Warn("hello to the guest agent failed; waiting for it to reconnect", "error", err)
		conn.Close()
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isClosed {
		conn.Close()
		return
	}
	if l.conn != nil {
		l.log.Info("guest agent reconnected")
		l.conn.Close()
		close(l.pumpStop)
	}
	l.client, l.conn = c, conn
	l.pumpStop = make(chan struct{})
	go l.pump(c, l.pumpStop)
	close(l.changed)
	l.changed = make(chan struct{})
}

// pump is the one reader of a client's log lines: it hands them to the
// running invocation's callback, or to the debug log between invocations.
func (l *agentLink) pump(c *guest.Client, stop chan struct{}) {
	for {
		select {
		case f := <-c.Logs:
			l.forward(f)
		case f := <-c.Profiles:
			// Off the pump: checking and merging a profile takes a while.
			go l.forwardProfile(f)
		case ack := <-l.flushReq:
			for drained := false; !drained; {
				select {
				case f := <-c.Logs:
					l.forward(f)
				default:
					drained = true
				}
			}
			close(ack)
		case <-stop:
			return
		}
	}
}

func (l *agentLink) forward(f guest.Frame) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if l.logs != nil {
		l.logs(f)
		return
	}
	l.log.Debug("task output between invocations", "stream", f.Stream, "line", string(f.Body))
	if len(l.recent) == recentOutputLines {
		l.recent = l.recent[1:]
	}
	l.recent = append(l.recent, f.Stream+": "+string(f.Body))
}

// recentOutput is the task's last lines outside invocations, for an
// error message ("" if none).
func (l *agentLink) recentOutput() string {
	l.flush()
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if len(l.recent) == 0 {
		return ""
	}
	return "; the task's last output:\n" + strings.Join(l.recent, "\n")
}

func (l *agentLink) setLogs(fn func(guest.Frame)) {
	l.logMu.Lock()
	l.logs = fn
	l.logMu.Unlock()
}

// capLogs passes log lines to fn until their bodies add up to more than
// limit bytes, then passes one marker line (stream "kindling", starting
// with logTruncated) and drops the rest. Its calls are serialised by
// logMu (forward).
func capLogs(fn func(guest.Frame), limit int) func(guest.Frame) {
	if fn == nil {
		return nil
	}
	total, truncated := 0, false
	return func(f guest.Frame) {
		if truncated {
			return
		}
		if total+len(f.Body) > limit {
			truncated = true
			fn(guest.Frame{Header: guest.Header{Type: guest.TypeLog, ID: f.ID, Stream: "kindling"},
				Body: fmt.Appendf(nil, "%s: this invocation's output passed %d bytes; the rest is dropped", logTruncated, limit)})
			return
		}
		total += len(f.Body)
		fn(f)
	}
}

// flush hands the log lines already received to the callback: the client
// queues a result's earlier log lines before the result itself.
func (l *agentLink) flush() {
	ack := make(chan struct{})
	t := time.NewTimer(logFlushWait)
	defer t.Stop()
	select {
	case l.flushReq <- ack:
	case <-t.C:
		return
	case <-l.closed:
		return
	}
	select {
	case <-ack:
	case <-t.C:
	}
}

// current returns the current client (nil before the first connection)
// and the channel closed when it changes.
func (l *agentLink) current() (*guest.Client, chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.client, l.changed
}

// connected waits for the agent's first connection (or, with a timeout,
// for a connection within it).
func (l *agentLink) connected(ctx context.Context, timeout time.Duration) (*guest.Client, error) {
	var limit <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		limit = t.C
	}
	for {
		c, changed := l.current()
		if c != nil {
			return c, nil
		}
		select {
		case <-changed:
		case <-l.dead.done:
			return nil, fmt.Errorf("sandbox %s: %s before its guest agent connected", l.id, l.dead.Reason())
		case <-l.closed:
			return nil, fmt.Errorf("sandbox %s: closed before its guest agent connected", l.id)
		case <-ctx.Done():
			return nil, fmt.Errorf("sandbox %s: waiting for the guest agent to connect: %w", l.id, ctx.Err())
		case <-limit:
			return nil, fmt.Errorf("sandbox %s: the guest agent did not connect within %v", l.id, timeout)
		}
	}
}

// ready waits for the task's first request for an invocation.
func (l *agentLink) ready(ctx context.Context, c *guest.Client) error {
	select {
	case <-c.Ready:
		return nil
	case <-l.dead.done:
		return fmt.Errorf("sandbox %s: %s before its task asked for an invocation%s", l.id, l.dead.Reason(), l.recentOutput())
	case <-l.closed:
		return fmt.Errorf("sandbox %s: closed before its task asked for an invocation", l.id)
	case <-ctx.Done():
		return fmt.Errorf("sandbox %s: waiting for the task to ask for an invocation: %w%s", l.id, ctx.Err(), l.recentOutput())
	}
}

// acquire takes the sandbox's turn: one invocation or snapshot at a time.
func (l *agentLink) acquire(ctx context.Context) error {
	select {
	case l.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sandbox %s: waiting for its running invocation: %w", l.id, ctx.Err())
	}
}

func (l *agentLink) release() { <-l.turn }

// invoke runs one invocation. If the connection breaks, it tells the
// sandbox's death (an error wrapping ErrSandboxCrashed, naming how it
// died) from a connection that broke under a live agent, which redials:
// then it asks again with the same ID, and the agent answers with the
// invocation's one result, finished meanwhile or when it finishes.
func (l *agentLink) invoke(ctx context.Context, id string, payload []byte, timeout time.Duration, logs func(guest.Frame)) (guest.Frame, error) {
	if err := l.acquire(ctx); err != nil {
		return guest.Frame{}, err
	}
	defer l.release()
	select {
	case <-l.dead.done:
		return guest.Frame{}, &sandboxError{msg: fmt.Sprintf("sandbox %s has ended (%s)", l.id, l.dead.Reason()), kind: ErrSandboxGone}
	default:
	}
	l.setLogs(capLogs(logs, maxInvocationLogBytes))
	defer l.setLogs(nil)
	for {
		c, changed := l.current()
		if c == nil {
			if _, err := l.connected(ctx, agentReconnectWait); err != nil {
				return guest.Frame{}, err
			}
			continue
		}
		// The sandbox's death ends the wait whether or not the connection
		// breaks with it.
		ictx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-l.dead.done:
				cancel()
			case <-ictx.Done():
			}
		}()
		f, err := c.Invoke(ictx, id, payload, timeout)
		cancel()
		if err == nil {
			l.flush()
			return f, nil
		}
		if ctx.Err() != nil {
			return guest.Frame{}, fmt.Errorf("sandbox %s: invocation %s: %w", l.id, id, ctx.Err())
		}
		if isDone(l.dead.done) {
			return guest.Frame{}, crashedDuring(l.id, id, l.dead.Reason())
		}
		if errors.Is(err, guest.ErrProtocol) {
			// The guest sent what is not a frame, or one over the
			// limits (refused before it was allocated): the client
			// closed the connection. Not ErrAgentGone, so not waited
			// for and asked again; not ErrSandboxCrashed, as it did not
			// die. The caller stops a sandbox that fails this way.
			return guest.Frame{}, fmt.Errorf("sandbox %s: the guest broke the agent protocol, and its connection was closed: %w", l.id, err)
		}
		if !errors.Is(err, guest.ErrAgentGone) {
			return guest.Frame{}, fmt.Errorf("sandbox %s: %w", l.id, err)
		}
		// The connection broke: the sandbox died, or its agent redials.
		wait := time.NewTimer(agentReconnectWait)
		select {
		case <-l.dead.done:
			wait.Stop()
			return guest.Frame{}, crashedDuring(l.id, id, l.dead.Reason())
		case <-changed:
			wait.Stop()
			l.log.Info("asking the reconnected guest agent again", "invocation", id)
		case <-l.closed:
			wait.Stop()
			return guest.Frame{}, fmt.Errorf("sandbox %s: invocation %s: %w: this kindlingd let go of the sandbox", l.id, id, guest.ErrAgentGone)
		case <-ctx.Done():
			wait.Stop()
			return guest.Frame{}, fmt.Errorf("sandbox %s: invocation %s: %w", l.id, id, ctx.Err())
		case <-wait.C:
			return guest.Frame{}, crashedDuring(l.id, id, fmt.Sprintf("its guest agent's connection broke (%v) and it did not reconnect within %v", err, agentReconnectWait))
		}
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// close stops accepting and drops the connection; the sandbox's process
// is not touched (it redials until someone listens again).
func (l *agentLink) close() {
	l.mu.Lock()
	if l.isClosed {
		l.mu.Unlock()
		return
	}
	l.isClosed = true
	close(l.closed)
	if l.conn != nil {
		l.conn.Close()
		close(l.pumpStop)
	}
	l.mu.Unlock()
	l.ln.Close()
	l.acceptWG.Wait()
}

// abortStart ends a sandbox of either backend that failed to start or
// reattach: its agent link closes and its process is stopped. Its
// directory stays (the caller made it and removes it).
func abortStart(link *agentLink, terminate func(context.Context) error, log *slog.Logger) {
	if link != nil {
		link.close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := terminate(ctx); err != nil {
		log.Warn("stopping a sandbox that failed to start", "error", err)
	}
}

// checkpoint asks the agent to bring the task to where a snapshot may be
// cut (its before-snapshot hooks run), within ctx. It reports whether the
// task's SnapStart hooks ran. The caller holds the turn.
func (l *agentLink) checkpoint(ctx context.Context) (hooks bool, err error) {
	c, err := l.connected(ctx, agentReconnectWait)
	if err != nil {
		return false, err
	}
	f, err := c.Checkpoint(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return false, fmt.Errorf("sandbox %s: the task did not reach its checkpoint (its before-snapshot hooks) in time: %w", l.id, ctx.Err())
		}
		return false, fmt.Errorf("sandbox %s: checkpoint: %w", l.id, err)
	}
	if f.ErrorType != "" {
		return false, fmt.Errorf("sandbox %s: checkpoint failed (%s): %s%s", l.id, f.ErrorType, errorMessage(f.Body), l.recentOutput())
	}
	return f.SnapStart, nil
}

// restored waits for the agent's answer to a restored VM's hello: the
// task's after-restore hooks have run. ctx bounds them.
func (l *agentLink) restored(ctx context.Context, c *guest.Client) error {
	select {
	case <-c.Restored:
		if f := c.RestoredFrame(); f.ErrorType != "" {
			return fmt.Errorf("sandbox %s: the task's after-restore hook failed (%s): %s", l.id, f.ErrorType, errorMessage(f.Body))
		}
		return nil
	case <-l.dead.done:
		return fmt.Errorf("sandbox %s: %s while its task ran its after-restore hooks%s", l.id, l.dead.Reason(), l.recentOutput())
	case <-ctx.Done():
		return fmt.Errorf("sandbox %s: the task's after-restore hooks did not finish in time: %w%s", l.id, ctx.Err(), l.recentOutput())
	}
}

// collect asks the agent for an artifact. The caller holds the turn.
func (l *agentLink) collect(ctx context.Context, name string) ([]byte, error) {
	c, err := l.connected(ctx, agentReconnectWait)
	if err != nil {
		return nil, err
	}
	f, err := c.Collect(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: collect %s: %w", l.id, name, err)
	}
	if f.ErrorType != "" {
		return nil, fmt.Errorf("sandbox %s: collect %s: %s", l.id, name, errorMessage(f.Body))
	}
	return f.Body, nil
}

// setProfiles routes the agent's profile frames, from every connection,
// to fn (nil drops them).
func (l *agentLink) setProfiles(fn func(guest.Frame)) {
	l.logMu.Lock()
	l.profiles = fn
	l.logMu.Unlock()
}

func (l *agentLink) forwardProfile(f guest.Frame) {
	l.logMu.Lock()
	fn := l.profiles
	l.logMu.Unlock()
	if fn != nil {
		fn(f)
	}
}

// errorMessage is a Lambda error document's message, or the body itself.
func errorMessage(body []byte) string {
	var doc struct {
		ErrorMessage string `json:"errorMessage"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.ErrorMessage != "" {
		return doc.ErrorMessage
	}
	return strings.TrimSpace(string(body))
}
