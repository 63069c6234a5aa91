package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/testdaemon"
)

// These tests run a real kindlingd process with the process backend
// (which works on every Linux host, our KVM-limited build machines
// included) and drive it over its gRPC socket.

var bins *testdaemon.Binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kindlingd-test-")
	if err != nil {
		panic(err)
	}
	bins, err = testdaemon.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startDaemon runs kindlingd on a fresh state dir; its sandboxes are
// killed when the test ends.
func startDaemon(t *testing.T, args ...string) *testdaemon.Daemon {
	t.Helper()
	// Short: a Unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "kd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return restartDaemon(t, dir, args...)
}

func restartDaemon(t *testing.T, dir string, args ...string) *testdaemon.Daemon {
	t.Helper()
	d, err := testdaemon.Start(bins, dir, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-d.Exited():
		default:
			d.Kill()
		}
		testdaemon.KillSandboxes(dir)
		if t.Failed() {
			t.Logf("kindlingd log:\n%s", d.Log)
		}
	})
	return d
}

type fnOpts func(*api.FunctionSpec)

func register(t *testing.T, d *testdaemon.Daemon, name string, opts ...fnOpts) *api.Function {
	t.Helper()
	spec := &api.FunctionSpec{Name: name, Image: &api.ImageRef{Path: bins.Image, ManifestSha256: bins.ManifestSHA},
		Environment: map[string]string{"KINDLING_TEST_COUNTER_DIR": filepath.Join(d.StateDir, "counter")}}
	for _, o := range opts {
		o(spec)
	}
	os.MkdirAll(filepath.Join(d.StateDir, "counter"), 0o777)
	f, err := d.API.RegisterFunction(context.Background(), &api.RegisterFunctionRequest{Function: spec})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return f
}

// invoke runs a synchronous invocation and returns its result and the
// log lines streamed before it.
func invoke(t *testing.T, d *testdaemon.Daemon, req *api.InvokeRequest) (*api.Invocation, []string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return d.Invoke(ctx, req)
}

func mustInvoke(t *testing.T, d *testdaemon.Daemon, req *api.InvokeRequest) *api.Invocation {
	t.Helper()
	r, _, err := invoke(t, d, req)
	if err != nil {
		t.Fatalf("invoke %s %s: %v", req.Function, req.Payload, err)
	}
	return r
}

func echo(fn, text string) *api.InvokeRequest {
	return &api.InvokeRequest{Function: fn, Payload: []byte(`{"op":"echo","text":"` + text + `"}`)}
}

func wantCode(t *testing.T, err error, code codes.Code, field string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want %v", err, code)
	}
	if field != "" && !strings.Contains(status.Convert(err).Message(), field) {
		t.Fatalf("error %q does not name %q", status.Convert(err).Message(), field)
	}
}

