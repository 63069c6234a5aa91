package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/buildid"
	"github.com/kindlingvm/kindling/internal/testdaemon"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/internal/testtasks/gocpu/work"
	"github.com/kindlingvm/kindling/rootfs"
)

// cpuImage packs the CPU-bound Go handler with profiling on (a
// placeholder kernel: the process backend boots none); edit may change
// the manifest before it is digested.
func cpuImage(t *testing.T, task string, edit func(*rootfs.Manifest)) (img, sha string) {
	t.Helper()
	img, _, m, err := testdaemon.ProcessImage(t.TempDir(), rootfs.ImageSpec{Init: bins.Init, Task: task, Run: rootfs.TaskConfig{Profiling: true}})
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(m)
		b, _ := json.MarshalIndent(m, "", "  ")
		if err := os.WriteFile(filepath.Join(img, "manifest.json"), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sha, err = testdaemon.ManifestSHA(img)
	if err != nil {
		t.Fatal(err)
	}
	return img, sha
}

func topFunctions(p *profile.Profile, n int) []string {
	flat := map[string]int64{}
	for _, s := range p.Sample {
		if len(s.Location) == 0 || len(s.Location[0].Line) == 0 {
			continue
		}
		flat[s.Location[0].Line[0].Function.Name] += s.Value[1]
	}
	var names []string
	for k := range flat {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		return flat[names[i]] > flat[names[j]] || flat[names[i]] == flat[names[j]] && names[i] < names[j]
	})
	return names[:min(n, len(names))]
}

// TestProfilesFromInvocations: the guest agent samples a real Go task
// over 200 invocations; kindlingd merges the profiles of its version, and
// they name the task's own hot functions; the profile-guided rebuild
// succeeds and makes another binary. Profiles of another build of the
// task are refused.
func TestProfilesFromInvocations(t *testing.T) {
	dir := t.TempDir()
	task, err := testtasks.Build(dir, testtasks.GoCPU)
	if err != nil {
		t.Fatal(err)
	}
	img, sha := cpuImage(t, task, nil)
	d := startDaemon(t)
	ctx := context.Background()
	if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "cpu", TimeoutMs: 30_000,
		Image: &api.ImageRef{Path: img, ManifestSha256: sha}}}); err != nil {
		t.Fatal(err)
	}
	event := work.Event(1, work.DefaultOrders)
	for i := range 200 {
		r := mustInvoke(t, d, &api.InvokeRequest{Function: "cpu", Payload: event})
		if r.State != api.InvocationState_SUCCEEDED {
			t.Fatalf("invocation %d: %v", i, r)
		}
	}
	var resp *api.GetProfileResponse
	waitFor(t, "two profiles merged", func() bool {
		resp, err = d.API.GetProfile(ctx, &api.GetProfileRequest{Function: "cpu"})
		return err == nil && resp.Profiles >= 2
	})
	if resp.Refused != 0 || resp.Samples == 0 {
		t.Fatalf("profile: %d profiles, %d refused, %d samples", resp.Profiles, resp.Refused, resp.Samples)
	}
	u := resp.Usage
	if u.Invocations != 200 || u.CpuNsPerInvocation == 0 {
		t.Fatalf("usage %v: want 200 invocations with their CPU", u)
	}
	p, err := profile.ParseData(resp.Profile)
	if err != nil {
		t.Fatal(err)
	}
	top := topFunctions(p, 10)
	t.Logf("%d samples over %d invocations, %.2f ms CPU per invocation; top: %v", resp.Samples, u.Invocations, float64(u.CpuNsPerInvocation)/1e6, top)
	own, mine := 0, false
	for i, f := range top {
		for _, pkg := range []string{"github.com/kindlingvm/kindling/internal/testtasks/gocpu/", "main.", "encoding/json.", "regexp", "compress/flate.", "hash/crc32.", "strconv.", "unicode/utf8."} {
			if strings.HasPrefix(f, pkg) {
				own++
				mine = mine || i < 3 && pkg == "github.com/kindlingvm/kindling/internal/testtasks/gocpu/"
				break
			}
		}
	}
	if own < 4 || !mine {
		t.Fatalf("the profile's hottest functions %v are not the handler's work (JSON, regexp, compression)", top)
	}
	// The profile-guided rebuild.
	pgo := filepath.Join(dir, "default.pgo")
	os.WriteFile(pgo, resp.Profile, 0o644)
	rebuilt := filepath.Join(dir, "go-cpu-pgo")
	cmd := exec.Command("go", "build", "-trimpath", "-pgo="+pgo, "-o", rebuilt, "github.com/kindlingvm/kindling/internal/testtasks/gocpu")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOAMD64=v1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -pgo: %v\n%s", err, out)
	}
	a, _ := buildid.File(task)
	b, _ := buildid.File(rebuilt)
	if a == "" || a == b {
		t.Fatalf("the PGO build has build ID %q, the original %q", b, a)
	}

	// An image that claims another build of the task: its profiles are
	// refused, never merged.
	img2, sha2 := cpuImage(t, task, func(m *rootfs.Manifest) { m.TaskBuildID = "another-build" })
	if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "other", TimeoutMs: 30_000,
		Image: &api.ImageRef{Path: img2, ManifestSha256: sha2}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 110 {
		if r := mustInvoke(t, d, &api.InvokeRequest{Function: "other", Payload: event}); r.State != api.InvocationState_SUCCEEDED {
			t.Fatalf("invocation %d: %v", i, r)
		}
	}
	waitFor(t, "a profile refused", func() bool {
		resp, err = d.API.GetProfile(ctx, &api.GetProfileRequest{Function: "other"})
		return err == nil && resp.Refused >= 1
	})
	if resp.Profiles != 0 || len(resp.Profile) != 0 {
		t.Fatalf("a profile of another build was merged: %d profiles", resp.Profiles)
	}
}

// TestRecordedWarmups: a version registered without warm-up payloads but
// with record_warmups keeps its owner's first successful payloads and
// warms new instances with them; other tenants' payloads are never kept.
func TestRecordedWarmups(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "rec", Tenant: "acme",
		RecordWarmups: 2, Image: &api.ImageRef{Path: bins.Image, ManifestSha256: bins.ManifestSHA}}}); err != nil {
		t.Fatal(err)
	}
	p, err := d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "rec"})
	if err != nil || p.WarmupsRun != 0 {
		t.Fatalf("prewarm before any traffic: %v %v", p, err)
	}
	other := echo("rec", "globex's")
	other.Tenant = "globex"
	mustInvoke(t, d, other)
	for _, text := range []string{"one", "two", "three"} {
		if r := mustInvoke(t, d, echo("rec", text)); r.State != api.InvocationState_SUCCEEDED {
			t.Fatalf("%s: %v", text, r)
		}
	}
	p, err = d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "rec"})
	if err != nil || p.WarmupsRun != 2 {
		t.Fatalf("prewarm after traffic: %v %v; want 2 recorded warm-ups run", p, err)
	}
	if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "rec", Version: "9",
		RecordWarmups: 9, Image: &api.ImageRef{Path: bins.Image, ManifestSha256: bins.ManifestSHA}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("record_warmups 9: %v, want InvalidArgument", err)
	}
}
