package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultRuntimeAddr is where the Runtime API listens inside a guest.
const DefaultRuntimeAddr = "127.0.0.1:9001"

// recentResults is how many finished invocations the agent remembers, so
// a host that reconnects (or retries an ID) gets the first result again.
const recentResults = 256

// Config is what the agent runs.
type Config struct {
	// Task is the task's argv.
	Task []string
	// Env is added to the task's environment (NAME=value).
	Env []string
	// RuntimeAddr is the Runtime API's listen address (DefaultRuntimeAddr;
	// "127.0.0.1:0" picks a free port, for tests).
	RuntimeAddr string
	// FunctionName is reported to the task as AWS_LAMBDA_FUNCTION_NAME.
	FunctionName string
	// OnHello is called with each hello frame (the host's clock and a
	// fresh entropy seed), sent at every (re)connection: in a restored VM
	// that is the first thing after the restore. kindling-init sets the
	// clock and reseeds the kernel's pool; tests record it.
	OnHello func(Frame) error
	Logger  *slog.Logger
}

// Agent serves one task.
type Agent struct {
	cfg Config
	log *slog.Logger
	ln  net.Listener
	srv *http.Server

	mu        sync.Mutex
	queue     []*invocation          // waiting for the task's /next
	wake      chan struct{}          // a /next waiter re-checks the queue
	inflight  map[string]*invocation // handed to the task
	known     map[string]*invocation // queued, in flight or recently finished
	finished  []string               // recently finished IDs, oldest first
	task      *exec.Cmd
	readySent bool
	out       chan Frame    // to the host
	done      chan struct{} // closed when Serve returns: nobody reads out
	stopped   bool
}

type invocation struct {
	id       string
	arrived  time.Time
	deadline time.Time
	payload  []byte
	result   *Frame // set once
	timer    *time.Timer
}

