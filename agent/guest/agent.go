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

	"golang.org/x/sys/unix"
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
	// SnapStart tells the task that its environment may be snapshotted
	// (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start): a runtime with
	// SnapStart hooks runs its before-snapshot hooks at the end of its
	// init and asks GET /runtime/restore/next, which answers after a
	// restore (or when the first invocation comes without one).
	SnapStart bool
	// StartProfiled, if set, starts the task with its CPU sampled
	// (agent/profiler); the agent ships a profile every ProfileEvery
	// invocations or ProfileInterval, whichever comes first.
	StartProfiled   func(cmd *exec.Cmd) (Sampler, error)
	ProfileEvery    int
	ProfileInterval time.Duration
	// CompileCache is the directory NODE_COMPILE_CACHE points at; the
	// host may collect it (ArtifactNodeCompileCache).
	CompileCache string
}

// Sampler profiles a running task.
type Sampler interface {
	// Collect returns the samples since the last call as a gzipped pprof
	// profile, or nil if there are none.
	Collect() ([]byte, error)
	Close() error
}

// Profile shipping defaults.
const (
	DefaultProfileEvery    = 100
	DefaultProfileInterval = 10 * time.Second
)

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
	taskExits int // counts the task's exits
	readySent bool
	out       chan Frame    // to the host
	done      chan struct{} // closed when Serve returns: nobody reads out
	stopped   bool

	// The SnapStart lifecycle. idle counts the task's requests waiting in
	// /invocation/next; parked says it waits in /restore/next, and
	// release lets that request return. checkpointed: a checkpoint was
	// answered, so the next hello is a restored VM's; restorePending: the
	// task runs its after-restore hooks, and its next request (or a
	// restore error) answers the host's restore.
	idle           int
	parked         bool
	release        bool
	checkpointed   bool
	restorePending bool
	initErr        string

	// Profiling.
	sampler    Sampler
	profCount  int64
	profCPU    int64
	profShipAt time.Time
	shipping   bool
}