func TestRegisterInvokeWarmReuse(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "hello")
	r, logs, err := invoke(t, d, echo("hello", "cold"))
	if err != nil {
		t.Fatal(err)
	}
	if r.State != api.InvocationState_SUCCEEDED || r.Start != api.StartKind_COLD || !strings.Contains(string(r.Response), `"text":"cold"`) {
		t.Fatalf("first invocation: %v", r)
	}
	// The task's output travels beside its result, not before it (as in
	// Lambda): a line can trail its invocation's stream. Some invocation
	// of a few must carry its own line.
	streamed := strings.Contains(strings.Join(logs, "\n"), "stdout: echo 4")
	for i := 0; i < 5 && !streamed; i++ {
		_, more, err := invoke(t, d, echo("hello", "more"))
		if err != nil {
			t.Fatal(err)
		}
		streamed = strings.Contains(strings.Join(more, "\n"), "stdout: echo 4")
	}
	if !streamed {
		t.Errorf("the handler's output was never streamed: %q", logs)
	}
	r2 := mustInvoke(t, d, echo("hello", "warm"))
	if r2.Start != api.StartKind_WARM || r2.InstanceId != r.InstanceId {
		t.Fatalf("second invocation: start %v on %s, want WARM on %s", r2.Start, r2.InstanceId, r.InstanceId)
	}
	if r2.Phases.StartUs > 5000 {
		t.Errorf("a warm start took %d us", r2.Phases.StartUs)
	}
	fl, err := d.API.ListFunctions(ctx, &api.ListFunctionsRequest{})
	if err != nil || len(fl.Functions) != 1 || fl.Functions[0].Spec.MemoryMib != 256 || fl.Functions[0].Spec.Version != "1" {
		t.Fatalf("ListFunctions: %v %v", fl, err)
	}
	il, err := d.API.ListInstances(ctx, &api.ListInstancesRequest{})
	if err != nil || len(il.Instances) != 1 || il.Instances[0].State != api.InstanceState_IDLE || il.Instances[0].Invocations < 2 || il.Instances[0].Pid == 0 {
		t.Fatalf("ListInstances: %v %v", il, err)
	}
	hs, err := d.API.HostStatus(ctx, &api.HostStatusRequest{})
	if err != nil || hs.Backend != "process" || hs.IsolationGrade || !strings.Contains(hs.BackendReason, "--backend process") || hs.Instances != 1 {
		t.Fatalf("HostStatus: %v %v", hs, err)
	}
	if !strings.Contains(d.Log.String(), "backend=process") {
		t.Errorf("the start-up log does not name the backend:\n%s", d.Log)
	}
	// A handler error is a result, not a gRPC error.
	r3 := mustInvoke(t, d, &api.InvokeRequest{Function: "hello", Payload: []byte(`{"op":"error"}`)})
	if r3.State != api.InvocationState_FAILED || r3.ErrorMessage != "handler says no" {
		t.Fatalf("handler error: %v", r3)
	}
	del, err := d.API.DeleteFunction(ctx, &api.DeleteFunctionRequest{Name: "hello"})
	if err != nil || len(del.DeletedVersions) != 1 {
		t.Fatalf("delete: %v %v", del, err)
	}
	_, _, err = invoke(t, d, echo("hello", "gone"))
	wantCode(t, err, codes.NotFound, "function")
	waitFor(t, "the deleted function's instance to stop", func() bool {
		il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{})
		return len(il.Instances) == 0
	})
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTenantSubPoolsNeverShare(t *testing.T) {
	d := startDaemon(t)
	register(t, d, "shared", func(s *api.FunctionSpec) { s.Tenant = "acme" })
	a := mustInvoke(t, d, echo("shared", "a"))
	if a.Tenant != "acme" {
		t.Fatalf("default tenant: %q", a.Tenant)
	}
	req := echo("shared", "b")
	req.Tenant = "globex"
	b := mustInvoke(t, d, req)
	if b.InstanceId == a.InstanceId || b.Start != api.StartKind_COLD {
		t.Fatalf("tenant globex was served by %s (%v); acme's instance is %s", b.InstanceId, b.Start, a.InstanceId)
	}
	b2 := mustInvoke(t, d, req)
	a2 := mustInvoke(t, d, echo("shared", "a2"))
	if b2.InstanceId != b.InstanceId || a2.InstanceId != a.InstanceId {
		t.Fatalf("warm reuse crossed tenants: acme %s then %s, globex %s then %s", a.InstanceId, a2.InstanceId, b.InstanceId, b2.InstanceId)
	}
	il, _ := d.API.ListInstances(context.Background(), &api.ListInstancesRequest{Function: "shared"})
	tenants := map[string]string{}
	for _, i := range il.Instances {
		tenants[i.Id] = i.Tenant
	}
	if tenants[a.InstanceId] != "acme" || tenants[b.InstanceId] != "globex" {
		t.Fatalf("instances: %v", il.Instances)
	}
}

func TestKeepAliveReclaimAndRefill(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "brief", func(s *api.FunctionSpec) { s.KeepAliveMs = 300 })
	mustInvoke(t, d, echo("brief", "x"))
	waitFor(t, "keep-alive reclaim", func() bool {
		il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: "brief"})
		return len(il.Instances) == 0
	})
	// min_warm: the pool is filled without an invocation and kept past
	// the keep-alive.
	register(t, d, "kept", func(s *api.FunctionSpec) { s.KeepAliveMs = 200; s.MinWarm = 2 })
	waitFor(t, "refill to min_warm", func() bool {
		il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: "kept"})
		idle := 0
		for _, i := range il.Instances {
			if i.State == api.InstanceState_IDLE {
				idle++
			}
		}
		return idle == 2
	})
	time.Sleep(600 * time.Millisecond)
	il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: "kept"})
	if len(il.Instances) != 2 {
		t.Fatalf("min_warm instances were reclaimed: %v", il.Instances)
	}
	if r := mustInvoke(t, d, echo("kept", "y")); r.Start != api.StartKind_WARM {
		t.Fatalf("an invocation of a prewarmed pool started %v", r.Start)
	}
	// A refilled instance that dies is replaced.
	syscallKill(t, int(il.Instances[0].Pid))
	waitFor(t, "the dead instance to be replaced", func() bool {
		il2, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: "kept"})
		if len(il2.Instances) != 2 {
			return false
		}
		for _, i := range il2.Instances {
			if i.Id == il.Instances[0].Id {
				return false
			}
		}
		return true
	})
}

