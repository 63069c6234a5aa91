package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/rootfs"
)

// profileKindlingd answers GetProfile with resp and records the request.
type profileKindlingd struct {
	api.UnimplementedKindlingServer
	mu   sync.Mutex
	req  *api.GetProfileRequest
	resp *api.GetProfileResponse
}

func (f *profileKindlingd) GetProfile(_ context.Context, r *api.GetProfileRequest) (*api.GetProfileResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.req = r
	return f.resp, nil
}

func serveProfiles(t *testing.T, f *profileKindlingd) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "kindlingd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterKindlingServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

// TestImageBuildBadInput: each refusal exits 2 and says what to change,
// before anything is built.
func TestImageBuildBadInput(t *testing.T) {
	dir := t.TempDir()
	src := gocpuSrc()
	garbage := filepath.Join(dir, "garbage.pgo")
	os.WriteFile(garbage, []byte("not a profile"), 0o644)
	initBin := filepath.Join(binDir, "kindling") // any file: these fail before it is read
	out := filepath.Join(dir, "img")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--task", initBin, "--task-src", src, "-o", out}, "--task BINARY or as --task-src DIR, not both"},
		{[]string{"--task-src", src}, "--task and -o are required (or --task-src DIR instead of --task)"},
		{[]string{"--task-src", src, "-o", out, "--pgo", "auto"}, "--pgo auto needs --function NAME"},
		{[]string{"--task-src", src, "-o", out, "--function", "f"}, "--function and --from-version choose the profile of --pgo auto"},
		{[]string{"--task-src", src, "-o", out, "--from-version", "3"}, "mean nothing without it"},
		{[]string{"--task", initBin, "-o", out, "--pgo", garbage}, "--pgo " + garbage + " needs --task-src DIR"},
		{[]string{"--task-src", src, "-o", out, "--pgo", filepath.Join(dir, "nope.pgo")}, "nope.pgo: no such file or directory (give a pprof CPU profile file, auto, or off)"},
		{[]string{"--task-src", src, "-o", out, "--pgo", garbage}, "garbage.pgo: not a pprof profile"},
		{[]string{"--task-src", src, "-o", out, "--pgo", ""}, "--pgo wants off, auto or a profile file"},
		{[]string{"--task-src", filepath.Join(src, "work"), "-o", out, "--init", initBin}, "package work is not a main package"},
		{[]string{"--task-src", filepath.Join(dir, "nope"), "-o", out, "--init", initBin}, "nope: no such file or directory"},
	} {
		_, errOut, code := runCLI(t, nil, nil, append([]string{"image", "build"}, c.args...)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused build left %s behind (%v)", out, err)
	}
}

// Without go on PATH, --task-src says so and what to do.
func TestImageBuildNoGoToolchain(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, errOut, code := runCLI(t, nil, nil, "image", "build", "--task-src", gocpuSrc(), "-o", t.TempDir(), "--init", filepath.Join(binDir, "kindling"))
	if code != 1 || !strings.Contains(errOut, "no go toolchain on PATH: install Go") || !strings.Contains(errOut, "--task BINARY") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

// TestImagePGOAuto: --pgo auto asks kindlingd for the function's profile,
// keeps it in the image directory and says whose it is; with none
// collected it says how to get one.
func TestImagePGOAuto(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "work.pprof")
	workProfile(t, prof, 300*time.Millisecond)
	data, samples, err := readPGOProfile(prof)
	if err != nil {
		t.Fatal(err)
	}
	f := &profileKindlingd{resp: &api.GetProfileResponse{Version: "7", Profile: data, Profiles: 3, Samples: uint64(samples),
		Usage: &api.VersionUsage{Invocations: 120, CpuNsPerInvocation: 9_500_000}}}
	sock := serveProfiles(t, f)
	var stderr syncBuffer
	d := newDaemonCLI(&bytes.Buffer{}, &stderr, func(k string) string { return map[string]string{"KINDLING_SOCKET": sock}[k] })
	out := filepath.Join(dir, "img")
	o := &imageOptions{taskSrc: gocpuSrc(), out: out, pgo: pgoAuto, function: "orders", fromVersion: "7"}
	path, err := d.pgoProfile(o)
	if err != nil {
		t.Fatal(err)
	}
	if f.req.GetFunction() != "orders" || f.req.GetVersion() != "7" {
		t.Errorf("asked kindlingd for %v", f.req)
	}
	if kept, _ := os.ReadFile(path); path != filepath.Join(out, pgoFile) || !bytes.Equal(kept, data) {
		t.Errorf("profile kept at %s (%d bytes); want %s with kindlingd's %d bytes", path, len(kept), filepath.Join(out, pgoFile), len(data))
	}
	for _, want := range []string{"merged profile of orders version 7: " + strconv.Itoa(samples) + " samples from 3 profiles", "9.50 ms CPU per invocation over 120 invocations", "kept as " + path} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if got := pgoLine(o); !strings.Contains(got, "kindlingd's profile of orders, version 7") {
		t.Errorf("pgoLine: %s", got)
	}

	// None collected: the error says to build the previous version with
	// --profile and invoke it.
	f.resp = &api.GetProfileResponse{Version: "8"}
	_, err = d.pgoProfile(&imageOptions{taskSrc: gocpuSrc(), out: out, pgo: pgoAuto, function: "orders"})
	if err == nil || !strings.Contains(err.Error(), "none collected yet") || !strings.Contains(err.Error(), "build that version with --profile and invoke it") {
		t.Errorf("with no profile: %v", err)
	}
}