type invocation struct {
	id       string
	arrived  time.Time
	deadline time.Time
	payload  []byte
	result   *Frame // set once
	timer    *time.Timer
	// cpuStart is the task's CPU clock when it took the invocation.
	cpuStart int64
	taskPID  int
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
	if cfg.ProfileEvery <= 0 {
		cfg.ProfileEvery = DefaultProfileEvery
	}
	if cfg.ProfileInterval <= 0 {
		cfg.ProfileInterval = DefaultProfileInterval
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
	mux.HandleFunc("GET /2018-06-01/runtime/restore/next", a.restoreNext)
	mux.HandleFunc("POST /2018-06-01/runtime/restore/error", a.restoreError)
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
				// After the clock and the entropy pool: the task's
				// after-restore hooks see both fixed.
				a.restored()
			case TypeCheckpoint:
				go a.checkpoint()
			case TypeCollect:
				go a.collect(f.Name)
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
	if a.parked {
		// No restore came (the environment serves without a snapshot,
		// or serves on after its snapshot was cut): the task goes on
		// from its checkpoint, as in Lambda after the snapshot.
		a.release = true
	}
	if f.DeadlineMs > 0 {
		inv.timer = time.AfterFunc(time.Until(inv.deadline), func() { a.timeout(inv) })
	}
	a.wakeLocked()
}

// waitLocked waits for the next wakeLocked, a.mu held on entry and on
// return; it is false if done closed first.
func (a *Agent) waitLocked(done <-chan struct{}) bool {
	wake := a.wake
	a.mu.Unlock()
	defer a.mu.Lock()
	select {
	case <-wake:
		return true
	case <-done:
		return false
	}
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
	if inv.taskPID > 0 && (f.Type == TypeResponse || (f.Type == TypeError && f.ErrorType != "Runtime.Timeout" && f.ErrorType != "Runtime.ExitError")) {
		if now, ok := processCPU(inv.taskPID); ok && now >= inv.cpuStart {
			f.CPUNs = now - inv.cpuStart
		}
		a.profCount++
		a.profCPU += f.CPUNs
		if a.sampler != nil && !a.shipping && (a.profCount >= int64(a.cfg.ProfileEvery) || time.Since(a.profShipAt) >= a.cfg.ProfileInterval) {
			a.shipping = true
			go a.shipProfile()
		}
	}
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
	if a.restorePending {
		// Back from its after-restore hooks.
		a.restorePending = false
		go a.send(Frame{Header: Header{Type: TypeRestored}})
	}
	a.idle++
	a.wakeLocked()
	for len(a.queue) == 0 {
		if !a.waitLocked(r.Context().Done()) {
			a.idle--
			a.wakeLocked()
			a.mu.Unlock()
			return
		}
	}
	a.idle--
	inv := a.queue[0]
	a.queue = a.queue[1:]
	a.inflight[inv.id] = inv
	if a.task != nil && a.task.Process != nil {
		inv.taskPID = a.task.Process.Pid
		inv.cpuStart, _ = processCPU(inv.taskPID)
	}
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

// errorType is an error a runtime posted's type: its error document's
// errorType, else the Lambda-Runtime-Function-Error-Type header, else
// fallback.
func errorType(r *http.Request, body []byte, fallback string) string {
	var doc struct {
		ErrorType string `json:"errorType"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.ErrorType != "" {
		return doc.ErrorType
	}
	if typ := r.Header.Get("Lambda-Runtime-Function-Error-Type"); typ != "" {
		return typ
	}
	return fallback
}

func (a *Agent) invocationError(w http.ResponseWriter, r *http.Request) {
	inv := a.running(w, r)
	if inv == nil {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, MaxPayload))
	typ := errorType(r, body, "Unhandled")
	a.mu.Lock()
	a.finishLocked(inv, Frame{Header: Header{Type: TypeError, ErrorType: typ}, Body: body})
	a.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (a *Agent) initError(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	a.log.Error("task init error", "error", string(body))
	a.mu.Lock()
	a.initErr = strings.TrimSpace(string(body))
	a.mu.Unlock()
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
		a.parked, a.release, a.idle = false, false, 0
		a.taskExits++
		a.wakeLocked()
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

// taskCmd is the task's command, with its output piped to the agent.
func (a *Agent) taskCmd(ctx context.Context) (*exec.Cmd, io.Reader, io.Reader, error) {
	cmd := exec.CommandContext(ctx, a.cfg.Task[0], a.cfg.Task[1:]...)
	initType := "on-demand"
	if a.cfg.SnapStart {
		initType = "snap-start"
	}
	cmd.Env = append(os.Environ(),
		"AWS_LAMBDA_RUNTIME_API="+a.RuntimeAddr(),
		"AWS_LAMBDA_FUNCTION_NAME="+a.cfg.FunctionName,
		"AWS_LAMBDA_INITIALIZATION_TYPE="+initType,
		"_HANDLER="+a.cfg.FunctionName,
	)
	if a.cfg.CompileCache != "" {
		cmd.Env = append(cmd.Env, "NODE_COMPILE_CACHE="+a.cfg.CompileCache)
	}
	cmd.Env = append(cmd.Env, a.cfg.Env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	return cmd, stdout, stderr, nil
}

func (a *Agent) runTask(ctx context.Context) error {
	cmd, stdout, stderr, err := a.taskCmd(ctx)
	if err != nil {
		return err
	}
	var sampler Sampler
	if a.cfg.StartProfiled != nil {
		sampler, err = a.cfg.StartProfiled(cmd)
		if err != nil {
			// Serve unprofiled rather than not at all.
			a.log.Error("task not profiled", "error", err)
			a.send(Frame{Header: Header{Type: TypeLog, Stream: "agent"}, Body: []byte("profiling off: " + err.Error())})
			if cmd, stdout, stderr, err = a.taskCmd(ctx); err != nil {
				return err
			}
		}
	}
	if sampler == nil {
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start task: %w", err)
		}
	}
	a.mu.Lock()
	a.task = cmd
	a.sampler, a.profCount, a.profCPU, a.profShipAt = sampler, 0, 0, time.Now()
	a.mu.Unlock()
	if sampler != nil {
		defer func() {
			a.mu.Lock()
			if a.sampler == sampler {
				a.sampler = nil
			}
			a.mu.Unlock()
			sampler.Close()
		}()
	}
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

// restoreNext is GET /restore/next, which a SnapStart runtime asks once
// its init and before-snapshot hooks are done: it is the task's
// checkpoint. It answers when the VM has been restored (the hello that
// follows a checkpoint), or when an invocation comes without a restore.
func (a *Agent) restoreNext(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	if !a.readySent {
		a.readySent = true
		go a.send(Frame{Header: Header{Type: TypeReady, SnapStart: true}})
	}
	a.parked, a.release = true, false
	a.wakeLocked()
	for !a.release {
		if !a.waitLocked(r.Context().Done()) {
			a.parked = false
			a.wakeLocked()
			a.mu.Unlock()
			return
		}
	}
	a.parked, a.release = false, false
	a.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// restoreError is POST /restore/error: an after-restore hook failed. The
// host is told, and discards the environment.
func (a *Agent) restoreError(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	typ := errorType(r, body, "Runtime.AfterRestoreError")
	a.log.Error("after-restore hook failed", "error_type", typ, "error", string(body))
	a.mu.Lock()
	pending := a.restorePending
	a.restorePending = false
	a.mu.Unlock()
	if pending {
		go a.send(Frame{Header: Header{Type: TypeRestored, ErrorType: typ}, Body: body})
	}
	w.WriteHeader(http.StatusAccepted)
}

// restored handles a hello: after a checkpoint it is a restored VM's
// first, and the task's after-restore hooks run before anything is
// invoked (a task parked in /restore/next is released; the host hears
// TypeRestored when it asks for its next invocation). A task without
// SnapStart hooks is restored at once.
func (a *Agent) restored() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.checkpointed {
		return
	}
	a.checkpointed = false
	if a.parked {
		a.release, a.restorePending = true, true
		a.wakeLocked()
		return
	}
	go a.send(Frame{Header: Header{Type: TypeRestored}})
}

// checkpoint answers the host's TypeCheckpoint once the task is where a
// snapshot may be cut: parked in /restore/next (its before-snapshot
// hooks ran), or, for a task without SnapStart hooks, idle in
// /invocation/next with nothing queued or running. It fails if the task
// exits meanwhile. The host bounds the wait (a hook that hangs).
func (a *Agent) checkpoint() {
	a.mu.Lock()
	exits := a.taskExits
	for {
		if a.stopped {
			a.mu.Unlock()
			return
		}
		if a.taskExits != exits {
			msg := "the task exited before it reached its checkpoint"
			if a.initErr != "" {
				msg += ": " + a.initErr
			}
			a.mu.Unlock()
			a.send(Frame{Header: Header{Type: TypeCheckpoint, ErrorType: "Runtime.BeforeCheckpointError"}, Body: ErrorDocument(msg, "Runtime.BeforeCheckpointError")})
			return
		}
		if a.parked || (a.idle > 0 && len(a.queue) == 0 && len(a.inflight) == 0) {
			break
		}
		if !a.waitLocked(a.done) {
			a.mu.Unlock()
			return
		}
	}
	a.checkpointed = true
	hooks := a.parked
	sampler := a.sampler
	a.mu.Unlock()
	// The profile so far leaves with the builder: restored copies would
	// otherwise ship its samples again.
	if sampler != nil {
		a.shipProfileFrom(sampler)
	}
	a.send(Frame{Header: Header{Type: TypeCheckpoint, SnapStart: hooks}})
}

// shipProfile sends the samples since the last shipment.
func (a *Agent) shipProfile() {
	a.mu.Lock()
	sampler := a.sampler
	a.mu.Unlock()
	if sampler != nil {
		a.shipProfileFrom(sampler)
	}
	a.mu.Lock()
	a.shipping = false
	a.mu.Unlock()
}

func (a *Agent) shipProfileFrom(sampler Sampler) {
	a.mu.Lock()
	count, cpu := a.profCount, a.profCPU
	a.profCount, a.profCPU, a.profShipAt = 0, 0, time.Now()
	a.mu.Unlock()
	data, err := sampler.Collect()
	if err != nil {
		a.log.Error("profile", "error", err)
		return
	}
	if len(data) == 0 {
		return
	}
	if len(data) > MaxPayload {
		a.log.Error("profile dropped", "bytes", len(data), "limit", MaxPayload)
		return
	}
	a.send(Frame{Header: Header{Type: TypeProfile, Count: count, CPUNs: cpu}, Body: data})
}

// collect answers TypeCollect with the named artifact as a tar stream.
func (a *Agent) collect(name string) {
	fail := func(msg string) {
		a.send(Frame{Header: Header{Type: TypeArtifact, Name: name, ErrorType: "Runtime.ArtifactError"}, Body: ErrorDocument(msg, "Runtime.ArtifactError")})
	}
	if name != ArtifactNodeCompileCache {
		fail(fmt.Sprintf("unknown artifact %q", name))
		return
	}
	if a.cfg.CompileCache == "" {
		fail("this task has no compile cache (its image is not a Node image)")
		return
	}
	data, err := tarDir(a.cfg.CompileCache, MaxArtifact)
	if err != nil {
		fail(err.Error())
		return
	}
	a.send(Frame{Header: Header{Type: TypeArtifact, Name: name}, Body: data})
}

// processCPU is pid's CPU time so far, all its threads, in nanoseconds:
// its process CPU clock (clock_getcpuclockid), exact where /proc's ticks
// are 10 ms.
func processCPU(pid int) (int64, bool) {
	var ts unix.Timespec
	// MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
	clock := int32((^pid)<<3 | 2)
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return 0, false
	}
	return ts.Nano(), true
}