func TestConcurrencyLimitQueueAndResourceExhausted(t *testing.T) {
	d := startDaemon(t)
	register(t, d, "narrow", func(s *api.FunctionSpec) { s.ConcurrencyLimit = 1; s.QueueLimit = 1 })
	sleep := &api.InvokeRequest{Function: "narrow", Payload: []byte(`{"op":"sleep","ms":700}`)}
	mustInvoke(t, d, echo("narrow", "boot")) // boot outside the timing
	var wg sync.WaitGroup
	results := make([]*api.Invocation, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); results[i], _, errs[i] = invoke(t, d, sleep) }()
		time.Sleep(150 * time.Millisecond) // the first runs, the second queues
	}
	time.Sleep(100 * time.Millisecond)
	_, _, err := invoke(t, d, sleep)
	wantCode(t, err, codes.ResourceExhausted, "queue_limit")
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil || results[i].State != api.InvocationState_SUCCEEDED {
			t.Fatalf("invocation %d: %v %v", i, results[i], errs[i])
		}
	}
	if q := results[1].Phases.QueuedUs; q < 200_000 {
		t.Errorf("the queued invocation waited only %d us", q)
	}
}

func TestTimeoutThenServesAgain(t *testing.T) {
	d := startDaemon(t)
	register(t, d, "slow", func(s *api.FunctionSpec) { s.TimeoutMs = 300 })
	r := mustInvoke(t, d, &api.InvokeRequest{Function: "slow", Payload: []byte(`{"op":"sleep","ms":3000}`)})
	if r.State != api.InvocationState_FAILED || r.ErrorType != "Runtime.Timeout" || !strings.Contains(r.ErrorMessage, "timed out") {
		t.Fatalf("timeout: %v", r)
	}
	if ok := mustInvoke(t, d, echo("slow", "after")); ok.State != api.InvocationState_SUCCEEDED {
		t.Fatalf("after a timeout: %v", ok)
	}
}

func getDone(t *testing.T, d *testdaemon.Daemon, id string) *api.Invocation {
	t.Helper()
	var r *api.Invocation
	waitFor(t, "invocation "+id, func() bool {
		var err error
		r, err = d.API.GetInvocation(context.Background(), &api.GetInvocationRequest{InvocationId: id})
		return err == nil && (r.State == api.InvocationState_SUCCEEDED || r.State == api.InvocationState_FAILED)
	})
	return r
}

