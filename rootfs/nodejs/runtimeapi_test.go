package nodejs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// realNode is node from the npm registry, through the user's cache: the
// first run downloads 50 MB, later ones ask nobody for a day.
func realNode(t *testing.T, spec string) Runtime {
	t.Helper()
	if testing.Short() {
		t.Skip("runs node from the npm registry (-short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rt, err := (&Fetcher{Progress: testWriter{t}}).FetchRuntime(ctx, spec)
	if err != nil && strings.Contains(err.Error(), "cannot reach the npm registry") {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// invocation is one event through the fake Runtime API.
type invocation struct {
	id            string
	payload       []byte
	served, ended time.Time
	kind          string // "response" or "error"
	body          []byte
	errorType     string // the Lambda-Runtime-Function-Error-Type header
}

// fakeAPI is the Runtime API as kindling-init serves it, in miniature.
type fakeAPI struct {
	t            *testing.T
	srv          *httptest.Server
	queue        chan *invocation
	finished     chan *invocation
	nexts        chan time.Time // when each GET invocation/next came
	initErr      chan []byte
	restoreAsked chan time.Time
	release      chan struct{} // closed: restore/next answers
	restoreErr   chan []byte
	mu           sync.Mutex
	byID         map[string]*invocation
	seq          int
}

func newFakeAPI(t *testing.T) *fakeAPI {
	a := &fakeAPI{t: t, queue: make(chan *invocation, 16), finished: make(chan *invocation, 16), nexts: make(chan time.Time, 1024),
		initErr: make(chan []byte, 4), restoreAsked: make(chan time.Time, 4), release: make(chan struct{}), restoreErr: make(chan []byte, 4),
		byID: map[string]*invocation{}}
	mux := http.NewServeMux()
	const p = "/2018-06-01/runtime"
	mux.HandleFunc("GET "+p+"/invocation/next", func(w http.ResponseWriter, r *http.Request) {
		a.nexts <- time.Now()
		select {
		case inv := <-a.queue:
			h := w.Header()
			h.Set("Lambda-Runtime-Aws-Request-Id", inv.id)
			h.Set("Lambda-Runtime-Deadline-Ms", fmt.Sprint(time.Now().Add(time.Minute).UnixMilli()))
			h.Set("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:kindling:000000000000:function:test")
			h.Set("Lambda-Runtime-Trace-Id", "Root=1-"+inv.id)
			inv.served = time.Now()
			w.Write(inv.payload)
		case <-r.Context().Done():
		}
	})
	finish := func(kind string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			a.mu.Lock()
			inv := a.byID[r.PathValue("id")]
			delete(a.byID, r.PathValue("id"))
			a.mu.Unlock()
			if inv == nil {
				http.Error(w, "unknown invocation", http.StatusBadRequest)
				return
			}
			inv.ended, inv.kind, inv.body, inv.errorType = time.Now(), kind, body, r.Header.Get("Lambda-Runtime-Function-Error-Type")
			w.WriteHeader(http.StatusAccepted)
			a.finished <- inv
		}
	}
	mux.HandleFunc("POST "+p+"/invocation/{id}/response", finish("response"))
	mux.HandleFunc("POST "+p+"/invocation/{id}/error", finish("error"))
	mux.HandleFunc("POST "+p+"/init/error", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusAccepted)
		a.initErr <- body
	})
	mux.HandleFunc("GET "+p+"/restore/next", func(w http.ResponseWriter, r *http.Request) {
		a.restoreAsked <- time.Now()
		select {
		case <-a.release:
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("POST "+p+"/restore/error", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusAccepted)
		a.restoreErr <- body
	})
	a.srv = httptest.NewServer(mux)
	t.Cleanup(a.srv.Close)
	return a
}

// addr is AWS_LAMBDA_RUNTIME_API.
func (a *fakeAPI) addr() string { return strings.TrimPrefix(a.srv.URL, "http://") }

// invoke hands payload to the task and waits for its answer.
func (a *fakeAPI) invoke(payload string) *invocation {
	a.t.Helper()
	a.mu.Lock()
	a.seq++
	inv := &invocation{id: fmt.Sprintf("inv-%d", a.seq), payload: []byte(payload)}
	a.byID[inv.id] = inv
	a.mu.Unlock()
	a.queue <- inv
	select {
	case done := <-a.finished:
		if done != inv {
			a.t.Fatalf("answer for %s while waiting for %s", done.id, inv.id)
		}
		return inv
	case <-time.After(time.Minute):
		a.t.Fatalf("no answer to %s in a minute", inv.id)
		return nil
	}
}

// waitNext waits for the task's next GET invocation/next.
func (a *fakeAPI) waitNext() time.Time {
	a.t.Helper()
	select {
	case at := <-a.nexts:
		return at
	case <-time.After(time.Minute):
		a.t.Fatal("the task did not ask for an invocation in a minute")
		return time.Time{}
	}
}

// task is a running node with the runtime client.
type task struct {
	cmd     *exec.Cmd
	started time.Time
	mu      sync.Mutex
	stderr  bytes.Buffer
	exited  chan struct{} // closed when it has
	err     error         // its exit, once exited is closed
}

func (t *task) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stderr.Write(b)
}

func (t *task) log() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stderr.String()
}

// startTask runs node args with env added to a minimal environment, as
// uid (and the same gid) if uid > 0.
func startTask(t *testing.T, a *fakeAPI, node string, args, env []string, uid int) *task {
	t.Helper()
	tk := &task{exited: make(chan struct{})}
	tk.cmd = exec.Command(node, args...)
	if uid > 0 {
		tk.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	tk.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "AWS_LAMBDA_RUNTIME_API=" + a.addr(),
		"AWS_LAMBDA_FUNCTION_NAME=test"}, env...)
	tk.cmd.Stdout, tk.cmd.Stderr = tk, tk
	tk.started = time.Now()
	if err := tk.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		tk.err = tk.cmd.Wait()
		close(tk.exited)
	}()
	t.Cleanup(func() { tk.stop() })
	return tk
}

func (t *task) stop() {
	t.cmd.Process.Kill() // an error if it has exited already
	select {
	case <-t.exited:
	case <-time.After(10 * time.Second):
	}
}

// wait waits for the task to exit by itself.
func (t *task) wait(tt *testing.T) error {
	tt.Helper()
	select {
	case <-t.exited:
		return t.err
	case <-time.After(time.Minute):
		tt.Fatalf("the task did not exit; its log:\n%s", t.log())
		return nil
	}
}
