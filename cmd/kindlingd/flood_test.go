package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/echoguest"
	"github.com/kindlingvm/kindling/internal/testdaemon"
)

// floodRSSBound is how much kindlingd's peak resident set may grow while
// a guest floods it: generous (its heap and the Go runtime's slack), and
// far below what an unbounded queue or a 4 GiB frame would take.
const floodRSSBound = 64 << 20

// invocationLogCap is kindlingd's limit on the bytes of one invocation's
// streamed output lines (agent/host maxInvocationLogBytes), plus its
// marker line.
const invocationLogCap = 1<<20 + 256

// TestGuestThatFloodsVsock: a guest that answers an invocation with an
// endless stream of log frames (and never a response) is torn down at the
// invocation's deadline, which fails as a timeout; the caller gets at most
// the invocation's log cap of its output; kindlingd's memory stays flat
// and it serves the function's next invocation on a new VM.
func TestGuestThatFloodsVsock(t *testing.T) {
	d, first := floodingDaemon(t, "flood", 500)
	peak := watchPeakRSS(t, d)
	t0 := time.Now()
	r, logs, err := invoke(t, d, &api.InvokeRequest{Function: "flood", Payload: []byte(echoguest.FloodLogsOp)})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if r.State != api.InvocationState_FAILED || r.ErrorType != "Runtime.Timeout" || !strings.Contains(r.ErrorMessage, "did not answer") {
		t.Fatalf("a flooding guest: %v", r)
	}
	var bytes int
	truncated := false
	for _, l := range logs { // "stream: line"
		stream, line, _ := strings.Cut(l, ": ")
		bytes += len(line)
		truncated = truncated || stream == "kindling" && strings.HasPrefix(line, "... log truncated")
	}
	if len(logs) == 0 || bytes > invocationLogCap {
		t.Fatalf("the caller got %d log lines, %d bytes; want some, and at most %d", len(logs), bytes, invocationLogCap)
	}
	t.Logf("failed as %s after %v; the caller got %d log lines (%d KiB; the truncation marker: %v)", r.ErrorType,
		took.Round(time.Millisecond), len(logs), bytes>>10, truncated)
	afterFlood(t, d, first, r, peak)
}

// TestGuestThatFloodsVsockWithGarbage: a guest that answers an invocation
// with a frame declaring a 4 GiB body, then bytes that are not frames, has
// the frame refused before it is allocated: the invocation fails at once,
// naming the frame's size and the limit, the VM is torn down, and
// kindlingd serves the next invocation on a new VM.
func TestGuestThatFloodsVsockWithGarbage(t *testing.T) {
	d, first := floodingDaemon(t, "garbage", 10_000)
	peak := watchPeakRSS(t, d)
	t0 := time.Now()
	r := mustInvoke(t, d, &api.InvokeRequest{Function: "garbage", Payload: []byte(echoguest.FloodGarbageOp)})
	took := time.Since(t0)
	want := fmt.Sprintf("a log line of %d bytes, above the %d-byte limit", echoguest.FloodDeclaredBytes, 1<<20)
	if r.State != api.InvocationState_FAILED || r.ErrorType != "Kindling.SandboxError" ||
		!strings.Contains(r.ErrorMessage, "broke the agent protocol") || !strings.Contains(r.ErrorMessage, want) {
		t.Fatalf("a guest sending garbage: %v; want Kindling.SandboxError naming %q", r, want)
	}
	// Refused when it arrived, not at the 10 s deadline.
	if took > 5*time.Second {
		t.Fatalf("the invocation failed after %v; want it failed as the frame arrived", took)
	}
	t.Logf("failed as %s after %v: %s", r.ErrorType, took.Round(time.Millisecond), r.ErrorMessage)
	afterFlood(t, d, first, r, peak)
}

// floodingDaemon runs kindlingd's microVM backend with the echo guest
// registered as fn (timeout in ms) and warm: its first invocation done.
func floodingDaemon(t *testing.T, fn string, timeoutMs uint32) (*testdaemon.Daemon, *api.Invocation) {
	t.Helper()
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm")
	_, err := d.API.RegisterFunction(context.Background(), &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: fn, MemoryMib: 64,
		TimeoutMs: timeoutMs, Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	first := mustInvoke(t, d, &api.InvokeRequest{Function: fn, Payload: []byte(`{}`)})
	if first.State != api.InvocationState_SUCCEEDED {
		t.Fatalf("first: %v", first)
	}
	return d, first
}

// afterFlood checks what must hold after a bad guest's invocation r: its
// VM is gone, kindlingd's peak resident set grew by less than
// floodRSSBound, and the function's next invocation runs on another VM.
func afterFlood(t *testing.T, d *testdaemon.Daemon, first, r *api.Invocation, peak func() (base, peak int64)) {
	t.Helper()
	if r.InstanceId != first.InstanceId {
		t.Logf("the bad invocation ran on %s, not the warm %s", r.InstanceId, first.InstanceId)
	}
	waitFor(t, "the flooding VM to be gone", func() bool {
		_, err := os.Stat(filepath.Join(d.StateDir, "sandboxes", r.InstanceId))
		return os.IsNotExist(err)
	})
	base, hwm := peak()
	t.Logf("kindlingd's resident set: %d MiB before, a peak of %d MiB since", base>>20, hwm>>20)
	if hwm-base > floodRSSBound {
		t.Fatalf("kindlingd's resident set grew from %d MiB to a peak of %d MiB: more than %d MiB", base>>20, hwm>>20, floodRSSBound>>20)
	}
	next := mustInvoke(t, d, &api.InvokeRequest{Function: r.Function, Payload: []byte(`{"after":1}`)})
	if next.State != api.InvocationState_SUCCEEDED || next.InstanceId == r.InstanceId || !strings.Contains(string(next.Response), `"after"`) {
		t.Fatalf("after the flood: %v", next)
	}
	select {
	case <-d.Exited():
		t.Fatal("kindlingd exited")
	default:
	}
}

// watchPeakRSS reads kindlingd's resident set now and resets its peak
// (VmHWM; writing 5 to clear_refs, Linux 4.0 on); the function it returns
// reads the base and the peak since. Where the peak cannot be reset, the
// peak since the daemon started is used: stricter, never looser.
func watchPeakRSS(t *testing.T, d *testdaemon.Daemon) func() (base, peak int64) {
	t.Helper()
	pid := d.Cmd.Process.Pid
	base := procStatus(t, pid, "VmRSS")
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Logf("cannot reset kindlingd's peak resident set (%v): using the peak since it started", err)
	}
	return func() (int64, int64) { return base, procStatus(t, pid, "VmHWM") }
}

// procStatus reads a "kB" field of /proc/<pid>/status, in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status %s: %q", pid, field, v)
			}
			return kb << 10
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}