// runs counts how many times the count op ran under id.
func runs(t *testing.T, d *testdaemon.Daemon, id string) int {
	b, err := os.ReadFile(filepath.Join(d.StateDir, "counter", id))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func TestAsyncAndIdempotentRetries(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "counter")
	count := []byte(`{"op":"count","ms":50}`)
	a, err := d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "counter", Payload: count, InvocationId: "order-1"})
	if err != nil || a.InvocationId != "order-1" || a.Duplicate {
		t.Fatalf("InvokeAsync: %v %v", a, err)
	}
	a2, err := d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "counter", Payload: count, InvocationId: "order-1"})
	if err != nil || !a2.Duplicate {
		t.Fatalf("retry: %v %v", a2, err)
	}
	_, err = d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "counter", Payload: []byte(`{"op":"count","ms":1}`), InvocationId: "order-1"})
	wantCode(t, err, codes.AlreadyExists, "invocation_id")
	r := getDone(t, d, "order-1")
	if r.State != api.InvocationState_SUCCEEDED || !r.Async || r.Attempts != 1 || !strings.Contains(string(r.Response), "order-1") {
		t.Fatalf("async result: %v", r)
	}
	// A synchronous retry of a finished ID returns the first result.
	again := mustInvoke(t, d, &api.InvokeRequest{Function: "counter", Payload: count, InvocationId: "order-1"})
	if again.FinishedUnixNano != r.FinishedUnixNano {
		t.Fatalf("retry ran again: %v vs %v", again, r)
	}
	// Synchronous retries while the first is still running wait for it.
	var wg sync.WaitGroup
	res := make([]*api.Invocation, 5)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = mustInvoke(t, d, &api.InvokeRequest{Function: "counter", Payload: []byte(`{"op":"count","ms":300}`), InvocationId: "order-2"})
		}()
	}
	wg.Wait()
	for _, x := range res {
		if x.State != api.InvocationState_SUCCEEDED || x.FinishedUnixNano != res[0].FinishedUnixNano {
			t.Fatalf("retries: %v", res)
		}
	}
	if n1, n2 := runs(t, d, "order-1"), runs(t, d, "order-2"); n1 != 1 || n2 != 1 {
		t.Fatalf("order-1 ran %d times, order-2 %d times; want once each", n1, n2)
	}
	_, err = d.API.GetInvocation(ctx, &api.GetInvocationRequest{InvocationId: "never-seen"})
	wantCode(t, err, codes.NotFound, "invocation_id")
}

func TestInvalidRequestsNameTheField(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "valid")
	good := func() *api.FunctionSpec {
		return &api.FunctionSpec{Name: "f", Image: &api.ImageRef{Path: bins.Image, ManifestSha256: bins.ManifestSHA}}
	}
	for _, c := range []struct {
		name  string
		mod   func(*api.FunctionSpec)
		code  codes.Code
		field string
	}{
		{"bad name", func(s *api.FunctionSpec) { s.Name = "../x" }, codes.InvalidArgument, "function.name"},
		{"memory too small", func(s *api.FunctionSpec) { s.MemoryMib = 8 }, codes.InvalidArgument, "function.memory_mib"},
		{"memory too large", func(s *api.FunctionSpec) { s.MemoryMib = 1 << 20 }, codes.InvalidArgument, "function.memory_mib"},
		{"too many vcpus", func(s *api.FunctionSpec) { s.Vcpus = 99 }, codes.InvalidArgument, "function.vcpus"},
		{"unknown network policy", func(s *api.FunctionSpec) { s.Network = 7 }, codes.InvalidArgument, "function.network"},
		{"timeout", func(s *api.FunctionSpec) { s.TimeoutMs = 3_600_000 }, codes.InvalidArgument, "function.timeout_ms"},
		{"malformed digest", func(s *api.FunctionSpec) { s.Image.ManifestSha256 = "abc" }, codes.InvalidArgument, "function.image.manifest_sha256"},
		{"wrong digest", func(s *api.FunctionSpec) { s.Image.ManifestSha256 = strings.Repeat("0", 64) }, codes.FailedPrecondition, "function.image.manifest_sha256"},
		{"no image", func(s *api.FunctionSpec) { s.Image = nil }, codes.InvalidArgument, "function.image.path"},
		{"missing image", func(s *api.FunctionSpec) { s.Image.Path = "/nonexistent" }, codes.FailedPrecondition, "function.image.path"},
		{"cpu template", func(s *api.FunctionSpec) { s.CpuTemplate = "z80" }, codes.InvalidArgument, "function.cpu_template"},
		{"env name", func(s *api.FunctionSpec) { s.Environment = map[string]string{"A=B": "c"} }, codes.InvalidArgument, "function.environment"},
		{"min warm", func(s *api.FunctionSpec) { s.ConcurrencyLimit = 1; s.MinWarm = 2 }, codes.InvalidArgument, "function.min_warm"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := good()
			c.mod(s)
			_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: s})
			wantCode(t, err, c.code, c.field)
		})
	}
	for _, c := range []struct {
		name  string
		req   *api.InvokeRequest
		code  codes.Code
		field string
	}{
		{"unknown function", &api.InvokeRequest{Function: "nope"}, codes.NotFound, "function"},
		{"unknown version", &api.InvokeRequest{Function: "valid", Version: "9"}, codes.NotFound, "version"},
		{"oversized payload", &api.InvokeRequest{Function: "valid", Payload: make([]byte, 6<<20+1)}, codes.InvalidArgument, "payload"},
		{"malformed id", &api.InvokeRequest{Function: "valid", InvocationId: "has space"}, codes.InvalidArgument, "invocation_id"},
		{"long id", &api.InvokeRequest{Function: "valid", InvocationId: strings.Repeat("a", 129)}, codes.InvalidArgument, "invocation_id"},
		{"bad tenant", &api.InvokeRequest{Function: "valid", Tenant: "a/b"}, codes.InvalidArgument, "tenant"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := invoke(t, d, c.req)
			wantCode(t, err, c.code, c.field)
			_, err = d.API.InvokeAsync(ctx, c.req)
			wantCode(t, err, c.code, c.field)
		})
	}
	_, err := d.API.GetInvocation(ctx, &api.GetInvocationRequest{InvocationId: ""})
	wantCode(t, err, codes.InvalidArgument, "invocation_id")
	_, err = d.API.DeleteFunction(ctx, &api.DeleteFunctionRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, "name")
	_, err = d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "valid", Instances: 50})
	wantCode(t, err, codes.InvalidArgument, "instances")
}

