package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/echoguest"
	"github.com/kindlingvm/kindling/snapshot"
	vmmclient "github.com/kindlingvm/kindling/vmm/api/client"
)

// TestEchoGuestThroughKindlingd runs the whole microVM path on this host,
// where a Linux guest's user space cannot run: the echo guest (a bespoke
// CPL 3 program with its own virtio-vsock driver) registered as a function
// of kindlingd's microVM backend: cold boot, prewarm (warm snapshot),
// restore for another tenant, 100 sequential and 20 concurrent
// invocations, and 10 restores of the same snapshot at once.
func TestEchoGuestThroughKindlingd(t *testing.T) {
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm")
	ctx := context.Background()
	hs, err := d.API.HostStatus(ctx, &api.HostStatusRequest{})
	if err != nil || hs.Backend != "microvm" || !hs.IsolationGrade {
		t.Fatalf("HostStatus: %v %v", hs, err)
	}
	_, err = d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "echo", Tenant: "acme",
		MemoryMib: 128, ConcurrencyLimit: 20, QueueLimit: 200, TimeoutMs: 10_000,
		Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	echoReq := func(tenant, text string) *api.InvokeRequest {
		return &api.InvokeRequest{Function: "echo", Tenant: tenant, Payload: []byte(`{"text":"` + text + `"}`)}
	}
	check := func(r *api.Invocation, text string) {
		t.Helper()
		if r.State != api.InvocationState_SUCCEEDED || !strings.Contains(string(r.Response), text) {
			t.Fatalf("invocation %s: %v", text, r)
		}
	}
	r := mustInvoke(t, d, echoReq("acme", "cold"))
	check(r, "cold")
	if r.Start != api.StartKind_COLD {
		t.Fatalf("first start: %v", r.Start)
	}
	t.Logf("cold start %d us, run %d us", r.Phases.StartUs, r.Phases.RunUs)
	p, err := d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "echo"})
	if err != nil || p.Snapshot == "" {
		t.Fatalf("prewarm: %v %v", p, err)
	}
	t.Logf("prewarm: boot %d us, snapshot %d us", p.BootUs, p.SnapshotUs)
	r = mustInvoke(t, d, echoReq("globex", "restored"))
	check(r, "restored")
	if r.Start != api.StartKind_RESTORE {
		t.Fatalf("another tenant's first start: %v, want RESTORE", r.Start)
	}
	t.Logf("restore to response: start %d us, run %d us", r.Phases.StartUs, r.Phases.RunUs)
	// The first restore's touched pages are recorded beside the snapshot
	// (and the snapshot sealed again): later restores prefetch them.
	ws := filepath.Join(d.StateDir, "snapshots", "echo", "*", snapshot.WorkingSetFile)
	waitFor(t, "the working set beside the snapshot", func() bool {
		m, _ := filepath.Glob(ws)
		return len(m) == 1
	})
	for i := range 100 {
		check(mustInvoke(t, d, echoReq("acme", fmt.Sprintf("seq-%d", i))), fmt.Sprintf("seq-%d", i))
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			check(mustInvoke(t, d, echoReq("acme", fmt.Sprintf("conc-%d", i))), fmt.Sprintf("conc-%d", i))
		}()
	}
	wg.Wait()
	// Ten tenants at once: ten restores of the same snapshot.
	t0 := time.Now()
	starts := make([]api.StartKind, 10)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := mustInvoke(t, d, echoReq(fmt.Sprintf("t%d", i), "many"))
			check(r, "many")
			starts[i] = r.Start
		}()
	}
	wg.Wait()
	for i, s := range starts {
		if s != api.StartKind_RESTORE {
			t.Errorf("tenant t%d started %v, want RESTORE", i, s)
		}
	}
	t.Logf("10 restores at once answered in %v", time.Since(t0).Round(time.Millisecond))
}

