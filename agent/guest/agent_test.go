package guest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/testtasks"
)

// builtTasks are the test tasks built so far in this run, by name.
var builtTasks sync.Map // name -> *builtTask

type builtTask struct {
	once sync.Once
	bin  string
	err  error
}

// testTask builds test task name once per run.
func testTask(t *testing.T, name string) string {
	t.Helper()
	v, _ := builtTasks.LoadOrStore(name, &builtTask{})
	b := v.(*builtTask)
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "kindling-agent-")
		if err != nil {
			b.err = err
			return
		}
		b.bin, b.err = testtasks.Build(dir, name)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}

// handler is the aws-lambda-go test handler.
func handler(t *testing.T) string { return testTask(t, testtasks.GoLambda) }

// start runs an agent for the handler over a Unix socket pair, the way
// kindling-init runs it over vsock, and returns the host's client.
func start(t *testing.T) (*guest.Client, *guest.Agent) {
	t.Helper()
	hellos := make(chan guest.Frame, 1)
	a, err := guest.New(guest.Config{Task: []string{handler(t)}, RuntimeAddr: "127.0.0.1:0", FunctionName: "test",
		OnHello: func(f guest.Frame) error { hellos <- f; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	go a.Run(runCtx)
	t.Cleanup(func() { stop(); a.Close() })
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			served <- err
			return
		}
		served <- a.Serve(ctx, c)
		c.Close()
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-served
	})
	c := guest.NewClient(conn)
	if err := c.Hello([]byte("seed")); err != nil {
		t.Fatal(err)
	}
	select {
	case h := <-hellos:
		if string(h.Body) != "seed" || time.Since(time.Unix(0, h.TimeNs)) > time.Minute {
			t.Fatalf("hello %+v %q", h.Header, h.Body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not pass the hello on")
	}
	select {
	case <-c.Ready:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler never asked for an invocation")
	}
	return c, a
}

func invoke(t *testing.T, c *guest.Client, id string, req any, timeout time.Duration) guest.Frame {
	t.Helper()
	payload, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	f, err := c.Invoke(ctx, id, payload, timeout)
	if err != nil {
		t.Fatal(err)
	}
	if f.ID != id {
		t.Fatalf("result for %q, want %q", f.ID, id)
	}
	return f
}

func echo(text string) map[string]any { return map[string]any{"op": "echo", "text": text} }

func wantEcho(t *testing.T, f guest.Frame, text string) {
	t.Helper()
	var r struct{ Text string }
	if f.Type != guest.TypeResponse || json.Unmarshal(f.Body, &r) != nil || r.Text != text {
		t.Fatalf("got %s %s %.200q, want the echo of %.40q", f.Type, f.ErrorType, f.Body, text)
	}
}

func TestSuccessErrorPanicAndLogs(t *testing.T) {
	c, _ := start(t)
	wantEcho(t, invoke(t, c, "ok-1", echo("hello"), 10*time.Second), "hello")
	select {
	case l := <-c.Logs:
		if l.Stream != "stdout" || string(l.Body) != "echo 5" {
			t.Errorf("log %s %q", l.Stream, l.Body)
		}
	case <-time.After(5 * time.Second):
		t.Error("no log line from the handler's stdout")
	}
	f := invoke(t, c, "err-1", map[string]any{"op": "error"}, 10*time.Second)
	if f.Type != guest.TypeError || !strings.Contains(string(f.Body), "handler says no") {
		t.Fatalf("handler error: %s %s %s", f.Type, f.ErrorType, f.Body)
	}
	f = invoke(t, c, "panic-1", map[string]any{"op": "panic"}, 10*time.Second)
	if f.Type != guest.TypeError || !strings.Contains(string(f.Body), "handler panicked") {
		t.Fatalf("panic: %s %s %s", f.Type, f.ErrorType, f.Body)
	}
	// The agent (and, if the panic ended it, a restarted handler) serves on.
	wantEcho(t, invoke(t, c, "ok-2", echo("after"), 10*time.Second), "after")
}

func TestTimeoutRestartsTheHandler(t *testing.T) {
	c, _ := start(t)
	f := invoke(t, c, "slow", map[string]any{"op": "sleep", "ms": 60000}, 300*time.Millisecond)
	if f.Type != guest.TypeError || f.ErrorType != "Runtime.Timeout" || !strings.Contains(string(f.Body), "timed out after 300ms") {
		t.Fatalf("timeout: %s %s %s", f.Type, f.ErrorType, f.Body)
	}
	wantEcho(t, invoke(t, c, "after-timeout", echo("alive"), 30*time.Second), "alive")
}

func TestExitIsReportedAndTheHandlerRestarted(t *testing.T) {
	c, _ := start(t)
	f := invoke(t, c, "exit", map[string]any{"op": "exit"}, 10*time.Second)
	if f.Type != guest.TypeError || f.ErrorType != "Runtime.ExitError" || !strings.Contains(string(f.Body), "exit status 3") {
		t.Fatalf("exit: %s %s %s", f.Type, f.ErrorType, f.Body)
	}
	wantEcho(t, invoke(t, c, "after-exit", echo("back"), 30*time.Second), "back")
}

func TestLargePayloads(t *testing.T) {
	c, _ := start(t)
	big := strings.Repeat("k", 6<<20-100) // a 6 MB request, with its JSON
	wantEcho(t, invoke(t, c, "big-in", echo(big), 30*time.Second), big)
	f := invoke(t, c, "big-out", map[string]any{"op": "big", "size": 7 << 20}, 30*time.Second)
	if f.Type != guest.TypeError || f.ErrorType != "Runtime.PayloadTooLarge" {
		t.Fatalf("7 MB response: %s %s %.200s", f.Type, f.ErrorType, f.Body)
	}
	if _, err := c.Invoke(context.Background(), "too-big", make([]byte, 7<<20), time.Second); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("7 MB request: %v", err)
	}
	wantEcho(t, invoke(t, c, "after-big", echo("small"), 10*time.Second), "small")
}

func TestSequentialAndConcurrent(t *testing.T) {
	c, _ := start(t)
	for i := 0; i < 100; i++ {
		text := fmt.Sprintf("seq-%d", i)
		wantEcho(t, invoke(t, c, text, echo(text), 10*time.Second), text)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("conc-%d", i)
			payload, _ := json.Marshal(echo(id))
			f, err := c.Invoke(context.Background(), id, payload, 30*time.Second)
			if err != nil || f.Type != guest.TypeResponse || !strings.Contains(string(f.Body), id) {
				errs <- fmt.Sprintf("%s: %v %s %s", id, err, f.Type, f.Body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// The same ID twice returns the first result and runs once.
func TestRepeatedIDReturnsTheFirstResult(t *testing.T) {
	c, _ := start(t)
	wantEcho(t, invoke(t, c, "same", echo("first"), 10*time.Second), "first")
	wantEcho(t, invoke(t, c, "same", echo("second"), 10*time.Second), "first")
}

func TestBadTask(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "task")
	os.WriteFile(p, []byte("not a program"), 0o644)
	if _, err := guest.New(guest.Config{Task: []string{p}, RuntimeAddr: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "not executable") {
		t.Errorf("non-executable task: %v", err)
	}
	if _, err := guest.New(guest.Config{Task: []string{filepath.Join(dir, "missing")}, RuntimeAddr: "127.0.0.1:0"}); err == nil {
		t.Error("missing task accepted")
	}
}

// A host that goes away mid-invocation loses nothing: Serve returns, the
// task keeps running, and a host that reconnects gets the result by
// asking for the same ID again (what a restarted kindlingd does).
func TestHostGoesAwayAndComesBack(t *testing.T) {
	a, err := guest.New(guest.Config{Task: []string{handler(t)}, RuntimeAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer func() { stop(); a.Close() }()
	go a.Run(ctx)
	host, agentEnd := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, agentEnd) }()
	c := guest.NewClient(host)
	<-c.Ready
	payload, _ := json.Marshal(map[string]any{"op": "sleep", "ms": 300})
	go c.Invoke(context.Background(), "x", payload, 10*time.Second)
	time.Sleep(100 * time.Millisecond)
	host.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the host went away")
	}
	host2, agentEnd2 := net.Pipe()
	go a.Serve(ctx, agentEnd2)
	c2 := guest.NewClient(host2)
	defer host2.Close()
	f, err := c2.Invoke(context.Background(), "x", payload, 10*time.Second)
	if err != nil || f.Type != guest.TypeResponse || !strings.Contains(string(f.Body), "slept") {
		t.Fatalf("result after reconnecting: %v %s %s", err, f.Type, f.Body)
	}
}

func FuzzReadFrame(f *testing.F) {
	var b strings.Builder
	guest.WriteFrame(&b, guest.Frame{Header: guest.Header{Type: guest.TypeInvoke, ID: "a"}, Body: []byte("{}")})
	f.Add([]byte(b.String()))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		guest.ReadFrame(strings.NewReader(string(data)))
	})
}

// A guest that closes the connection mid-invocation gives the caller a
// clear error, not a hang.
func TestGuestClosesMidInvocation(t *testing.T) {
	host, agentEnd := net.Pipe()
	c := guest.NewClient(host)
	go func() {
		guest.ReadFrame(agentEnd)               // the invocation arrives...
		agentEnd.Write([]byte{0, 0, 0, 9, '{'}) // ...half a frame goes back...
		agentEnd.Close()                        // ...and the guest is gone
	}()
	_, err := c.Invoke(context.Background(), "x", []byte("{}"), 10*time.Second)
	if !errors.Is(err, guest.ErrAgentGone) || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Fatalf("Invoke: %v; want ErrAgentGone with the cause", err)
	}
	if _, err := c.Invoke(context.Background(), "y", []byte("{}"), time.Second); !errors.Is(err, guest.ErrAgentGone) {
		t.Fatalf("Invoke after the guest left: %v", err)
	}
}

// ReadFrame refuses a declared length over the limits before it allocates
// it (a 4 GiB body here), naming the size and the limit; a log line has a
// limit of its own, below a payload's.
func TestReadFrameLimits(t *testing.T) {
	frame := func(header string, bodyLen uint32) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(header)))
		b = append(b, header...)
		return binary.BigEndian.AppendUint32(b, bodyLen)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"header", []byte{0xff, 0xff, 0xff, 0xf0}, "a header of 4294967280 bytes, above the 65536-byte limit"},
		{"body", frame(`{"type":"response","id":"a"}`, 0xfffffff0), fmt.Sprintf("a body of 4294967280 bytes, above the %d-byte limit", guest.MaxPayload)},
		{"log line", frame(`{"type":"log","stream":"stdout"}`, guest.MaxLogLine+1), fmt.Sprintf("a log line of %d bytes, above the %d-byte limit", guest.MaxLogLine+1, guest.MaxLogLine)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := guest.ReadFrame(bytes.NewReader(tc.in))
			runtime.ReadMemStats(&after)
			if !errors.Is(err, guest.ErrFrameTooLarge) || !errors.Is(err, guest.ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReadFrame: %v; want ErrFrameTooLarge naming %q", err, tc.want)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
				t.Fatalf("ReadFrame allocated %d bytes for a frame it refused", n)
			}
		})
	}
	if _, err := guest.ReadFrame(bytes.NewReader(frame("not json", 0))); !errors.Is(err, guest.ErrProtocol) {
		t.Fatalf("a header that is not JSON: %v; want ErrProtocol", err)
	}
}