func TestPrewarmThenWarmInvoke(t *testing.T) {
	d := startDaemon(t)
	register(t, d, "pre", func(s *api.FunctionSpec) {
		s.WarmupPayloads = [][]byte{[]byte(`{"op":"count","ms":1}`), []byte(`{"op":"echo","text":"warm-up"}`)}
	})
	p, err := d.API.Prewarm(context.Background(), &api.PrewarmRequest{Function: "pre", Instances: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Instances) != 2 || p.Snapshot != "" || !strings.Contains(p.SnapshotNote, "cannot snapshot") || p.BootUs == 0 || p.WarmupUs == 0 {
		t.Fatalf("prewarm: %v", p)
	}
	// The warm-ups ran in each instance before it served.
	entries, _ := os.ReadDir(filepath.Join(d.StateDir, "counter"))
	if len(entries) != 2 {
		t.Fatalf("warm-ups ran %d times, want 2 (one per instance)", len(entries))
	}
	if r := mustInvoke(t, d, echo("pre", "x")); r.Start != api.StartKind_WARM {
		t.Fatalf("after prewarm: %v", r.Start)
	}
}

func TestSandboxKilledMidInvocation(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "victim")
	first := mustInvoke(t, d, echo("victim", "boot"))
	il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{})
	pid := int(il.Instances[0].Pid)
	done := make(chan *api.Invocation, 1)
	go func() {
		done <- mustInvoke(t, d, &api.InvokeRequest{Function: "victim", Payload: []byte(`{"op":"sleep","ms":5000}`)})
	}()
	time.Sleep(300 * time.Millisecond)
	syscallKill(t, pid)
	r := <-done
	if r.State != api.InvocationState_FAILED || r.ErrorType != "Kindling.SandboxCrashed" || !strings.Contains(r.ErrorMessage, "signal") {
		t.Fatalf("after the sandbox was killed: %v", r)
	}
	next := mustInvoke(t, d, echo("victim", "again"))
	if next.State != api.InvocationState_SUCCEEDED || next.InstanceId == first.InstanceId || next.Start != api.StartKind_COLD {
		t.Fatalf("the pool did not recover: %v", next)
	}
	if _, err := d.API.HostStatus(ctx, &api.HostStatusRequest{}); err != nil {
		t.Fatalf("the daemon is affected: %v", err)
	}
}

