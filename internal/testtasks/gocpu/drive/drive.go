// Package drive runs a Lambda task binary as a process of this host
// against a Runtime API served here, and measures the CPU the task spends
// per invocation: its process CPU clock, read after warm-up invocations
// and again after the measured ones. Nothing else is in the path (no
// kindlingd, no guest agent, no VM), so two builds of one task can be
// compared by what they alone cost. A task must give the same answer to
// every invocation of an event: a run that sees two answers fails.
package drive

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// invocationTimeout bounds one invocation: far above the 5 to 20 ms the
// CPU-bound test tasks take, short enough that a stuck task fails a run.
const invocationTimeout = 30 * time.Second

// Result is a run's measurement.
type Result struct {
	// Invocations measured, and the task's CPU time (all its threads,
	// user and system) across them.
	Invocations int
	CPU         time.Duration
	// Wall is the time the measured invocations took end to end.
	Wall time.Duration
	// Response is the task's answer (the same to every invocation).
	Response []byte
}

// PerInvocation is the task's CPU time per measured invocation.
func (r Result) PerInvocation() time.Duration {
	if r.Invocations == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Invocations)
}

// Run starts bin with AWS_LAMBDA_RUNTIME_API pointing at a Runtime API
// served here, invokes it with event warm times (its start-up, first
// allocations and the CPU's caches are not measured) and then n times,
// measured, and stops it.
func Run(ctx context.Context, bin string, event []byte, warm, n int) (Result, error) {
	if n <= 0 {
		return Result{}, fmt.Errorf("drive: %d invocations to measure", n)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Result{}, err
	}
	api := newRuntimeAPI()
	srv := &http.Server{Handler: api.mux()}
	go srv.Serve(ln)
	defer srv.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "AWS_LAMBDA_RUNTIME_API="+ln.Addr().String(), "AWS_LAMBDA_FUNCTION_NAME=drive")
	var output bytes.Buffer
	out := &limitedWriter{w: &output, n: 64 << 10} // one writer: exec then writes from one goroutine
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("drive: start %s: %w", bin, err)
	}
	exited := &exit{done: make(chan struct{})}
	go func() {
		exited.err = cmd.Wait()
		close(exited.done)
	}()
	defer func() {
		cancel()
		<-exited.done
	}()
	fail := func(err error) (Result, error) {
		cancel()
		<-exited.done
		return Result{}, fmt.Errorf("drive %s: %w\n%s", bin, err, bytes.TrimSpace(output.Bytes()))
	}

	var r Result
	var cpu0 time.Duration
	var start time.Time
	for i := range warm + n {
		if i == warm {
			if cpu0, err = processCPU(cmd.Process.Pid); err != nil {
				return fail(err)
			}
			start = time.Now()
		}
		resp, err := api.invoke(ctx, strconv.Itoa(i), event, exited)
		if err != nil {
			return fail(fmt.Errorf("invocation %d: %w", i, err))
		}
		if r.Response == nil {
			r.Response = resp
		} else if !bytes.Equal(resp, r.Response) {
			return fail(fmt.Errorf("invocation %d answered %.200q, the first %.200q: the task is not deterministic", i, resp, r.Response))
		}
	}
	cpu1, err := processCPU(cmd.Process.Pid)
	if err != nil {
		return fail(err)
	}
	r.Invocations, r.CPU, r.Wall = n, cpu1-cpu0, time.Since(start)
	return r, nil
}

// processCPU is pid's CPU time so far, all its threads: its process CPU
// clock (clock_getcpuclockid), exact where /proc's ticks are 10 ms.
func processCPU(pid int) (time.Duration, error) {
	var ts unix.Timespec
	clock := int32((^pid)<<3 | 2) // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return 0, fmt.Errorf("CPU clock of process %d: %w", pid, err)
	}
	return time.Duration(ts.Nano()), nil
}

// exit is the task's end: done is closed once err is set.
type exit struct {
	done chan struct{}
	err  error
}

// runtimeAPI is the part of the Lambda Runtime API a task's runtime
// client uses: the next invocation, and its response or error.
type runtimeAPI struct {
	next    chan pending
	mu      sync.Mutex
	waiting map[string]chan result
}

type pending struct {
	id    string
	event []byte
}

type result struct {
	body []byte
	err  error
}

func newRuntimeAPI() *runtimeAPI {
	return &runtimeAPI{next: make(chan pending), waiting: map[string]chan result{}}
}

func (a *runtimeAPI) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /2018-06-01/runtime/invocation/next", a.serveNext)
	m.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/response", func(w http.ResponseWriter, r *http.Request) {
		a.finish(w, r, false)
	})
	m.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/error", func(w http.ResponseWriter, r *http.Request) {
		a.finish(w, r, true)
	})
	m.HandleFunc("POST /2018-06-01/runtime/init/error", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		a.mu.Lock()
		for id, ch := range a.waiting {
			ch <- result{err: fmt.Errorf("the task's init failed: %s", body)}
			delete(a.waiting, id)
		}
		a.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	})
	return m
}

// invoke hands event to the task's next GET /invocation/next and waits
// for its answer, or for the task to exit.
func (a *runtimeAPI) invoke(ctx context.Context, id string, event []byte, exited *exit) ([]byte, error) {
	done := make(chan result, 1)
	a.mu.Lock()
	a.waiting[id] = done
	a.mu.Unlock()
	timeout := time.NewTimer(invocationTimeout)
	defer timeout.Stop()
	select {
	case a.next <- pending{id, event}:
	case <-exited.done:
		return nil, fmt.Errorf("the task exited before asking for it: %v", exited.err)
	case <-timeout.C:
		return nil, fmt.Errorf("the task did not ask for an invocation within %v", invocationTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-done:
		return res.body, res.err
	case <-exited.done:
		return nil, fmt.Errorf("the task exited during it: %v", exited.err)
	case <-timeout.C:
		return nil, fmt.Errorf("no answer within %v", invocationTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (a *runtimeAPI) serveNext(w http.ResponseWriter, r *http.Request) {
	select {
	case p := <-a.next:
		h := w.Header()
		h.Set("Lambda-Runtime-Aws-Request-Id", p.id)
		h.Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(time.Now().Add(invocationTimeout).UnixMilli(), 10))
		h.Set("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:000000000000:function:drive")
		h.Set("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
		h.Set("Content-Type", "application/json")
		w.Write(p.event)
	case <-r.Context().Done():
	}
}

func (a *runtimeAPI) finish(w http.ResponseWriter, r *http.Request, failed bool) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := r.PathValue("id")
	a.mu.Lock()
	ch, ok := a.waiting[id]
	delete(a.waiting, id)
	a.mu.Unlock()
	if !ok {
		http.Error(w, "no invocation "+id, http.StatusNotFound)
		return
	}
	res := result{body: body}
	if failed {
		res = result{err: fmt.Errorf("the task answered with an error: %s", body)}
	}
	ch <- res
	w.WriteHeader(http.StatusAccepted)
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	mu sync.Mutex
	w  io.Writer
	n  int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