// TestGuestThatNeverAnswers: a guest that stops answering (its VM frozen
// through the VMM's API) is torn down at the invocation's deadline; the
// caller gets a timeout, the daemon and the pool carry on.
func TestGuestThatNeverAnswers(t *testing.T) {
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm")
	ctx := context.Background()
	_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "mute", MemoryMib: 64, TimeoutMs: 300,
		Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	first := mustInvoke(t, d, &api.InvokeRequest{Function: "mute", Payload: []byte(`{}`)})
	if first.State != api.InvocationState_SUCCEEDED {
		t.Fatalf("first: %v", first)
	}
	sock := filepath.Join(d.StateDir, "sandboxes", first.InstanceId, "run", "api.sock")
	if err := vmmclient.New(sock).Pause(ctx); err != nil {
		t.Fatalf("pause the VM through %s: %v", sock, err)
	}
	t0 := time.Now()
	r := mustInvoke(t, d, &api.InvokeRequest{Function: "mute", Payload: []byte(`{}`)})
	if r.State != api.InvocationState_FAILED || r.ErrorType != "Runtime.Timeout" || !strings.Contains(r.ErrorMessage, "did not answer") {
		t.Fatalf("a frozen guest: %v", r)
	}
	t.Logf("torn down after %v", time.Since(t0).Round(time.Millisecond))
	waitFor(t, "the frozen VM to be gone", func() bool {
		_, err := os.Stat(filepath.Join(d.StateDir, "sandboxes", first.InstanceId))
		return os.IsNotExist(err)
	})
	if next := mustInvoke(t, d, &api.InvokeRequest{Function: "mute", Payload: []byte(`{"after":1}`)}); next.State != api.InvocationState_SUCCEEDED || next.InstanceId == first.InstanceId {
		t.Fatalf("after the teardown: %v", next)
	}
}

// echoImage builds the echo guest into a kernel-only image.
func echoImage(t *testing.T) (img, sha string) {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	img, sha, err := echoguest.BuildImage(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return img, sha
}

// TestVMMKilledMidInvocation: a jailed VMM killed while its guest holds
// an invocation fails that invocation as a crash naming the signal; the
// daemon and the pool carry on with a new VM.
func TestVMMKilledMidInvocation(t *testing.T) {
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm", "--standby-restores", "0")
	ctx := context.Background()
	_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "victim", MemoryMib: 64, TimeoutMs: 10_000,
		Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	first := mustInvoke(t, d, &api.InvokeRequest{Function: "victim", Payload: []byte(`{}`)})
	il, err := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: "victim"})
	if err != nil || len(il.Instances) != 1 {
		t.Fatalf("instances: %v %v", il, err)
	}
	// Frozen, the guest holds the next invocation until the VMM dies.
	sock := filepath.Join(d.StateDir, "sandboxes", first.InstanceId, "run", "api.sock")
	if err := vmmclient.New(sock).Pause(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan *api.Invocation, 1)
	go func() { done <- mustInvoke(t, d, &api.InvokeRequest{Function: "victim", Payload: []byte(`{"n":2}`)}) }()
	time.Sleep(300 * time.Millisecond)
	syscallKill(t, int(il.Instances[0].Pid))
	r := <-done
	if r.State != api.InvocationState_FAILED || r.ErrorType != "Kindling.SandboxCrashed" || !strings.Contains(r.ErrorMessage, "signal") {
		t.Fatalf("after the VMM was killed: %v", r)
	}
	t.Logf("the caller got: %s", r.ErrorMessage)
	next := mustInvoke(t, d, &api.InvokeRequest{Function: "victim", Payload: []byte(`{"n":3}`)})
	if next.State != api.InvocationState_SUCCEEDED || next.InstanceId == first.InstanceId {
		t.Fatalf("the pool did not recover: %v", next)
	}
	waitFor(t, "the dead VM's directory to go", func() bool {
		_, err := os.Stat(filepath.Join(d.StateDir, "sandboxes", first.InstanceId))
		return os.IsNotExist(err)
	})
}