// TestCrashSafetyAsync: SIGKILL kindlingd with 100 asynchronous
// invocations accepted; after a restart every one completes, and each ran
// exactly once (the task's side-effect files count the runs).
func TestCrashSafetyAsync(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "durable", func(s *api.FunctionSpec) { s.ConcurrencyLimit = 4 })
	const n = 100
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "durable", Payload: []byte(`{"op":"count","ms":30}`), InvocationId: fmt.Sprintf("job-%03d", i)})
			if err != nil {
				t.Errorf("accept job-%03d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	// Kill it mid-stream: some finished, some running, most queued.
	waitFor(t, "the first invocations to run", func() bool {
		entries, _ := os.ReadDir(filepath.Join(d.StateDir, "counter"))
		return len(entries) >= 10
	})
	d.Kill()
	done := 0
	for i := range n {
		if runs(t, d, fmt.Sprintf("job-%03d", i)) > 0 {
			done++
		}
	}
	t.Logf("kindlingd killed with %d of %d accepted invocations started or finished", done, n)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the first kindlingd's log:\n%s", d.Log)
		}
	})
	d2 := restartDaemon(t, d.StateDir)
	var reruns int
	for i := range n {
		id := fmt.Sprintf("job-%03d", i)
		r := getDone(t, d2, id)
		if r.State != api.InvocationState_SUCCEEDED {
			t.Errorf("%s: %v", id, r)
		}
		if r.Attempts > 1 {
			reruns++
		}
		if got := runs(t, d2, id); got != 1 {
			t.Errorf("%s ran %d times", id, got)
		}
	}
	if reruns > 0 {
		t.Errorf("%d invocations were run again although their sandboxes survived", reruns)
	}
	if !strings.Contains(d2.Log.String(), "sandbox reattached") {
		t.Errorf("the restarted kindlingd reattached no sandbox:\n%s", d2.Log)
	}
}

// TestRerunWhenSandboxDiedToo: kill kindlingd and the sandbox running an
// accepted invocation; the restarted kindlingd runs it again and says so.
func TestRerunWhenSandboxDiedToo(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "fragile")
	if _, err := d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "fragile", Payload: []byte(`{"op":"sleep","ms":3000}`), InvocationId: "long-1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the invocation to run", func() bool {
		r, err := d.API.GetInvocation(ctx, &api.GetInvocationRequest{InvocationId: "long-1"})
		return err == nil && r.State == api.InvocationState_RUNNING
	})
	d.Kill()
	testdaemon.KillSandboxes(d.StateDir)
	d2 := restartDaemon(t, d.StateDir)
	r := getDone(t, d2, "long-1")
	if r.State != api.InvocationState_SUCCEEDED || r.Attempts != 2 || !strings.Contains(r.RerunReason, "gone") {
		t.Fatalf("rerun: %v", r)
	}
}

func TestLoad1000Concurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: 1000 invocations over 10 functions (-short)")
	}
	d := startDaemon(t)
	ctx := context.Background()
	const fns, per = 10, 100
	for f := range fns {
		register(t, d, fmt.Sprintf("load%d", f), func(s *api.FunctionSpec) { s.ConcurrencyLimit = 2; s.QueueLimit = per })
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for i := range fns * per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("load-%04d", i)
			r, _, err := invoke(t, d, &api.InvokeRequest{Function: fmt.Sprintf("load%d", i%fns), Payload: []byte(`{"op":"count","ms":1}`), InvocationId: id})
			if err != nil || r.State != api.InvocationState_SUCCEEDED {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s: %v %v", id, r, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d invocations failed, e.g. %s", len(failed), failed[0])
	}
	for i := range fns * per {
		if n := runs(t, d, fmt.Sprintf("load-%04d", i)); n != 1 {
			t.Fatalf("load-%04d ran %d times", i, n)
		}
	}
	rss := rssKiB(t, d.Cmd.Process.Pid)
	t.Logf("kindlingd RSS after 1000 invocations: %d KiB", rss)
	if rss > 256<<10 {
		t.Errorf("kindlingd RSS %d KiB after 1000 invocations; want under 256 MiB", rss)
	}
	il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{})
	if len(il.Instances) > fns*2 {
		t.Errorf("%d instances for %d functions limited to 2 each", len(il.Instances), fns)
	}
}

func TestClientDisconnectKeepsResult(t *testing.T) {
	d := startDaemon(t)
	register(t, d, "detached")
	mustInvoke(t, d, echo("detached", "boot"))
	ctx, cancel := context.WithCancel(context.Background())
	st, err := d.API.Invoke(ctx, &api.InvokeRequest{Function: "detached", Payload: []byte(`{"op":"count","ms":500}`), InvocationId: "walk-away"})
	if err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	for {
		if _, err := st.Recv(); err != nil {
			break
		}
	}
	r := getDone(t, d, "walk-away")
	if r.State != api.InvocationState_SUCCEEDED || runs(t, d, "walk-away") != 1 {
		t.Fatalf("after the caller left: %v", r)
	}
}

