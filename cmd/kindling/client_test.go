package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kindlingvm/kindling/agent/api"
)

// fakeKindlingd records the requests it gets and answers with what the
// test set. err, when set, is every call's answer.
type fakeKindlingd struct {
	api.UnimplementedKindlingServer

	mu       sync.Mutex
	requests []proto.Message

	err       error
	functions []*api.Function
	deleted   []string
	// events are Invoke's stream; before sending the event at index
	// waitBefore it waits for proceed (closed by the test's stderr).
	events     []*api.InvokeEvent
	waitBefore int
	proceed    chan struct{}
	async      *api.InvokeAsyncResponse
	invocation *api.Invocation
	instances  []*api.Instance
	status     *api.HostStatusResponse
	prewarm    *api.PrewarmResponse
}

func (f *fakeKindlingd) record(m proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, m)
	return f.err
}

func (f *fakeKindlingd) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = nil
}

func (f *fakeKindlingd) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// only is the one request the fake got.
func (f *fakeKindlingd) only(t *testing.T) proto.Message {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) != 1 {
		t.Fatalf("kindlingd got %d requests, want 1: %v", len(f.requests), f.requests)
	}
	return f.requests[0]
}

func (f *fakeKindlingd) RegisterFunction(_ context.Context, r *api.RegisterFunctionRequest) (*api.Function, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &api.Function{Spec: r.GetFunction(), RegisteredUnixNano: time.Now().UnixNano()}, nil
}

func (f *fakeKindlingd) ListFunctions(_ context.Context, r *api.ListFunctionsRequest) (*api.ListFunctionsResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &api.ListFunctionsResponse{Functions: f.functions}, nil
}

func (f *fakeKindlingd) DeleteFunction(_ context.Context, r *api.DeleteFunctionRequest) (*api.DeleteFunctionResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &api.DeleteFunctionResponse{DeletedVersions: f.deleted}, nil
}