// TestImagePGOFileAndOff: --pgo FILE keeps a copy of FILE as the image's
// default.pgo; --pgo off removes one an earlier build left.
func TestImagePGOFileAndOff(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "cpu.pprof")
	workProfile(t, prof, 300*time.Millisecond)
	var stderr syncBuffer
	d := newDaemonCLI(&bytes.Buffer{}, &stderr, func(string) string { return "" })
	out := filepath.Join(dir, "img")
	path, err := d.pgoProfile(&imageOptions{out: out, pgo: prof})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(prof)
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) || filepath.Base(path) != pgoFile {
		t.Errorf("kept %s, %d bytes; want a copy of %s", path, len(got), prof)
	}
	if !strings.Contains(stderr.String(), "PGO profile: "+prof+": ") {
		t.Errorf("stderr: %s", stderr.String())
	}
	if path, err := d.pgoProfile(&imageOptions{out: out, pgo: pgoOff}); err != nil || path != "" {
		t.Fatalf("--pgo off: %q, %v", path, err)
	}
	if _, err := os.Stat(filepath.Join(out, pgoFile)); !os.IsNotExist(err) {
		t.Errorf("--pgo off left the earlier default.pgo (%v)", err)
	}
}

// TestImagePlanProfiling: --profile asks the kernel for perf events, with
// its reason; without it, a plan for binaries that do not call
// perf_event_open does not. (kindling-init, which links the sampler, does
// call it, so with it both plans ask, and share their cached kernel.) No
// kernel is built.
func TestImagePlanProfiling(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gocpu")
	if err := (goTask{Dir: gocpuSrc()}).build(bin, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	// The task stands in for /init: this test is about --profile, not
	// about what kindling-init's own analysis asks for.
	off, err := imagePlan(bin, bin, false)
	if err != nil {
		t.Fatal(err)
	}
	on, err := imagePlan(bin, bin, true)
	if err != nil {
		t.Fatal(err)
	}
	const perf = "CONFIG_PERF_EVENTS"
	if w := off.Why[perf]; w != nil {
		t.Errorf("without --profile the plan asks for %s: %v", perf, w)
	}
	if w := strings.Join(on.Why[perf], "; "); w != "profiling on: the guest agent samples the task with perf_event_open" {
		t.Errorf("with --profile, %s because %q", perf, w)
	}
	has := func(s kernelbuilder.Spec) bool {
		for _, o := range s.Options {
			if o.Name == perf && o.Value == "y" {
				return true
			}
		}
		return false
	}
	if has(off.Spec(false)) || !has(on.Spec(false)) || len(on.Spec(false).Options) != len(off.Spec(false).Options)+1 {
		t.Errorf("specs: without --profile %d options (perf events %v), with %d (%v)",
			len(off.Spec(false).Options), has(off.Spec(false)), len(on.Spec(false).Options), has(on.Spec(false)))
	}
}

// TestImageBuildFromSourceEndToEnd builds a profiling image of gocpu from
// its source with a profile, kernel and all. It builds a kernel (cached
// afterwards), so it runs where the Linux tests do.
func TestImageBuildFromSourceEndToEnd(t *testing.T) {
	if os.Getenv("KINDLING_LINUX_TEST") == "" || testing.Short() {
		t.Skip("skipping: set KINDLING_LINUX_TEST=1 to build the image's profiling kernel")
	}
	if _, err := kernelbuilder.FindSource(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	initBin := filepath.Join(dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", initBin, "github.com/kindlingvm/kindling/cmd/kindling-init").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	prof := filepath.Join(dir, "cpu.pprof")
	workProfile(t, prof, time.Second)
	img := filepath.Join(dir, "img")
	stdout, errOut, code := kindling(t, "image", "build", "--task-src", gocpuSrc(), "--init", initBin, "--profile", "--pgo", prof, "-o", img)
	if code != 0 {
		t.Fatalf("image build: exit %d\n%s", code, errOut)
	}
	t.Log(errOut)
	if strings.TrimSpace(stdout) != img {
		t.Errorf("stdout %q", stdout)
	}
	b, err := os.ReadFile(filepath.Join(img, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m rootfs.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if !m.Run.Profiling || m.TaskBuildID == "" || !strings.Contains(strings.Join(m.KernelOptions, " "), "CONFIG_PERF_EVENTS=y") {
		t.Errorf("manifest: profiling %v, task build ID %q, kernel options %v", m.Run.Profiling, m.TaskBuildID, m.KernelOptions)
	}
	if _, err := os.Stat(filepath.Join(img, pgoFile)); err != nil {
		t.Error(err)
	}
	for _, want := range []string{"go build -trimpath -buildvcs=false -pgo=" + filepath.Join(img, pgoFile), "profiling on: the guest agent samples the task with perf_event_open", "profiling on, built with " + filepath.Join(img, pgoFile)} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
}
