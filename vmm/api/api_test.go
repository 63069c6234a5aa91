package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/vmm"
)

// fakeVM is a Controller with a scripted state machine.
type fakeVM struct {
	mu    sync.Mutex
	state vmm.State
	done  chan struct{}
}

func newFake() *fakeVM { return &fakeVM{state: vmm.StateCreated, done: make(chan struct{})} }

func (f *fakeVM) Status() vmm.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := vmm.Status{State: f.state}
	if f.state == vmm.StateStopped {
		s.Exit = &vmm.ExitReason{Kind: vmm.ExitHostStop, Message: "stopped"}
	}
	return s
}

func (f *fakeVM) move(from, to vmm.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != from {
		return errors.Join(vmm.ErrNotRunning, errors.New(string(f.state)))
	}
	f.state = to
	return nil
}

func (f *fakeVM) Start() error  { return f.move(vmm.StateCreated, vmm.StateRunning) }
func (f *fakeVM) Pause() error  { return f.move(vmm.StateRunning, vmm.StatePaused) }
func (f *fakeVM) Resume() error { return f.move(vmm.StatePaused, vmm.StateRunning) }
func (f *fakeVM) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != vmm.StateStopped {
		f.state = vmm.StateStopped
		close(f.done)
	}
}
func (f *fakeVM) Done() <-chan struct{} { return f.done }
func (f *fakeVM) Metrics() vmm.Metrics  { return vmm.Metrics{VCPUs: 3} }

func serve(t *testing.T, ctl Controller) (*Client, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctl, l, slog.New(slog.NewTextHandler(io.Discard, nil)), DefaultLinger) }()
	return NewClient(sock), errc
}

func TestLifecycleThroughAPI(t *testing.T) {
	f := newFake()
	c, errc := serve(t, f)
	ctx := context.Background()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(ctx); !IsConflict(err) {
		t.Fatalf("pause before start: %v, want 409", err)
	}
	for _, step := range []func(context.Context) error{c.Start, c.Pause, c.Resume} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := c.Metrics(ctx); err != nil || m.VCPUs != 3 {
		t.Fatalf("metrics %+v %v", m, err)
	}
	waited := make(chan vmm.Status, 1)
	go func() {
		st, err := c.WaitStopped(ctx)
		if err != nil {
			t.Error(err)
		}
		waited <- st
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-waited:
		t.Fatal("wait=stopped answered while the VM runs")
	default:
	}
	st, err := c.Stop(ctx)
	if err != nil || st.State != vmm.StateStopped {
		t.Fatalf("stop: %+v %v", st, err)
	}
	select {
	case st := <-waited:
		if st.Exit == nil || st.Exit.Kind != vmm.ExitHostStop {
			t.Fatalf("long poll got %+v", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("long poll not answered after stop")
	}
	if err := <-errc; err != nil {
		t.Fatalf("server: %v", err)
	}
}

func TestErrorsAreJSONWithAdvice(t *testing.T) {
	c, _ := serve(t, newFake())
	ctx := context.Background()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ method, path, want string }{
		{http.MethodGet, "/nope", "no such endpoint"},
		{http.MethodGet, "/vm?wait=running", `only state to wait for is "stopped"`},
	} {
		err := c.do(ctx, tc.method, tc.path, nil)
		var se *StatusError
		if !errors.As(err, &se) || !strings.Contains(se.Message, tc.want) {
			t.Errorf("%s %s: %v, want a message with %q", tc.method, tc.path, err, tc.want)
		}
	}
	if err := c.do(ctx, http.MethodPost, "/vm/start", nil); err == nil {
		t.Error("POST /vm/start must be refused: actions are PUT")
	}
}

func TestListenRefusesLiveSocketReplacesStale(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second listener: %v", err)
	}
	// Closing a unix listener removes its file; leave a stale one behind
	// the way a killed process does.
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
}

// A guest can stop before its supervisor's first request: the final status
// must still be readable, and the server must then go away promptly.
func TestFinalStatusSurvivesAnEarlyStop(t *testing.T) {
	f := newFake()
	f.Start()
	f.Stop()
	c, errc := serve(t, f)
	time.Sleep(50 * time.Millisecond)
	st, err := c.WaitStopped(context.Background())
	if err != nil || st.Exit == nil {
		t.Fatalf("final status after an early stop: %+v %v", st, err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(DefaultLinger / 2):
		t.Fatal("server lingered after delivering the final status")
	}
}