func (f *fakeKindlingd) Invoke(r *api.InvokeRequest, s grpc.ServerStreamingServer[api.InvokeEvent]) error {
	if err := f.record(r); err != nil {
		return err
	}
	for i, ev := range f.events {
		if f.proceed != nil && i == f.waitBefore {
			select {
			case <-f.proceed:
			case <-time.After(time.Second):
				return status.Error(codes.Internal, "the CLI did not print the log line before the result was sent")
			}
		}
		if err := s.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeKindlingd) InvokeAsync(_ context.Context, r *api.InvokeRequest) (*api.InvokeAsyncResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return f.async, nil
}

func (f *fakeKindlingd) GetInvocation(_ context.Context, r *api.GetInvocationRequest) (*api.Invocation, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return f.invocation, nil
}

func (f *fakeKindlingd) ListInstances(_ context.Context, r *api.ListInstancesRequest) (*api.ListInstancesResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &api.ListInstancesResponse{Instances: f.instances}, nil
}

func (f *fakeKindlingd) Prewarm(_ context.Context, r *api.PrewarmRequest) (*api.PrewarmResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return f.prewarm, nil
}

func (f *fakeKindlingd) HostStatus(_ context.Context, r *api.HostStatusRequest) (*api.HostStatusResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return f.status, nil
}

// shortTempDir is a temporary directory with a path short enough for a
// Unix socket (t.TempDir's, named for the test, can pass 108 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serveFake serves f on a Unix socket and returns its path.
func serveFake(t *testing.T, f *fakeKindlingd, opts ...grpc.ServerOption) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "kindlingd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	api.RegisterKindlingServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

// syncBuffer is a goroutine-safe buffer that closes seen when its
// contents first contain want.
type syncBuffer struct {
	mu   sync.Mutex
	b    bytes.Buffer
	want string
	seen chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	if s.seen != nil && strings.Contains(s.b.String(), s.want) {
		close(s.seen)
		s.seen = nil
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCLI runs kindling in process with the environment env, as main does.
func runCLI(t *testing.T, env map[string]string, stderr *syncBuffer, args ...string) (stdout, errOut string, code int) {
	t.Helper()
	var o bytes.Buffer
	if stderr == nil {
		stderr = &syncBuffer{}
	}
	d := newDaemonCLI(&o, stderr, func(k string) string { return env[k] })
	code = exitCode(dispatch(d, args), stderr)
	return o.String(), stderr.String(), code
}

func TestClientFunctionRegisterSendsSpec(t *testing.T) {
	f := &fakeKindlingd{}
	sock := serveFake(t, f)
	img := t.TempDir()
	manifest := []byte(`{"format": 1, "kernel": {"name": "vmlinux"}}` + "\n")
	if err := os.WriteFile(filepath.Join(img, "manifest.json"), manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	warm := filepath.Join(t.TempDir(), "warm.json")
	os.WriteFile(warm, []byte(`{"warm": 2}`), 0o644)
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, img)
	if err != nil {
		t.Fatal(err)
	}
	// --socket before the command, flags before and after NAME.
	out, errOut, code := runCLI(t, nil, nil, "--socket", sock, "function", "register", "--image", rel, "hello",
		"--version", "2", "--memory", "1G", "--vcpus", "2", "--timeout", "5s", "--cpu-template", "x86-64-v3",
		"--concurrency", "3", "--tenant", "acme", "--env", "A=1", "--env", "B=x=y", "--min-warm", "1",
		"--keep-alive", "90s", "--queue-limit", "7", "--warmup", `{"warm": 1}`, "--warmup", "@"+warm, "--network", "egress")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	sum := sha256.Sum256(manifest)
	want := &api.FunctionSpec{
		Name: "hello", Version: "2",
		Image:     &api.ImageRef{Path: img, ManifestSha256: hex.EncodeToString(sum[:])},
		MemoryMib: 1024, Vcpus: 2, TimeoutMs: 5000, CpuTemplate: "x86-64-v3", ConcurrencyLimit: 3, Tenant: "acme",
		Environment: map[string]string{"A": "1", "B": "x=y"}, MinWarm: 1, KeepAliveMs: 90000, QueueLimit: 7,
		WarmupPayloads: [][]byte{[]byte(`{"warm": 1}`), []byte(`{"warm": 2}`)}, Network: api.NetworkPolicy_NETWORK_EGRESS,
	}
	if got := f.only(t).(*api.RegisterFunctionRequest).GetFunction(); !proto.Equal(got, want) {
		t.Errorf("kindlingd got\n%v\nwant\n%v", got, want)
	}
	for _, w := range []string{"registered hello version 2 (tenant acme)", img, "1024 MiB, 2 vCPU", "A=1 B=x=y", "2 payload(s)", "egress"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

func TestClientFunctionRegisterBadInput(t *testing.T) {
	f := &fakeKindlingd{}
	sock := serveFake(t, f)
	noImage := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"function", "register", "hello"}, "--image DIR is required"},
		{[]string{"function", "register", "--image", noImage}, "one NAME"},
		{[]string{"function", "register", "hello", "--image", noImage}, "manifest.json: no such file"},
		{[]string{"function", "register", "hello", "--image", noImage, "--memory", "lots"}, `"lots"`},
		{[]string{"function", "register", "hello", "--image", noImage, "--vcpus", "0"}, "at least 1"},
		{[]string{"function", "register", "hello", "--image", noImage, "--timeout", "1us"}, "at least 1ms"},
		{[]string{"function", "register", "hello", "--image", noImage, "--env", "=x"}, "NAME=VALUE"},
		{[]string{"function", "register", "hello", "--image", noImage, "--warmup", "{not json"}, "not JSON"},
		{[]string{"function", "frobnicate"}, "unknown command"},
	} {
		_, errOut, code := runCLI(t, nil, nil, append(c.args, "--socket", sock)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	if n := f.count(); n != 0 {
		t.Errorf("bad input reached kindlingd: %d requests", n)
	}
}

func TestClientFunctionListAndDelete(t *testing.T) {
	f := &fakeKindlingd{
		functions: []*api.Function{
			{Spec: &api.FunctionSpec{Name: "hello", Version: "1", Tenant: "acme", MemoryMib: 256, Vcpus: 1, TimeoutMs: 30000,
				ConcurrencyLimit: 10, MinWarm: 2, Image: &api.ImageRef{Path: "/srv/img/hello"}}, Snapshot: "/var/lib/kindling/snap/hello-1"},
			{Spec: &api.FunctionSpec{Name: "resize", Version: "7", MemoryMib: 1024, Vcpus: 2, TimeoutMs: 500,
				ConcurrencyLimit: 3, Image: &api.ImageRef{Path: "/srv/img/resize"}}},
		},
		deleted: []string{"1", "2"},
	}
	// The socket from the environment.
	env := map[string]string{"KINDLING_SOCKET": serveFake(t, f)}
	out, errOut, code := runCLI(t, env, nil, "function", "list")
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("list printed %d lines, want a header and 2:\n%s", len(lines), out)
	}
	for i, want := range [][]string{
		{"NAME", "VERSION", "TENANT", "MEMORY", "VCPUS", "TIMEOUT", "LIMIT", "MIN-WARM", "SNAPSHOT", "IMAGE"},
		{"hello", "1", "acme", "256M", "1", "30s", "10", "2", "yes", "/srv/img/hello"},
		{"resize", "7", "-", "1024M", "2", "500ms", "3", "0", "-", "/srv/img/resize"},
	} {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("line %d: %q, want %q", i, got, want)
		}
	}

	f.reset()
	out, errOut, code = runCLI(t, env, nil, "function", "delete", "hello")
	if code != 0 || out != "deleted hello version 1, 2\n" {
		t.Fatalf("delete: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if r := f.only(t).(*api.DeleteFunctionRequest); r.GetName() != "hello" || r.GetVersion() != "" {
		t.Errorf("delete sent %v", r)
	}
	f.reset()
	if _, errOut, code := runCLI(t, env, nil, "function", "delete", "hello", "--version", "1"); code != 0 {
		t.Fatalf("delete --version: exit %d: %s", code, errOut)
	}
	if r := f.only(t).(*api.DeleteFunctionRequest); r.GetVersion() != "1" {
		t.Errorf("delete --version 1 sent %v", r)
	}
}

func TestClientInvokeStreamsLogsThenResponse(t *testing.T) {
	f := &fakeKindlingd{
		events: []*api.InvokeEvent{
			{Event: &api.InvokeEvent_Log{Log: &api.LogLine{Stream: "stdout", Line: "hello from the handler"}}},
			{Event: &api.InvokeEvent_Log{Log: &api.LogLine{Stream: "stderr", Line: "second line\n"}}},
			{Event: &api.InvokeEvent_Result{Result: &api.Invocation{
				InvocationId: "inv-1", Function: "hello", Version: "1", State: api.InvocationState_SUCCEEDED,
				Response: []byte(`{"ok":true}`), Start: api.StartKind_COLD, InstanceId: "i-7",
				Phases: &api.Phases{QueuedUs: 100, StartUs: 120500, RunUs: 5100},
			}}},
		},
		waitBefore: 2,
		proceed:    make(chan struct{}),
	}
	sock := serveFake(t, f)
	payload := filepath.Join(t.TempDir(), "event.json")
	os.WriteFile(payload, []byte(`{"op":"echo"}`), 0o644)
	// The fake sends the result only once the first log line is on stderr.
	stderr := &syncBuffer{want: "hello from the handler\n", seen: f.proceed}
	out, errOut, code := runCLI(t, nil, stderr, "invoke", "hello", "--payload", "@"+payload, "--tenant", "acme", "--version", "1", "--id", "inv-1", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if out != "{\"ok\":true}\n" {
		t.Errorf("stdout %q, want the response", out)
	}
	want := "hello from the handler\nsecond line\ninvocation inv-1 SUCCEEDED, cold start: queued 0.1 ms, start 120.5 ms, run 5.1 ms, instance i-7\n"
	if errOut != want {
		t.Errorf("stderr\n%q\nwant\n%q", errOut, want)
	}
	wantReq := &api.InvokeRequest{Function: "hello", Version: "1", Tenant: "acme", Payload: []byte(`{"op":"echo"}`), InvocationId: "inv-1"}
	if got := f.only(t); !proto.Equal(got, wantReq) {
		t.Errorf("kindlingd got %v, want %v", got, wantReq)
	}
}

func TestClientInvokeFailedExits1(t *testing.T) {
	doc := `{"errorMessage":"boom","errorType":"Runtime.Panic"}`
	f := &fakeKindlingd{events: []*api.InvokeEvent{{Event: &api.InvokeEvent_Result{Result: &api.Invocation{
		InvocationId: "inv-2", State: api.InvocationState_FAILED, Response: []byte(doc),
		ErrorType: "Runtime.Panic", ErrorMessage: "boom", Start: api.StartKind_WARM, InstanceId: "i-1",
		Attempts: 2, RerunReason: "the sandbox died with kindlingd",
	}}}}}
	sock := serveFake(t, f)
	out, errOut, code := runCLI(t, nil, nil, "--socket", sock, "invoke", "hello")
	if code != 1 || out != doc+"\n" {
		t.Fatalf("exit %d, stdout %q; want 1 and the error document", code, out)
	}
	for _, w := range []string{"inv-2 FAILED", "warm start", "2 attempts (the sandbox died with kindlingd)", "Runtime.Panic: boom"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q: %q", w, errOut)
		}
	}
	if p := f.only(t).(*api.InvokeRequest).GetPayload(); string(p) != "{}" {
		t.Errorf("default payload %q, want {}", p)
	}
}

func TestClientInvokeAsyncPrintsID(t *testing.T) {
	f := &fakeKindlingd{async: &api.InvokeAsyncResponse{InvocationId: "inv-3"}}
	sock := serveFake(t, f)
	out, errOut, code := runCLI(t, nil, nil, "invoke", "--socket", sock, "--async", "hello", "--payload", `{"n":1}`)
	if code != 0 || out != "inv-3\n" || strings.Contains(errOut, "duplicate") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and the ID", code, out, errOut)
	}
	if r := f.only(t).(*api.InvokeRequest); r.GetFunction() != "hello" || string(r.GetPayload()) != `{"n":1}` {
		t.Errorf("kindlingd got %v", r)
	}
	f.async.Duplicate = true
	out, errOut, code = runCLI(t, nil, nil, "invoke", "--socket", sock, "--async", "hello", "--id", "inv-3")
	if code != 0 || out != "inv-3\n" || !strings.Contains(errOut, "inv-3 (duplicate)") {
		t.Fatalf("duplicate: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestClientInvokeBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"invoke"}, "--image is required"},
		{[]string{"invoke", "a", "b"}, "one FUNCTION"},
		{[]string{"invoke", "hello", "--payload", "{oops"}, "not JSON"},
		{[]string{"invoke", "hello", "--payload", "@/nonexistent/event.json"}, "no such file"},
		{[]string{"invoke", "hello", "--mem", "1G"}, "-mem"},
	} {
		_, errOut, code := runCLI(t, nil, nil, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	if !hasImageFlag([]string{"--payload", "{}", "-image=/x"}) || hasImageFlag([]string{"hello", "--", "--image"}) {
		t.Error("hasImageFlag")
	}
}

func TestClientServerErrorIsShown(t *testing.T) {
	f := &fakeKindlingd{err: status.Error(codes.InvalidArgument, "function.memory_mib: 32 is out of range (64 to 10240)")}
	sock := serveFake(t, f)
	img := t.TempDir()
	os.WriteFile(filepath.Join(img, "manifest.json"), []byte("{}"), 0o644)
	_, errOut, code := runCLI(t, nil, nil, "--socket", sock, "function", "register", "hello", "--image", img, "--memory", "32M")
	want := "kindling: function register hello: function.memory_mib: 32 is out of range (64 to 10240) (InvalidArgument)\n"
	if code != 1 || errOut != want {
		t.Fatalf("exit %d, stderr %q; want 1 and %q", code, errOut, want)
	}
	f.err = status.Error(codes.NotFound, `invocation "nope" not found`)
	if _, errOut, code := runCLI(t, nil, nil, "--socket", sock, "invocation", "get", "nope"); code != 1 || !strings.Contains(errOut, `invocation "nope" not found (NotFound)`) {
		t.Fatalf("invocation get: exit %d, stderr %q", code, errOut)
	}
	f.err = status.Error(codes.ResourceExhausted, "hello: queue full (100 waiting)")
	if _, errOut, code := runCLI(t, nil, nil, "--socket", sock, "invoke", "hello"); code != 1 || !strings.Contains(errOut, "queue full (100 waiting) (ResourceExhausted)") {
		t.Fatalf("invoke: exit %d, stderr %q", code, errOut)
	}
}

func TestClientUnreachableSocket(t *testing.T) {
	dir := shortTempDir(t)
	missing := filepath.Join(dir, "missing.sock")
	// A socket file nothing listens on: connect is refused.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, c := range []struct {
		sock, why string
	}{{missing, "no such file or directory"}, {stale, "connection refused"}} {
		for _, args := range [][]string{{"function", "list"}, {"invoke", "hello"}, {"host", "status"}} {
			_, errOut, code := runCLI(t, map[string]string{"KINDLING_SOCKET": c.sock}, nil, args...)
			want := "kindling: cannot reach kindlingd at " + c.sock + ": connect: " + c.why + " (is it running? `systemctl status kindlingd`, or pass --socket)\n"
			if code != 1 || errOut != want {
				t.Errorf("%v on %s: exit %d, stderr\n%q\nwant\n%q", args, filepath.Base(c.sock), code, errOut, want)
			}
		}
	}
	// The default socket is kindlingd's.
	if d := newDaemonCLI(nil, nil, func(string) string { return "" }); d.conn.socket != "/run/kindling/kindlingd.sock" {
		t.Errorf("default socket %q", d.conn.socket)
	}
}

func TestClientAddrNeedsTLSFiles(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--addr", "127.0.0.1:1", "function", "list"}, "--addr needs --tls-cert, --tls-key and --tls-ca: kindlingd's TCP listener takes only mutual TLS (missing --tls-cert, --tls-key, --tls-ca)"},
		{[]string{"host", "status", "--addr", "127.0.0.1:1", "--tls-cert", "c.pem"}, "(missing --tls-key, --tls-ca)"},
		{[]string{"instances", "--tls-ca", "ca.pem"}, "--tls-ca applies only with --addr"},
		{[]string{"--addr", "localhost", "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "ca", "instances"}, "want HOST:PORT"},
		{[]string{"--addr", "127.0.0.1:1", "--tls-cert", "/nonexistent/c", "--tls-key", "k", "--tls-ca", "ca", "instances"}, "no such file"},
	} {
		_, errOut, code := runCLI(t, nil, nil, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}

// Over TCP, the CLI and kindlingd authenticate each other.
func TestClientAddrMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCert(t, nil, nil, "kindling test CA")
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	srvCert, srvKey := newCert(t, ca, caKey, "kindlingd")
	cliCert, cliKey := newCert(t, ca, caKey, "operator")
	writePEM(t, filepath.Join(dir, "client.pem"), "CERTIFICATE", cliCert.Raw)
	kb, _ := x509.MarshalECPrivateKey(cliKey)
	writePEM(t, filepath.Join(dir, "client.key"), "EC PRIVATE KEY", kb)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey}},
		ClientCAs:    pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	})
	f := &fakeKindlingd{status: &api.HostStatusResponse{Backend: "microvm", IsolationGrade: true}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	api.RegisterKindlingServer(srv, f)
	go srv.Serve(l)
	defer srv.Stop()
	tlsArgs := []string{"--addr", l.Addr().String(), "--tls-ca", filepath.Join(dir, "ca.pem"), "--tls-key", filepath.Join(dir, "client.key")}
	out, errOut, code := runCLI(t, nil, nil, append(tlsArgs, "--tls-cert", filepath.Join(dir, "client.pem"), "host", "status")...)
	if code != 0 || !strings.Contains(out, "microvm backend: isolation-grade") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// A certificate kindlingd does not trust is refused.
	other, otherKey := newCert(t, nil, nil, "stranger")
	writePEM(t, filepath.Join(dir, "other.pem"), "CERTIFICATE", other.Raw)
	ob, _ := x509.MarshalECPrivateKey(otherKey)
	writePEM(t, filepath.Join(dir, "other.key"), "EC PRIVATE KEY", ob)
	tlsArgs[len(tlsArgs)-1] = filepath.Join(dir, "other.key")
	_, errOut, code = runCLI(t, nil, nil, append(tlsArgs, "--tls-cert", filepath.Join(dir, "other.pem"), "host", "status")...)
	// With TLS 1.3 the client finishes its side of the handshake first, so
	// it sees the refusal as a TLS alert or as a reset connection.
	if code != 1 || !strings.Contains(errOut, "cannot reach kindlingd at "+l.Addr().String()) && !strings.Contains(errOut, "(Unavailable)") {
		t.Fatalf("untrusted client certificate: exit %d, stderr %q", code, errOut)
	}
}

// newCert makes an ECDSA certificate for 127.0.0.1, signed by parent (or
// self-signed, as a CA, when parent is nil).
func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestClientInvocationGet(t *testing.T) {
	acc := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f := &fakeKindlingd{invocation: &api.Invocation{
		InvocationId: "inv-4", Function: "hello", Version: "3", Tenant: "acme", State: api.InvocationState_SUCCEEDED, Async: true,
		Response: []byte(`{"ok":1}`), Start: api.StartKind_RESTORE, InstanceId: "i-9", Attempts: 2,
		RerunReason: "the sandbox died with kindlingd", AcceptedUnixNano: acc.UnixNano(), FinishedUnixNano: acc.Add(250 * time.Millisecond).UnixNano(),
		Phases: &api.Phases{QueuedUs: 1000, StartUs: 30000, RunUs: 2000},
	}}
	sock := serveFake(t, f)
	out, errOut, code := runCLI(t, nil, nil, "invocation", "get", "inv-4", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, w := range []string{
		"id         inv-4\n", "function   hello version 3, tenant acme\n", "state      SUCCEEDED (async)\n",
		"start      restore on instance i-9\n", "attempts   2 (rerun: the sandbox died with kindlingd)\n",
		"phases     queued 1.0 ms, start 30.0 ms, run 2.0 ms\n", "(250ms after it was accepted)", "response   {\"ok\":1}\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if r := f.only(t).(*api.GetInvocationRequest); r.GetInvocationId() != "inv-4" {
		t.Errorf("kindlingd got %v", r)
	}
	out, errOut, code = runCLI(t, nil, nil, "--socket", sock, "invocation", "get", "--json", "inv-4")
	var got api.Invocation
	if err := protojson.Unmarshal([]byte(out), &got); code != 0 || err != nil {
		t.Fatalf("--json: exit %d, %v: %s%s", code, err, out, errOut)
	}
	if !proto.Equal(&got, f.invocation) {
		t.Errorf("--json round trip: %v, want %v", &got, f.invocation)
	}
}

func TestClientInstances(t *testing.T) {
	now := time.Now()
	f := &fakeKindlingd{instances: []*api.Instance{
		{Id: "i-1", Function: "hello", Version: "1", Tenant: "acme", Backend: "microvm", State: api.InstanceState_IDLE,
			StartedAs: api.StartKind_RESTORE, StartedUnixNano: now.Add(-time.Hour).UnixNano(), LastUsedUnixNano: now.Add(-42 * time.Second).UnixNano(),
			Invocations: 17, Pid: 4242},
		{Id: "i-2", Function: "hello", Version: "1", Backend: "process", State: api.InstanceState_STARTING, StartedAs: api.StartKind_COLD},
	}}
	sock := serveFake(t, f)
	out, errOut, code := runCLI(t, nil, nil, "instances", "--function", "hello", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want a header and 2:\n%s", len(lines), out)
	}
	for i, want := range []string{
		"ID FUNCTION VERSION TENANT BACKEND STATE STARTED-AS INVOCATIONS IDLE-FOR PID",
		"i-1 hello 1 acme microvm IDLE restore 17 42s 4242",
		"i-2 hello 1 - process STARTING cold 0 - -",
	} {
		if got := strings.Join(strings.Fields(lines[i]), " "); got != want {
			t.Errorf("line %d: %q, want %q", i, got, want)
		}
	}
	if r := f.only(t).(*api.ListInstancesRequest); r.GetFunction() != "hello" {
		t.Errorf("kindlingd got %v", r)
	}
}

func TestClientHostStatus(t *testing.T) {
	f := &fakeKindlingd{status: &api.HostStatusResponse{
		Backend: "process", BackendReason: "no /dev/kvm", IsolationGrade: false, Cpus: 8, MemoryMib: 16384, MemoryCommittedMib: 512,
		Instances: 2, MaxInstances: 512, Queued: 1, Running: 2, Draining: true,
		Kvm:              &api.KVMStatus{Available: false, Detail: "open /dev/kvm: no such file or directory"},
		KindlingdVersion: "v0.3.0", GoVersion: "go1.26.8", KernelVersion: "6.8.0", StateDir: "/var/lib/kindling",
	}}
	sock := serveFake(t, f)
	out, errOut, code := runCLI(t, nil, nil, "host", "status", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, w := range []string{
		"backend    process: no /dev/kvm\n", "process backend: NOT isolation-grade", "8 CPUs, 16384 MiB memory (512 MiB committed), 2 of 512 instances",
		"2 running, 1 queued; DRAINING", "kvm        unavailable: open /dev/kvm: no such file or directory\n",
		"kindlingd v0.3.0, go1.26.8, kernel 6.8.0", "state dir  /var/lib/kindling\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	out, _, code = runCLI(t, nil, nil, "--socket", sock, "host", "status", "--json")
	var got api.HostStatusResponse
	if err := protojson.Unmarshal([]byte(out), &got); code != 0 || err != nil || !proto.Equal(&got, f.status) {
		t.Fatalf("--json: exit %d, %v:\n%s", code, err, out)
	}
}

func TestClientFunctionPrewarm(t *testing.T) {
	f := &fakeKindlingd{prewarm: &api.PrewarmResponse{
		Instances: []*api.Instance{
			{Id: "i-1", Function: "hello", Version: "2", Tenant: "acme", Backend: "process", State: api.InstanceState_IDLE, StartedAs: api.StartKind_COLD, Pid: 4242},
			{Id: "i-2", Function: "hello", Version: "2", Tenant: "acme", Backend: "process", State: api.InstanceState_IDLE, StartedAs: api.StartKind_COLD, Pid: 4243},
		},
		SnapshotNote: "the process backend cannot snapshot; the prewarmed instances stay warm in the pool instead",
		BootUs:       240500, WarmupUs: 3200,
	}}
	sock := serveFake(t, f)
	out, errOut, code := runCLI(t, nil, nil, "--socket", sock, "function", "prewarm", "hello", "--version", "2", "--tenant", "acme", "--instances", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := &api.PrewarmRequest{Function: "hello", Version: "2", Tenant: "acme", Instances: 2}
	if got := f.only(t); !proto.Equal(got, want) {
		t.Errorf("kindlingd got %v, want %v", got, want)
	}
	for _, w := range []string{
		"prewarmed hello version 2 (tenant acme): 2 instances started\n",
		"  instance  i-1 (process backend, idle, pid 4242)\n", "  instance  i-2 (process backend, idle, pid 4243)\n",
		"  took      boot 240.5 ms, warm-up 3.2 ms, snapshot 0.0 ms (boot and warm-up summed over the 2 instances)\n",
		"  snapshot  none: the process backend cannot snapshot; the prewarmed instances stay warm in the pool instead\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}

	// A backend that snapshots: the directory and its time; the defaults
	// are kindlingd's (no version, tenant or count sent).
	f.reset()
	f.prewarm = &api.PrewarmResponse{
		Instances: []*api.Instance{{Id: "i-3", Function: "hello", Version: "1", Backend: "microvm", State: api.InstanceState_IDLE}},
		Snapshot:  "/var/lib/kindling/snapshots/hello-1", BootUs: 120000, WarmupUs: 1500, SnapshotUs: 8300,
	}
	out, errOut, code = runCLI(t, nil, nil, "function", "prewarm", "--socket", sock, "hello")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got := f.only(t); !proto.Equal(got, &api.PrewarmRequest{Function: "hello"}) {
		t.Errorf("kindlingd got %v, want only the function", got)
	}
	for _, w := range []string{
		"prewarmed hello version 1: 1 instance started\n", "i-3 (microvm backend, idle)\n",
		"boot 120.0 ms, warm-up 1.5 ms, snapshot 8.3 ms\n", "  snapshot  /var/lib/kindling/snapshots/hello-1\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	out, _, code = runCLI(t, nil, nil, "--socket", sock, "function", "prewarm", "hello", "--json")
	var got api.PrewarmResponse
	if err := protojson.Unmarshal([]byte(out), &got); code != 0 || err != nil || !proto.Equal(&got, f.prewarm) {
		t.Fatalf("--json: exit %d, %v:\n%s", code, err, out)
	}

	// Bad input never reaches kindlingd; kindlingd's refusal is shown.
	f.reset()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"function", "prewarm"}, "one NAME"},
		{[]string{"function", "prewarm", "a", "b"}, "one NAME"},
		{[]string{"function", "prewarm", "hello", "--instances", "0"}, "at least 1"},
		{[]string{"function", "prewarm", "hello", "--instances", "many"}, "whole number"},
	} {
		_, errOut, code := runCLI(t, nil, nil, append(c.args, "--socket", sock)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	if n := f.count(); n != 0 {
		t.Errorf("bad input reached kindlingd: %d requests", n)
	}
	f.err = status.Error(codes.InvalidArgument, "instances: 50 is over the function's concurrency_limit 10")
	_, errOut, code = runCLI(t, nil, nil, "--socket", sock, "function", "prewarm", "hello", "--instances", "50")
	if want := "kindling: function prewarm hello: instances: 50 is over the function's concurrency_limit 10 (InvalidArgument)\n"; code != 1 || errOut != want {
		t.Fatalf("exit %d, stderr %q; want 1 and %q", code, errOut, want)
	}
}
