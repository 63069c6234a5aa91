package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api"
	"github.com/kindlingvm/kindling/vmm/api/client"
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
func (f *fakeVM) Done() <-chan struct{}                    { return f.done }
func (f *fakeVM) Metrics() vmm.Metrics                     { return vmm.Metrics{VCPUs: 3} }
func (f *fakeVM) RecordWorkingSet(dir string) (int, error) { return 7, nil }
func (f *fakeVM) SnapshotDiff(dir string) (vmm.SnapshotInfo, error) {
	return vmm.SnapshotInfo{}, vmm.ErrNoBase
}
func (f *fakeVM) Snapshot(dir string) (vmm.SnapshotInfo, error) {
	if f.Status().State != vmm.StatePaused {
		return vmm.SnapshotInfo{}, vmm.ErrNotRunning
	}
	return vmm.SnapshotInfo{Dir: dir}, nil
}

func serve(t *testing.T, ctl api.Controller) (*client.Client, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- api.Serve(ctl, l, slog.New(slog.NewTextHandler(io.Discard, nil)), api.DefaultLinger) }()
	return client.New(sock), errc
}

func TestLifecycleThroughAPI(t *testing.T) {
	f := newFake()
	c, errc := serve(t, f)
	ctx := context.Background()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(ctx); !client.IsConflict(err) {
		t.Fatalf("pause before start: %v, want 409", err)
	}
	if _, err := c.Snapshot(ctx, "/snap"); !client.IsConflict(err) {
		t.Fatalf("snapshot of a VM that is not paused: %v, want 409", err)
	}
	for _, step := range []func(context.Context) error{c.Start, c.Pause} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := c.Snapshot(ctx, "/snap"); err != nil || info.Dir != "/snap" {
		t.Fatalf("snapshot: %+v %v", info, err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
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

// raw sends one raw request on a fresh connection and returns the reply.
func raw(t *testing.T, sock, req string) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

// putJSON is a raw PUT with a JSON body and its real length.
func putJSON(path, body string) string {
	return fmt.Sprintf("PUT %s HTTP/1.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", path, len(body), body)
}

func TestRawHTTP(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go api.Serve(newFake(), l, slog.New(slog.NewTextHandler(io.Discard, nil)), api.DefaultLinger)
	for _, tc := range []struct{ req, status, body string }{
		// What curl --unix-socket sends.
		{"GET /vm HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nConnection: close\r\n\r\n", "200 OK", `{"state":"created"}`},
		{"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n", "404 Not Found", "no such endpoint"},
		{"POST /vm/start HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", "405 Method Not Allowed", "use PUT"},
		{"GET /vm?wait=running HTTP/1.1\r\nConnection: close\r\n\r\n", "400 Bad Request", `only state to wait for is \"stopped\"`},
		{"garbage\r\n\r\n", "400 Bad Request", "malformed request line"},
		{"GET /vm HTTP/1.1\r\nno colon here\r\n\r\n", "400 Bad Request", "malformed header"},
		{"PUT /vm/start HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "411 Length Required", "Content-Length"},
		{"PUT /vm/start HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", "413 Content Too Large", "at most"},
		{"GET /vm HTTP/1.1\r\nX: " + strings.Repeat("a", 10000) + "\r\n\r\n", "431 Request Header Fields Too Large", "too long"},
		{"GET /vm HTTP/1.1\r\n" + strings.Repeat("X: y\r\n", 100) + "\r\n", "431 Request Header Fields Too Large", "too large"},
		{"GET /vm HTTP/1.0\r\n\r\n", "200 OK", `"state"`},
		{putJSON("/vm/snapshot", `{"dir":"/x","k":1}`), "400 Bad Request", "unknown field"},
		{putJSON("/vm/snapshot", `{"dir":"/x","kind":"delta"}`), "400 Bad Request", `want \"full\" or \"diff\"`},
		{putJSON("/vm/snapshot", `{"dir":"/x","kind":"diff"}`), "409 Conflict", "take a full snapshot"},
		{putJSON("/vm/snapshot", `{}`), "400 Bad Request", `\"dir\" is required`},
		{putJSON("/vm/workingset", `{"dir":"/s"}`), "200 OK", `{"pages":7}`},
		{putJSON("/vm/workingset", `{}`), "400 Bad Request", "working set request"},
	} {
		got := raw(t, sock, tc.req)
		if !strings.HasPrefix(got, "HTTP/1.1 "+tc.status+"\r\n") || !strings.Contains(got, tc.body) {
			t.Errorf("%.40q:\n%s\nwant %s with %q", tc.req, got, tc.status, tc.body)
		}
	}
	// Two pipelined requests on one keep-alive connection.
	got := raw(t, sock, "GET /metrics HTTP/1.1\r\n\r\nGET /vm HTTP/1.1\r\nConnection: close\r\n\r\n")
	if strings.Count(got, "HTTP/1.1 200 OK") != 2 || !strings.Contains(got, `"vcpus":3`) {
		t.Errorf("pipelined requests:\n%s", got)
	}
}

func TestListenRefusesLiveSocketReplacesStale(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.Listen(sock); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second listener: %v", err)
	}
	// Closing a unix listener removes its file; leave a stale one behind
	// the way a killed process does.
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l.Close()
	l2, err := api.Listen(sock)
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
	case <-time.After(api.DefaultLinger / 2):
		t.Fatal("server lingered after delivering the final status")
	}
}
