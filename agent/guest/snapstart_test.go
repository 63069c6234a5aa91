package guest_test

import (
	"context"
	"encoding/json"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/testtasks"
)

// snapRuntime is the custom runtime with SnapStart hooks.
func snapRuntime(t *testing.T) string { return testTask(t, testtasks.GoSnapStart) }

// snapAgent runs an agent for task with SnapStart on.
func snapAgent(t *testing.T, task string, env ...string) *guest.Agent {
	t.Helper()
	a, err := guest.New(guest.Config{Task: []string{task}, RuntimeAddr: "127.0.0.1:0", FunctionName: "snap", SnapStart: true, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	go a.Run(ctx)
	t.Cleanup(func() { stop(); a.Close() })
	return a
}

// connect attaches a host connection to a, as kindlingd does on every
// connection (a restore's included): a new client and a hello.
func connect(t *testing.T, a *guest.Agent) (*guest.Client, func()) {
	t.Helper()
	host, g := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Serve(ctx, g); close(done) }()
	c := guest.NewClient(host)
	if err := c.Hello([]byte("seed")); err != nil {
		t.Fatal(err)
	}
	closeFn := func() { cancel(); host.Close(); g.Close(); <-done }
	t.Cleanup(closeFn)
	return c, closeFn
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10 s", what)
	}
}

type snapAnswer struct {
	Events []string `json:"events"`
	Random string   `json:"random"`
}

func invokeSnap(t *testing.T, c *guest.Client, id string) snapAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := c.Invoke(ctx, id, []byte(`{}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != guest.TypeResponse {
		t.Fatalf("invocation %s: %s %s", id, f.ErrorType, f.Body)
	}
	var ans snapAnswer
	if err := json.Unmarshal(f.Body, &ans); err != nil {
		t.Fatalf("answer %q: %v", f.Body, err)
	}
	return ans
}

// A runtime with SnapStart hooks: its checkpoint is its call to
// /restore/next, and in the restored environment its after-restore hook
// runs, and is reported, before the first invocation.
func TestSnapStartHooksInOrder(t *testing.T) {
	a := snapAgent(t, snapRuntime(t))
	c, closeConn := connect(t, a)
	waitFor(t, c.Ready, "ready")
	if !c.SnapStart() {
		t.Fatal("the runtime asked /restore/next first, but the ready frame does not say SnapStart")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := c.Checkpoint(ctx)
	if err != nil || f.ErrorType != "" || !f.SnapStart {
		t.Fatalf("checkpoint: %+v %s, %v", f.Header, f.Body, err)
	}
	// The snapshot would be cut here; a restore is a new connection and
	// its hello.
	closeConn()
	c2, _ := connect(t, a)
	waitFor(t, c2.Restored, "restored")
	if rf := c2.RestoredFrame(); rf.ErrorType != "" {
		t.Fatalf("restored with %s: %s", rf.ErrorType, rf.Body)
	}
	got := invokeSnap(t, c2, "first").Events
	if want := []string{"before-snapshot", "after-restore", "invoke"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

// An environment whose snapshot is never cut serves anyway: its first
// invocation lets the runtime go on from its checkpoint.
func TestSnapStartServesWithoutRestore(t *testing.T) {
	a := snapAgent(t, snapRuntime(t))
	c, _ := connect(t, a)
	waitFor(t, c.Ready, "ready")
	got := invokeSnap(t, c, "one").Events
	if want := []string{"before-snapshot", "after-restore", "invoke"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	ans := invokeSnap(t, c, "two")
	if len(ans.Events) != 4 {
		t.Fatalf("second invocation's events %v", ans.Events)
	}
}

// A failing after-restore hook (POST /restore/error) is the restore's
// answer, with its error type.
func TestSnapStartRestoreError(t *testing.T) {
	a := snapAgent(t, snapRuntime(t), "KINDLING_TEST_FAIL_RESTORE=1")
	c, closeConn := connect(t, a)
	waitFor(t, c.Ready, "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if f, err := c.Checkpoint(ctx); err != nil || f.ErrorType != "" {
		t.Fatalf("checkpoint: %+v, %v", f.Header, err)
	}
	closeConn()
	c2, _ := connect(t, a)
	waitFor(t, c2.Restored, "restored")
	if rf := c2.RestoredFrame(); rf.ErrorType != "Runtime.AfterRestoreError" {
		t.Fatalf("restored %+v %s, want Runtime.AfterRestoreError", rf.Header, rf.Body)
	}
}

// A before-snapshot hook that hangs never reaches the checkpoint; the
// host's deadline ends the wait.
func TestSnapStartHangingHook(t *testing.T) {
	a := snapAgent(t, snapRuntime(t), "KINDLING_TEST_HANG_BEFORE_SNAPSHOT=1")
	c, _ := connect(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if f, err := c.Checkpoint(ctx); err == nil {
		t.Fatalf("checkpoint answered %+v while the hook hangs", f.Header)
	}
}

// A task without SnapStart hooks is checkpointed idle in
// /invocation/next and restored at once; its results carry their CPU.
func TestCheckpointWithoutHooks(t *testing.T) {
	a := snapAgent(t, handler(t))
	c, closeConn := connect(t, a)
	waitFor(t, c.Ready, "ready")
	if c.SnapStart() {
		t.Fatal("aws-lambda-go does not speak SnapStart, but the ready frame says it does")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := c.Invoke(ctx, "warm", []byte(`{"op":"echo","data":"x"}`), 5*time.Second)
	if err != nil || f.Type != guest.TypeResponse {
		t.Fatalf("invoke: %+v, %v", f.Header, err)
	}
	if f.CPUNs <= 0 {
		t.Fatalf("a result without the task's CPU time: %+v", f.Header)
	}
	cf, err := c.Checkpoint(ctx)
	if err != nil || cf.ErrorType != "" || cf.SnapStart {
		t.Fatalf("checkpoint: %+v, %v", cf.Header, err)
	}
	closeConn()
	c2, _ := connect(t, a)
	waitFor(t, c2.Restored, "restored")
}
