package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/testdaemon"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

// TestMicroVMBackendEndToEnd runs the aws-lambda-go task through kindlingd
// on the microVM backend: a real per-task kernel and initramfs, a cold
// boot, a warm snapshot from Prewarm, and a restore for another tenant.
// It needs a host where a guest's user space runs (VMX or SVM KVM); on our
// build machines (PVM, ../shared/HOST.md) it is skipped, naming why, and
// the process backend's tests cover the same daemon code.
func TestMicroVMBackendEndToEnd(t *testing.T) {
	report, err := hostcheck.Run()
	if err != nil {
		t.Fatal(err)
	}
	if !report.UserSpaceRuns() {
		t.Skipf("guest user space cannot run on this host (%s: %s); the microVM backend's end-to-end path needs a VMX/SVM KVM host", report.HostKind, report.UserSyscalls.Detail)
	}
	if testing.Short() {
		t.Skip("builds a task kernel (cached) and boots it (-short)")
	}
	root := testdaemon.ModuleRoot()
	img := filepath.Join(t.TempDir(), "image")
	build := exec.Command("go", "run", "./cmd/kindling", "image", "build", "--task", bins.Task, "-o", img)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("image build: %v\n%s", err, out)
	}
	sha, err := testdaemon.ManifestSHA(img)
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := os.MkdirTemp("", "kd-")
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := testdaemon.Start(bins, dir, nil, "--backend", "microvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Kill(); testdaemon.KillSandboxes(dir) })
	ctx := context.Background()
	hs, err := d.API.HostStatus(ctx, &api.HostStatusRequest{})
	if err != nil || hs.Backend != "microvm" || !hs.IsolationGrade {
		t.Fatalf("HostStatus: %v %v", hs, err)
	}
	_, err = d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "vm", Tenant: "acme",
		Image: &api.ImageRef{Path: img, ManifestSha256: sha}, WarmupPayloads: [][]byte{[]byte(`{"op":"echo","text":"warm-up"}`)}}})
	if err != nil {
		t.Fatal(err)
	}
	r := mustInvoke(t, d, echo("vm", "cold"))
	if r.State != api.InvocationState_SUCCEEDED || r.Start != api.StartKind_COLD {
		t.Fatalf("cold: %v", r)
	}
	p, err := d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "vm"})
	if err != nil || p.Snapshot == "" {
		t.Fatalf("prewarm: %v %v", p, err)
	}
	req := echo("vm", "restored")
	req.Tenant = "globex"
	r2 := mustInvoke(t, d, req)
	if r2.State != api.InvocationState_SUCCEEDED || r2.Start != api.StartKind_RESTORE || !strings.Contains(string(r2.Response), "restored") {
		t.Fatalf("restore: %v", r2)
	}
}