// New starts the Runtime API listener; Serve runs the task and the host
// channel.
func New(cfg Config) (*Agent, error) {
	if len(cfg.Task) == 0 {
		return nil, errors.New("agent: no task to run")
	}
	if st, err := os.Stat(cfg.Task[0]); err != nil {
		return nil, fmt.Errorf("agent: task %s: %w", cfg.Task[0], err)
	} else if st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("agent: task %s is not executable (mode %v); chmod +x it", cfg.Task[0], st.Mode())
	}
	if cfg.RuntimeAddr == "" {
		cfg.RuntimeAddr = DefaultRuntimeAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ln, err := net.Listen("tcp", cfg.RuntimeAddr)
	if err != nil {
		return nil, fmt.Errorf("agent: Runtime API on %s: %w", cfg.RuntimeAddr, err)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, ln: ln, wake: make(chan struct{}),
		inflight: map[string]*invocation{}, known: map[string]*invocation{}, out: make(chan Frame, 1024), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /2018-06-01/runtime/invocation/next", a.next)
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/response", a.response)
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/error", a.invocationError)
	mux.HandleFunc("POST /2018-06-01/runtime/init/error", a.initError)
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go a.srv.Serve(ln)
	return a, nil
}

// RuntimeAddr is the Runtime API's address.
func (a *Agent) RuntimeAddr() string { return a.ln.Addr().String() }

// Serve carries invocations over conn until conn closes or ctx ends. Run
// must be running. Results finished while no connection is attached wait
// in a buffer, and a host that reconnects can ask again by ID.
func (a *Agent) Serve(ctx context.Context, conn io.ReadWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	writeErr := make(chan error, 1)
	go func() {
		for {
			select {
			case f := <-a.out:
				if err := WriteFrame(conn, f); err != nil {
					writeErr <- err
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	readErr := make(chan error, 1)
	go func() {
		for {
			f, err := ReadFrame(conn)
			if err != nil {
				readErr <- err
				return
			}
			switch f.Type {
			case TypeInvoke:
				a.invoke(f)
			case TypeHello:
				if a.cfg.OnHello != nil {
					if err := a.cfg.OnHello(f); err != nil {
						a.log.Error("hello", "error", err)
						a.send(Frame{Header: Header{Type: TypeLog, Stream: "agent"}, Body: []byte("hello: " + err.Error())})
					}
				}
			default:
				a.log.Warn("unexpected frame from the host", "type", f.Type)
			}
		}
	}()
	var err error
	select {
	case err = <-readErr:
		if errors.Is(err, io.EOF) {
			err = nil
		}
	case err = <-writeErr:
	case <-ctx.Done():
	}
	return err
}

// Run runs the task until ctx ends, restarting it whenever it exits.
// Connections come and go (Serve); the task and its warm state stay.
func (a *Agent) Run(ctx context.Context) { a.supervise(ctx) }

// Close stops the Runtime API and the task.
func (a *Agent) Close() error {
	a.mu.Lock()
	if !a.stopped {
		a.stopped = true
		close(a.done)
	}
	if a.task != nil && a.task.Process != nil {
		a.task.Process.Kill()
	}
	a.mu.Unlock()
	return a.srv.Close()
}

func (a *Agent) send(f Frame) {
	select {
	case a.out <- f:
	case <-a.done:
	}
}

// invoke queues an invocation, or answers a repeated ID with its result.
func (a *Agent) invoke(f Frame) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if inv := a.known[f.ID]; inv != nil {
		if inv.result != nil {
			go a.send(*inv.result)
		}
		return // queued or running: its result will come
	}
	if f.ID == "" {
		go a.send(Frame{Header: Header{Type: TypeError, ErrorType: "Runtime.InvalidRequest"}, Body: ErrorDocument("invocation without an ID", "Runtime.InvalidRequest")})
		return
	}
	inv := &invocation{id: f.ID, arrived: time.Now(), deadline: time.UnixMilli(f.DeadlineMs), payload: f.Body}
	a.known[f.ID] = inv
	a.queue = append(a.queue, inv)
	if f.DeadlineMs > 0 {
		inv.timer = time.AfterFunc(time.Until(inv.deadline), func() { a.timeout(inv) })
	}
	a.wakeLocked()
}

func (a *Agent) wakeLocked() {
	close(a.wake)
	a.wake = make(chan struct{})
}

// finishLocked records inv's result once and sends it to the host.
func (a *Agent) finishLocked(inv *invocation, f Frame) bool {
	if inv.result != nil {
		return false
	}
	f.ID = inv.id
	inv.result = &f
	if inv.timer != nil {
		inv.timer.Stop()
	}
	delete(a.inflight, inv.id)
	for i, q := range a.queue {
		if q == inv {
			a.queue = append(a.queue[:i], a.queue[i+1:]...)
			break
		}
	}
	a.finished = append(a.finished, inv.id)
	if len(a.finished) > recentResults {
		delete(a.known, a.finished[0])
		a.finished = a.finished[1:]
	}
	go a.send(f)
	return true
}

// timeout fails an invocation past its deadline; if the task was running
// it, the task is stuck and is restarted, as Lambda does.
func (a *Agent) timeout(inv *invocation) {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, running := a.inflight[inv.id]
	msg := fmt.Sprintf("Task timed out after %s", inv.deadline.Sub(inv.arrived).Round(10*time.Millisecond))
	if !a.finishLocked(inv, Frame{Header: Header{Type: TypeError, ErrorType: "Runtime.Timeout"}, Body: ErrorDocument(msg, "Runtime.Timeout")}) {
		return
	}
	if running && a.task != nil && a.task.Process != nil {
		a.task.Process.Kill()
	}
}

// next is GET /invocation/next: it blocks until an invocation is queued.
func (a *Agent) next(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	if !a.readySent {
		a.readySent = true
		go a.send(Frame{Header: Header{Type: TypeReady}})
	}
	for len(a.queue) == 0 {
		wake := a.wake
		a.mu.Unlock()
		select {
		case <-wake:
		case <-r.Context().Done():
			return
		}
		a.mu.Lock()
	}
	inv := a.queue[0]
	a.queue = a.queue[1:]
	a.inflight[inv.id] = inv
	a.mu.Unlock()
	h := w.Header()
	h.Set("Lambda-Runtime-Aws-Request-Id", inv.id)
	h.Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(inv.deadline.UnixMilli(), 10))
	h.Set("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:kindling:000000000000:function:"+a.cfg.FunctionName)
	h.Set("Lambda-Runtime-Trace-Id", "Root=1-"+inv.id)
	h.Set("Content-Type", "application/json")
	w.Write(inv.payload)
}

// running finds the in-flight invocation a task's POST names.
func (a *Agent) running(w http.ResponseWriter, r *http.Request) *invocation {
	id := r.PathValue("id")
	a.mu.Lock()
	inv := a.inflight[id]
	a.mu.Unlock()
	if inv == nil {
		http.Error(w, `{"errorMessage":"unknown or finished invocation `+id+`","errorType":"InvalidRequestID"}`, http.StatusBadRequest)
	}
	return inv
}

func (a *Agent) response(w http.ResponseWriter, r *http.Request) {
	inv := a.running(w, r)
	if inv == nil {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxPayload+1))
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case err != nil:
		a.finishLocked(inv, Frame{Header: Header{Type: TypeError, ErrorType: "Runtime.ResponseError"}, Body: ErrorDocument("reading the response: "+err.Error(), "Runtime.ResponseError")})
	case len(body) > MaxPayload:
		http.Error(w, `{"errorMessage":"response over 6 MB","errorType":"RequestEntityTooLarge"}`, http.StatusRequestEntityTooLarge)
		a.finishLocked(inv, Frame{Header: Header{Type: TypeError, ErrorType: "Runtime.PayloadTooLarge"}, Body: ErrorDocument(fmt.Sprintf("response exceeds %d bytes", MaxPayload), "Runtime.PayloadTooLarge")})
		return
	default:
		a.finishLocked(inv, Frame{Header: Header{Type: TypeResponse}, Body: body})
	}
	w.WriteHeader(http.StatusAccepted)
}

func (a *Agent) invocationError(w http.ResponseWriter, r *http.Request) {
	inv := a.running(w, r)
	if inv == nil {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, MaxPayload))
	typ := r.Header.Get("Lambda-Runtime-Function-Error-Type")
	var doc struct {
		ErrorType string `json:"errorType"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.ErrorType != "" {
		typ = doc.ErrorType
	}
	if typ == "" {
		typ = "Unhandled"
	}
	a.mu.Lock()
	a.finishLocked(inv, Frame{Header: Header{Type: TypeError, ErrorType: typ}, Body: body})
	a.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (a *Agent) initError(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	a.log.Error("task init error", "error", string(body))
	go a.send(Frame{Header: Header{Type: TypeLog, Stream: "init-error"}, Body: body})
	w.WriteHeader(http.StatusAccepted)
}

// supervise runs the task, restarting it when it exits (a crash, a panic
// that ended it, a kill after a timeout) and failing what it was running.
func (a *Agent) supervise(ctx context.Context) {
	fails := 0
	for ctx.Err() == nil {
		started := time.Now()
		err := a.runTask(ctx)
		a.mu.Lock()
		if a.stopped {
			a.mu.Unlock()
			return
		}
		for _, inv := range a.inflight {
			msg := fmt.Sprintf("the task exited while handling the invocation: %v", err)
			a.finishLocked(inv, Frame{Header: Header{Type: TypeError, ErrorType: "Runtime.ExitError"}, Body: ErrorDocument(msg, "Runtime.ExitError")})
		}
		a.mu.Unlock()
		if time.Since(started) < time.Second {
			fails++
		} else {
			fails = 0
		}
		// A task that dies at once, again and again, is retried ever more
		// slowly rather than spun.
		delay := time.Duration(min(fails, 6)) * 200 * time.Millisecond
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
}

func (a *Agent) runTask(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, a.cfg.Task[0], a.cfg.Task[1:]...)
	cmd.Env = append(os.Environ(),
		"AWS_LAMBDA_RUNTIME_API="+a.RuntimeAddr(),
		"AWS_LAMBDA_FUNCTION_NAME="+a.cfg.FunctionName,
		"_HANDLER="+a.cfg.FunctionName,
	)
	cmd.Env = append(cmd.Env, a.cfg.Env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start task: %w", err)
	}
	a.mu.Lock()
	a.task = cmd
	a.mu.Unlock()
	var wg sync.WaitGroup
	for name, r := range map[string]io.Reader{"stdout": stdout, "stderr": stderr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				a.send(Frame{Header: Header{Type: TypeLog, Stream: name}, Body: append([]byte(nil), sc.Bytes()...)})
			}
		}()
	}
	wg.Wait()
	return cmd.Wait()
}

// ErrorDocument is the Lambda error document {"errorMessage", "errorType"}.
func ErrorDocument(msg, typ string) []byte {
	b, _ := json.Marshal(map[string]string{"errorMessage": strings.TrimSpace(msg), "errorType": typ})
	return b
}