func TestCorruptStoreRefusesToStart(t *testing.T) {
	dir, _ := os.MkdirTemp("", "kd-")
	defer os.RemoveAll(dir)
	db := filepath.Join(dir, "state.db")
	// A store with data, then damaged.
	d, err := testdaemon.Start(bins, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Terminate(10 * time.Second)
	b, _ := os.ReadFile(db)
	for i := 0; i < len(b); i += 7 {
		b[i] ^= 0x5a
	}
	os.WriteFile(db, b, 0o600)
	_, err = testdaemon.Start(bins, dir, nil)
	if err == nil || !strings.Contains(err.Error(), db) || !strings.Contains(err.Error(), "refusing to start") {
		t.Fatalf("kindlingd on a corrupt store: %v", err)
	}
	if after, _ := os.ReadFile(db); string(after) != string(b) {
		t.Fatal("the corrupt store was modified")
	}
}

func TestTCPNeedsMutualTLS(t *testing.T) {
	dir, _ := os.MkdirTemp("", "kd-")
	defer os.RemoveAll(dir)
	_, err := testdaemon.Start(bins, dir, nil, "--listen", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("TCP without certificates: %v", err)
	}
}

func TestSIGTERMDrains(t *testing.T) {
	d := startDaemon(t)
	register(t, d, "drain")
	mustInvoke(t, d, echo("drain", "boot"))
	done := make(chan *api.Invocation, 1)
	go func() {
		r, _, err := invoke(t, d, &api.InvokeRequest{Function: "drain", Payload: []byte(`{"op":"sleep","ms":800}`)})
		if err != nil {
			t.Errorf("in-flight invocation during drain: %v", err)
		}
		done <- r
	}()
	time.Sleep(200 * time.Millisecond)
	code, err := d.Terminate(30 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("SIGTERM: exit %d, %v\n%s", code, err, d.Log)
	}
	if r := <-done; r == nil || r.State != api.InvocationState_SUCCEEDED {
		t.Fatalf("the in-flight invocation: %v", r)
	}
}

func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var n int
			fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:")), &n)
			return n
		}
	}
	return 0
}

func syscallKill(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("no pid to kill")
	}
	// The sandbox leads its own session: kill the whole group.
	if err := syscallKillGroup(pid); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
}

func syscallKillGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGKILL) }

// TestFullDiskRefusesAsync: with the state store's disk full, an
// asynchronous invocation is refused (ResourceExhausted, naming the
// cause), never accepted and lost; once there is room it is accepted.
func TestFullDiskRefusesAsync(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs as the state dir")
	}
	dir, err := os.MkdirTemp("", "kd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	d := restartDaemon(t, dir)
	ctx := context.Background()
	register(t, d, "filler")
	mustInvoke(t, d, echo("filler", "boot"))
	// Fill the disk, leaving the store no room to grow.
	fill, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		if _, err := fill.Write(chunk); err != nil {
			break
		}
	}
	for {
		if _, err := fill.Write(chunk[:4096]); err != nil {
			break
		}
	}
	fill.Close()
	big := []byte(`{"op":"echo","text":"` + strings.Repeat("x", 5<<20) + `"}`)
	_, err = d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "filler", Payload: big, InvocationId: "full-1"})
	wantCode(t, err, codes.ResourceExhausted, "no space left")
	if !strings.Contains(status.Convert(err).Message(), "not accepted") {
		t.Fatalf("the refusal does not say the invocation was not accepted: %v", err)
	}
	_, err = d.API.GetInvocation(ctx, &api.GetInvocationRequest{InvocationId: "full-1"})
	wantCode(t, err, codes.NotFound, "")
	os.Remove(filepath.Join(dir, "fill"))
	a, err := d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "filler", Payload: big, InvocationId: "full-1"})
	if err != nil || a.Duplicate {
		t.Fatalf("after freeing space: %v %v", a, err)
	}
	if r := getDone(t, d, "full-1"); r.State != api.InvocationState_SUCCEEDED {
		t.Fatalf("full-1: %v", r)
	}
}