// A guest that breaks the framing fails the invocation waiting on it with
// ErrProtocol (not ErrAgentGone: a live agent that merely lost its
// connection is asked again; this one is not), and the client closes the
// connection instead of leaving the guest writing into it.
func TestGuestBreaksTheProtocol(t *testing.T) {
	host, agentEnd := net.Pipe()
	c := guest.NewClient(host)
	closed := make(chan error, 1)
	go func() {
		guest.ReadFrame(agentEnd)
		b := binary.BigEndian.AppendUint32(nil, 2)
		b = append(b, "{}"...)
		b = binary.BigEndian.AppendUint32(b, 0xfffffff0)
		agentEnd.Write(b)
		// Garbage, until the host closes its end.
		for {
			if _, err := agentEnd.Write(make([]byte, 4096)); err != nil {
				closed <- err
				return
			}
		}
	}()
	_, err := c.Invoke(context.Background(), "x", []byte("{}"), 10*time.Second)
	if !errors.Is(err, guest.ErrProtocol) || errors.Is(err, guest.ErrAgentGone) || !strings.Contains(err.Error(), "4294967280") {
		t.Fatalf("Invoke: %v; want ErrProtocol naming the frame's size", err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not close the connection of a guest that broke the protocol")
	}
	if _, err := c.Invoke(context.Background(), "y", []byte("{}"), time.Second); !errors.Is(err, guest.ErrProtocol) {
		t.Fatalf("Invoke after: %v", err)
	}
}