func TestHealthReflectionAndMetrics(t *testing.T) {
	d := startDaemon(t, "--metrics-addr", "127.0.0.1:0")
	ctx := context.Background()
	hc, err := healthpb.NewHealthClient(d.Conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "kindling.v1.Kindling"})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hc, err)
	}
	// What grpcurl does first: list the services through reflection.
	rc, err := reflectionpb.NewServerReflectionClient(d.Conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	if !strings.Contains(strings.Join(names, " "), "kindling.v1.Kindling") || !strings.Contains(strings.Join(names, " "), "grpc.health.v1.Health") {
		t.Fatalf("reflection lists %v", names)
	}
	register(t, d, "metered", func(s *api.FunctionSpec) { s.Tenant = "acme" })
	mustInvoke(t, d, echo("metered", "a"))
	mustInvoke(t, d, echo("metered", "b"))
	addr := metricsAddr(t, d)
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		`kindling_instance_starts_total{kind="cold"} 1`,
		`kindling_instance_starts_total{kind="warm"} 1`,
		`kindling_invocation_phase_seconds_count{phase="run",start="warm"} 1`,
		`kindling_pool_instances{function="metered",state="idle",tenant="acme",version="1"} 1`,
		`kindling_queue_depth{function="metered",version="1"} 0`,
		`kindling_invocations_total{async="false",state="succeeded"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}

// metricsAddr finds the metrics listener's address in kindlingd's log.
func metricsAddr(t *testing.T, d *testdaemon.Daemon) string {
	t.Helper()
	for _, f := range strings.Fields(d.Log.String()) {
		if a, ok := strings.CutPrefix(f, "metrics="); ok && a != "" {
			return a
		}
	}
	t.Fatalf("no metrics address in the log:\n%s", d.Log)
	return ""
}

// TestDeleteWithQueuedInvocations: invocations queued for a function that
// is deleted fail as FunctionDeleted and start no sandbox for it.
func TestDeleteWithQueuedInvocations(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	register(t, d, "doomed", func(s *api.FunctionSpec) { s.ConcurrencyLimit = 1 })
	mustInvoke(t, d, echo("doomed", "boot"))
	for i := range 4 {
		if _, err := d.API.InvokeAsync(ctx, &api.InvokeRequest{Function: "doomed", Payload: []byte(`{"op":"count","ms":400}`), InvocationId: fmt.Sprintf("q-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // q-0 runs, the rest wait for the slot
	if _, err := d.API.DeleteFunction(ctx, &api.DeleteFunctionRequest{Name: "doomed"}); err != nil {
		t.Fatal(err)
	}
	deleted := 0
	for i := range 4 {
		r := getDone(t, d, fmt.Sprintf("q-%d", i))
		if r.ErrorType == "Kindling.FunctionDeleted" {
			deleted++
		}
	}
	if deleted < 2 {
		t.Fatalf("only %d of the queued invocations were failed as FunctionDeleted", deleted)
	}
	waitFor(t, "no instances", func() bool {
		il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{})
		return len(il.Instances) == 0
	})
	if strings.Count(d.Log.String(), "instance started") != 1 {
		t.Fatalf("instances were started for a deleted function:\n%s", d.Log)
	}
}

// TestHostInstanceLimit: at --max-instances the least recently used idle
// instance is evicted for a new start; with every instance busy a start
// is refused with ResourceExhausted.
func TestHostInstanceLimit(t *testing.T) {
	d := startDaemon(t, "--max-instances", "1")
	ctx := context.Background()
	register(t, d, "first")
	register(t, d, "second")
	a := mustInvoke(t, d, echo("first", "a"))
	b := mustInvoke(t, d, echo("second", "b"))
	il, _ := d.API.ListInstances(ctx, &api.ListInstancesRequest{})
	if len(il.Instances) != 1 || il.Instances[0].Id != b.InstanceId || a.InstanceId == b.InstanceId {
		t.Fatalf("after evicting for a new start: %v", il.Instances)
	}
	busy := make(chan error, 1)
	go func() {
		_, _, err := invoke(t, d, &api.InvokeRequest{Function: "second", Payload: []byte(`{"op":"sleep","ms":1000}`)})
		busy <- err
	}()
	time.Sleep(200 * time.Millisecond)
	_, _, err := invoke(t, d, echo("first", "c"))
	wantCode(t, err, codes.ResourceExhausted, "limit of 1 instances")
	if err := <-busy; err != nil {
		t.Fatal(err)
	}
}
