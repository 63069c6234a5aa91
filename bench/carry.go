package main

// kindling-bench --carry: what one version of a function hands the next,
// measured through a real kindlingd (process backend: the one every Linux
// host has), one table per handler, every peer in the same run.
//
// For the CPU-bound Go handler (internal/testtasks/gocpu):
//   - the first invocation of a fresh environment: a cold start (a new
//     tenant each time, so a new sandbox), and restores from the version's
//     plain snapshot (cut after init) and warm snapshot (cut after its
//     warm-up invocations), which need the microVM backend with a guest
//     whose user space runs: where HostStatus says it does not, those rows
//     say why instead;
//   - CPU per invocation (the guest agent's account of the task's CPU
//     clock, VersionUsage) of version 1, built normally with profiling on,
//     against version 2, built with go build -pgo from the profile
//     kindlingd merged from version 1's invocations (profiling on too, so
//     both are measured alike), and of version 1's image with profiling
//     off: the profiler's own cost. The three take turns, batch by batch,
//     so drift on the host hits them alike.
//
// For a Node handler loading a large module tree (internal/testtasks/
// nodebig): the first invocation of a fresh environment without and with
// the compile cache version 1's warm-ups left (GetArtifact), baked into
// version 2's image.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/pprof/profile"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/buildid"
	"github.com/kindlingvm/kindling/internal/testdaemon"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/internal/testtasks/gocpu/work"
	"github.com/kindlingvm/kindling/internal/testtasks/nodebig"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/rootfs/nodejs"
)

// The targets.
const (
	pgoTargetSaved      = 0.02 // version 2 uses at least 2% less CPU per invocation
	profilerTargetAdded = 0.01 // profiling on costs at most 1% more
)

// gocpuPkg is the Go handler's main package; pgoBuildEnv is how
// internal/testtasks builds it, never the caller's environment's.
const gocpuPkg = "github.com/kindlingvm/kindling/internal/testtasks/gocpu"

var pgoBuildEnv = []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1"}

// Events: version 1's profile is made from one batch of orders, every
// measured invocation works through another, so version 2 is not timed
// on the very input it was trained on.
var (
	profileEvent = work.Event(1, work.DefaultOrders)
	measureEvent = work.Event(2, work.DefaultOrders)
)

// carryOptions say how much to measure; carryDefaults keep the default
// run within about five minutes on two cores.
type carryOptions struct {
	Cold     int // fresh environments per first-invocation row
	ProfileN int // invocations of the Go handler's version 1 before its profile is taken
	Rounds   int // interleaved rounds of the CPU rows
	Batch    int // invocations per version per round
	Modules  int // nodebig's module count
	NoNode   bool
}

var carryDefaults = carryOptions{Cold: 10, ProfileN: 300, Rounds: 40, Batch: 15, Modules: 400}

// command is the command line that reproduces a run with these options.
func (o carryOptions) command() string {
	s := fmt.Sprintf("go run ./bench --carry --carry-cold=%d --carry-profile=%d --carry-rounds=%d --carry-batch=%d --carry-modules=%d",
		o.Cold, o.ProfileN, o.Rounds, o.Batch, o.Modules)
	if o.NoNode {
		s += " --carry-no-node"
	}
	if o == carryDefaults {
		s += "   (or: make bench-carry)"
	}
	return s
}

// firstInvocation is one fresh environment's first invocation: kindlingd's
// phases and the client's wall time of the Invoke call.
type firstInvocation struct{ start, run, wall time.Duration }

func (f firstInvocation) total() time.Duration { return f.start + f.run }

// vmSupport says whether the microVM backend can run a guest's user space
// here, and if not why (HostStatus's KVM status).
type vmSupport struct {
	ok  bool
	why string
}

func vmSupportOf(hs *api.HostStatusResponse) vmSupport {
	k := hs.GetKvm()
	switch {
	case k == nil:
		return vmSupport{why: "kindlingd reports no KVM status (HostStatus.kvm is empty)"}
	case !k.Available:
		return vmSupport{why: "no usable KVM: " + orText(k.Detail, "no detail")}
	case !k.UserSpaceRuns:
		return vmSupport{why: fmt.Sprintf("a microVM guest's user space cannot run on this host (HostStatus kvm.user_space_runs=false, %s host): %s",
			orText(k.HostKind, "unknown"), orText(k.UserSpaceDetail, "no detail"))}
	}
	return vmSupport{ok: true}
}

func orText(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

// carryEnv is what every section shares: the binaries and one kindlingd.
type carryEnv struct {
	dir  string
	bins *testdaemon.Binaries
	d    *testdaemon.Daemon
	vm   vmSupport
	// progress gets one line per step.
	progress io.Writer
}

// startCarryEnv builds kindlingd, kindling-init and the VMM and starts
// kindlingd (process backend); stop kills it and every sandbox.
func startCarryEnv(ctx context.Context, progress io.Writer) (*carryEnv, func(), error) {
	if _, err := os.Stat(filepath.Join(testdaemon.ModuleRoot(), "go.mod")); err != nil {
		return nil, nil, errors.New("--carry builds kindlingd, kindling-init and the test tasks from source: run it in the kindling repository")
	}
	dir, err := os.MkdirTemp("", "kindling-bench-carry-")
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(progress, "building kindlingd, kindling-init and the VMM (go build)...\n")
	bins, err := testdaemon.Build(filepath.Join(dir, "bin"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("build: %w", err)
	}
	// Short: the state dir holds kindlingd's Unix socket (108 bytes).
	stateDir, err := os.MkdirTemp("", "kbc-")
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	d, err := testdaemon.Start(bins, stateDir, nil)
	if err != nil {
		os.RemoveAll(dir)
		os.RemoveAll(stateDir)
		return nil, nil, fmt.Errorf("start kindlingd: %w", err)
	}
	stop := func() {
		if _, err := d.Terminate(30 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "kindling-bench: %v\n", err)
		}
		testdaemon.KillSandboxes(stateDir)
		os.RemoveAll(stateDir)
		os.RemoveAll(dir)
	}
	hs, err := d.API.HostStatus(ctx, &api.HostStatusRequest{})
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("HostStatus: %w", err)
	}
	return &carryEnv{dir: dir, bins: bins, d: d, vm: vmSupportOf(hs), progress: progress}, stop, nil
}

// carryMain runs the benchmark and prints its tables: the Go handler's
// first, so that a Node failure (no npm registry) still leaves it.
func carryMain(ctx context.Context, w io.Writer, o carryOptions) error {
	if o.Cold < 1 || o.ProfileN < 1 || o.Rounds < 1 || o.Batch < 1 || o.Modules < 1 {
		return fmt.Errorf("--carry-cold, --carry-profile, --carry-rounds, --carry-batch and --carry-modules must be at least 1")
	}
	env, stop, err := startCarryEnv(ctx, w)
	if err != nil {
		return err
	}
	defer stop()
	g, err := goCarry(ctx, env, o)
	if err != nil {
		return fmt.Errorf("Go handler: %w", withLog(err, env.d))
	}
	g.print(w, o)
	if o.NoNode {
		return nil
	}
	n, err := nodeCarry(ctx, env, o)
	if err != nil {
		return fmt.Errorf("Node handler: %w", withLog(err, env.d))
	}
	n.print(w, o)
	return nil
}

// loadAverage is the host's 1-minute load average: other work on the
// host moves absolute figures (ratios of interleaved runs much less).
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// withLog adds the tail of kindlingd's log to err, unless it is about
// something kindlingd never saw.
func withLog(err error, d *testdaemon.Daemon) error {
	var ne nodePrepError
	if errors.As(err, &ne) || strings.Contains(err.Error(), "kindlingd's log") {
		return err
	}
	lines := strings.Split(strings.TrimRight(d.Log.String(), "\n"), "\n")
	return fmt.Errorf("%w\nkindlingd's log (last lines):\n%s", err, strings.Join(lines[max(0, len(lines)-30):], "\n"))
}

// --- images --------------------------------------------------------------

// processImage packs task for the process backend (a placeholder kernel:
// it boots none) into dir and returns the image and its manifest digest.
func processImage(dir, initBin, task string, run rootfs.TaskConfig, trees []rootfs.Tree) (img, sha string, err error) {
	img, sha, _, err = testdaemon.ProcessImage(dir, rootfs.ImageSpec{Init: initBin, Task: task, Run: run, Trees: trees})
	return img, sha, err
}

func imageRef(img, sha string) *api.ImageRef { return &api.ImageRef{Path: img, ManifestSha256: sha} }

// --- invocations -----------------------------------------------------------

// invokeOK invokes and insists on success and, unless unspecified, on
// how the instance started.
func invokeOK(ctx context.Context, d *testdaemon.Daemon, req *api.InvokeRequest, want api.StartKind) (*api.Invocation, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	r, _, err := d.Invoke(ctx, req)
	wall := time.Since(t0)
	switch {
	case err != nil:
		return nil, 0, fmt.Errorf("invoke %s version %q tenant %q: %w", req.Function, req.Version, req.Tenant, err)
	case r.State != api.InvocationState_SUCCEEDED:
		return nil, 0, fmt.Errorf("invocation %s of %s: %v %s %s %.300s", r.InvocationId, req.Function, r.State, r.ErrorType, r.ErrorMessage, r.Response)
	case want != api.StartKind_START_KIND_UNSPECIFIED && r.Start != want:
		return nil, 0, fmt.Errorf("invocation %s of %s started %v, want %v", r.InvocationId, req.Function, r.Start, want)
	}
	return r, wall, nil
}

func firstOf(r *api.Invocation, wall time.Duration) firstInvocation {
	return firstInvocation{start: time.Duration(r.GetPhases().GetStartUs()) * time.Microsecond,
		run: time.Duration(r.GetPhases().GetRunUs()) * time.Microsecond, wall: wall}
}

// waitGone waits until function has no instance for tenant ("": none at
// all; a keep-alive of 1 ms has kindlingd's housekeeping stop an idle
// one within its next tick) and,
// if root is set, no process runs from root: the sandbox has exited and
// written what it writes at exit.
func waitGone(ctx context.Context, d *testdaemon.Daemon, function, tenant, root string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		l, err := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: function})
		if err != nil {
			return err
		}
		busy := false
		for _, in := range l.Instances {
			busy = busy || tenant == "" || in.Tenant == tenant
		}
		if !busy && (root == "" || !processUnder(root)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s's instance for tenant %s still there 20 s after its invocation (keep-alive 1 ms)", function, tenant)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processUnder reports whether a process's command line names a path
// under root.
func processUnder(root string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(b, []byte(root+"/")) {
			return true
		}
	}
	return false
}

// coldStarts invokes function's version (registered with keep-alive 1 ms
// and no warm-ups) once per run, each time for a new tenant, so each is a
// cold start of a fresh sandbox, and waits for that sandbox to be gone
// (see waitGone) before the next. before runs ahead of each invocation.
func coldStarts(ctx context.Context, d *testdaemon.Daemon, function, version, prefix string, payload []byte, runs int, before func() error, root string) ([]firstInvocation, error) {
	var out []firstInvocation
	for i := range runs {
		if before != nil {
			if err := before(); err != nil {
				return nil, err
			}
		}
		tenant := fmt.Sprintf("%s%d", prefix, i)
		r, wall, err := invokeOK(ctx, d, &api.InvokeRequest{Function: function, Version: version, Tenant: tenant, Payload: payload}, api.StartKind_COLD)
		if err != nil {
			return nil, err
		}
		out = append(out, firstOf(r, wall))
		if err := waitGone(ctx, d, function, tenant, root); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// imageRoots lists the process backend's extracted images.
func imageRoots(stateDir string) map[string]bool {
	m := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(stateDir, "images"))
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			m[e.Name()] = true
		}
	}
	return m
}

// newRoot is the one image root extracted since before.
func newRoot(stateDir string, before map[string]bool) (string, error) {
	var fresh []string
	for name := range imageRoots(stateDir) {
		if !before[name] {
			fresh = append(fresh, name)
		}
	}
	if len(fresh) != 1 {
		return "", fmt.Errorf("the process backend extracted %d images (%v) for one new image under %s/images, want 1", len(fresh), fresh, stateDir)
	}
	return filepath.Join(stateDir, "images", fresh[0]), nil
}

// --- the Go handler ----------------------------------------------------------

// cpuPeer is one registration whose CPU per invocation is measured.
type cpuPeer struct {
	name, function, version string
	pid                     int32
	// Per round: task CPU and invocations (VersionUsage deltas).
	cpu   []time.Duration
	calls []uint64
	// The agent's (kindling-init's) own CPU over the whole interleaved
	// phase: with profiling on it drains the sampler's rings and
	// symbolises and ships profiles.
	agent time.Duration
}

func (p *cpuPeer) perCall() time.Duration {
	var cpu time.Duration
	var n uint64
	for i := range p.cpu {
		cpu += p.cpu[i]
		n += p.calls[i]
	}
	return cpu / time.Duration(max(n, 1))
}

func (p *cpuPeer) roundPerCall(i int) float64 { return float64(p.cpu[i]) / float64(max(p.calls[i], 1)) }

func (p *cpuPeer) totalCalls() uint64 {
	var n uint64
	for _, c := range p.calls {
		n += c
	}
	return n
}

// goCarryResult is the Go handler's table.
type goCarryResult struct {
	cold              []firstInvocation
	plain, warm       []firstInvocation // restores; empty when vmWhy says why
	vmWhy             string
	v1, v2, off       *cpuPeer
	profileSamples    uint64
	profiles          uint64
	profileCalls      uint64
	sameBuild         bool   // the PGO build came out identical
	pgoCommand        string // how version 2 was built
	v1Usage, v2Usage  *api.VersionUsage
	agentCPUAvailable bool
	load              [2]string // the host's load average before and after
}

// goCarry measures the Go handler's rows.
func goCarry(ctx context.Context, env *carryEnv, o carryOptions) (*goCarryResult, error) {
	d := env.d
	dir := filepath.Join(env.dir, "gocpu")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	fmt.Fprintf(env.progress, "Go handler: building internal/testtasks/gocpu and its images...\n")
	task, err := testtasks.Build(dir, testtasks.GoCPU)
	if err != nil {
		return nil, err
	}
	imgProf, shaProf, err := processImage(filepath.Join(dir, "profiled"), env.bins.Init, task, rootfs.TaskConfig{Profiling: true}, nil)
	if err != nil {
		return nil, err
	}
	imgOff, shaOff, err := processImage(filepath.Join(dir, "plain"), env.bins.Init, task, rootfs.TaskConfig{}, nil)
	if err != nil {
		return nil, err
	}
	res := &goCarryResult{load: [2]string{loadAverage()}}
	defer func() { res.load[1] = loadAverage() }()
	register := func(spec *api.FunctionSpec) error {
		spec.TimeoutMs = 60_000
		if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: spec}); err != nil {
			return fmt.Errorf("register %s version %s: %w", spec.Name, spec.Version, err)
		}
		return nil
	}

	// First invocations: cold starts of the profiling-off image, each
	// for a new tenant (its own sandbox); the first, untimed, extracts
	// the image.
	if err := register(&api.FunctionSpec{Name: "gocpu-cold", Image: imageRef(imgOff, shaOff), KeepAliveMs: 1}); err != nil {
		return nil, err
	}
	fmt.Fprintf(env.progress, "Go handler: %d cold starts...\n", o.Cold)
	if _, err := coldStarts(ctx, d, "gocpu-cold", "", "first", measureEvent, 1, nil, ""); err != nil {
		return nil, err
	}
	if res.cold, err = coldStarts(ctx, d, "gocpu-cold", "", "cold", measureEvent, o.Cold, nil, ""); err != nil {
		return nil, err
	}
	if env.vm.ok {
		fmt.Fprintf(env.progress, "Go handler: %d restores each from a plain and a warm snapshot (microVM backend)...\n", o.Cold)
		if res.plain, res.warm, err = vmFirstInvocations(ctx, env, task, o.Cold); err != nil {
			return nil, fmt.Errorf("microVM restores: %w", err)
		}
	} else {
		res.vmWhy = env.vm.why
	}

	// Version 1, profiled, and its profile.
	if err := register(&api.FunctionSpec{Name: "gocpu", Version: "1", Image: imageRef(imgProf, shaProf)}); err != nil {
		return nil, err
	}
	fmt.Fprintf(env.progress, "Go handler: %d invocations of version 1 (profiling on)...\n", o.ProfileN)
	v1req := &api.InvokeRequest{Function: "gocpu", Version: "1", Payload: profileEvent}
	for range o.ProfileN {
		if _, _, err := invokeOK(ctx, d, v1req, api.StartKind_START_KIND_UNSPECIFIED); err != nil {
			return nil, err
		}
	}
	prof, err := mergedProfile(ctx, d, o.ProfileN, v1req)
	if err != nil {
		return nil, err
	}
	res.profileSamples, res.profiles, res.profileCalls = prof.Samples, prof.Profiles, prof.GetUsage().GetInvocations()
	if _, err := profile.ParseData(prof.Profile); err != nil {
		return nil, fmt.Errorf("version 1's merged profile is no pprof profile: %w", err)
	}

	// Version 2: the same package built with that profile.
	pgoFile := filepath.Join(dir, "v1.pgo")
	if err := os.WriteFile(pgoFile, prof.Profile, 0o644); err != nil {
		return nil, err
	}
	rebuilt := filepath.Join(dir, "go-cpu-pgo")
	args := []string{"build", "-trimpath", "-ldflags=", "-pgo=" + pgoFile, "-o", rebuilt, gocpuPkg}
	res.pgoCommand = strings.Join(pgoBuildEnv, " ") + " go " + strings.Join(args, " ")
	fmt.Fprintf(env.progress, "Go handler: %s\n", res.pgoCommand)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = testdaemon.ModuleRoot()
	cmd.Env = append(os.Environ(), pgoBuildEnv...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build -pgo: %v\n%s", err, out)
	}
	a, _ := buildid.File(task)
	b, _ := buildid.File(rebuilt)
	res.sameBuild = a != "" && a == b
	imgPGO, shaPGO, err := processImage(filepath.Join(dir, "pgo"), env.bins.Init, rebuilt, rootfs.TaskConfig{Profiling: true}, nil)
	if err != nil {
		return nil, err
	}
	if err := register(&api.FunctionSpec{Name: "gocpu", Version: "2", Image: imageRef(imgPGO, shaPGO)}); err != nil {
		return nil, err
	}
	// The profiler's cost: version 1's very task, profiling off.
	if err := register(&api.FunctionSpec{Name: "gocpu-off", Image: imageRef(imgOff, shaOff)}); err != nil {
		return nil, err
	}

	res.v1 = &cpuPeer{name: "version 1 (profiling on)", function: "gocpu", version: "1"}
	res.v2 = &cpuPeer{name: "version 2 (-pgo, profiling on)", function: "gocpu", version: "2"}
	res.off = &cpuPeer{name: "version 1, profiling off", function: "gocpu-off", version: "1"}
	peers := []*cpuPeer{res.v1, res.v2, res.off}
	// Warm every instance up (version 1's already is) and find its agent.
	for _, p := range peers {
		for range max(5, o.Batch/3) {
			if _, _, err := invokeOK(ctx, d, &api.InvokeRequest{Function: p.function, Version: p.version, Payload: measureEvent}, api.StartKind_START_KIND_UNSPECIFIED); err != nil {
				return nil, err
			}
		}
		if p.pid, err = instancePID(ctx, d, p.function, p.version); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(env.progress, "Go handler: %d rounds of %d invocations per version, versions taking turns...\n", o.Rounds, o.Batch)
	if err := interleave(ctx, d, peers, o.Rounds, o.Batch); err != nil {
		return nil, err
	}
	res.agentCPUAvailable = true
	for _, p := range peers {
		res.agentCPUAvailable = res.agentCPUAvailable && p.agent > 0
	}
	for _, v := range []struct {
		version string
		u       **api.VersionUsage
	}{{"1", &res.v1Usage}, {"2", &res.v2Usage}} {
		r, err := d.API.GetProfile(ctx, &api.GetProfileRequest{Function: "gocpu", Version: v.version})
		if err != nil {
			return nil, err
		}
		*v.u = r.Usage
	}
	return res, nil
}

// mergedProfile waits until kindlingd has merged the profiles of the
// first calls invocations of version 1 (the agent ships one every 100
// invocations, or at the first invocation 10 s after the last), invoking
// it now and then when fewer than 100 are left to ship.
func mergedProfile(ctx context.Context, d *testdaemon.Daemon, calls int, req *api.InvokeRequest) (*api.GetProfileResponse, error) {
	want := uint64(max(1, calls/100))
	deadline := time.Now().Add(40 * time.Second)
	lastCall := time.Now()
	for {
		r, err := d.API.GetProfile(ctx, &api.GetProfileRequest{Function: req.Function, Version: req.Version})
		if err != nil {
			return nil, fmt.Errorf("GetProfile: %w", err)
		}
		if r.Profiles >= want && len(r.Profile) > 0 {
			return r, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("version %s: %d profiles merged (%d refused) 40 s after %d invocations, want %d: is perf_event_open allowed (kernel.perf_event_paranoid)?",
				req.Version, r.Profiles, r.Refused, calls, want)
		}
		if time.Since(lastCall) > time.Second {
			if _, _, err := invokeOK(ctx, d, req, api.StartKind_START_KIND_UNSPECIFIED); err != nil {
				return nil, err
			}
			lastCall = time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// instancePID is the process (kindling-init, the guest agent) of the one
// instance of function's version.
func instancePID(ctx context.Context, d *testdaemon.Daemon, function, version string) (int32, error) {
	l, err := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: function})
	if err != nil {
		return 0, err
	}
	var pids []int32
	for _, in := range l.Instances {
		if in.Version == version {
			pids = append(pids, in.Pid)
		}
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("%s version %s has %d instances, want 1", function, version, len(pids))
	}
	return pids[0], nil
}

// usages is every version's VersionUsage, by function and version.
func usages(ctx context.Context, d *testdaemon.Daemon) (map[string]*api.VersionUsage, error) {
	l, err := d.API.ListFunctions(ctx, &api.ListFunctionsRequest{})
	if err != nil {
		return nil, err
	}
	m := map[string]*api.VersionUsage{}
	for _, f := range l.Functions {
		m[f.Spec.Name+"@"+f.Spec.Version] = f.Usage
	}
	return m, nil
}

// interleave runs rounds: in each, every peer runs batch invocations in
// turn, the order rotating from round to round, and records the task CPU
// kindlingd's VersionUsage gained over its batch.
func interleave(ctx context.Context, d *testdaemon.Daemon, peers []*cpuPeer, rounds, batch int) error {
	agent0 := make([]time.Duration, len(peers))
	for i, p := range peers {
		agent0[i] = processCPUTime(int(p.pid))
	}
	for r := range rounds {
		for k := range peers {
			p := peers[(r+k)%len(peers)]
			key := p.function + "@" + p.version
			before, err := usages(ctx, d)
			if err != nil {
				return err
			}
			req := &api.InvokeRequest{Function: p.function, Version: p.version, Payload: measureEvent}
			for range batch {
				if _, _, err := invokeOK(ctx, d, req, api.StartKind_WARM); err != nil {
					return err
				}
			}
			after, err := usages(ctx, d)
			if err != nil {
				return err
			}
			u0, u1 := before[key], after[key]
			if u0 == nil || u1 == nil || u1.Invocations <= u0.Invocations {
				return fmt.Errorf("%s: kindlingd's usage did not count the round's invocations (%v, then %v): does the guest agent report the task's CPU?", key, u0, u1)
			}
			p.cpu = append(p.cpu, time.Duration(u1.CpuNs-u0.CpuNs))
			p.calls = append(p.calls, u1.Invocations-u0.Invocations)
		}
	}
	for i, p := range peers {
		if pid, err := instancePID(ctx, d, p.function, p.version); err != nil || pid != p.pid {
			return fmt.Errorf("%s version %s: its instance changed during the rounds (%v)", p.function, p.version, err)
		}
		if t := processCPUTime(int(p.pid)); agent0[i] > 0 && t > agent0[i] {
			p.agent = t - agent0[i]
		}
	}
	return nil
}

// processCPUTime is the CPU pid's live threads have run (schedstat), or
// 0 if it cannot be read.
func processCPUTime(pid int) time.Duration {
	threads, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	var sum time.Duration
	for _, t := range threads {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, _ := strconv.ParseInt(f[0], 10, 64)
		sum += time.Duration(ns)
	}
	return sum
}

// vmFirstInvocations measures restores on the microVM backend: the
// handler's image built by kindling image build (its own kernel, built
// once and cached), registered twice, once without warm-ups (its snapshot
// is cut after init: plain) and once with (warm), each invoked once cold
// to cut the snapshot, then runs times for a new tenant, each a restore
// into a new VM (--standby-restores=0: none restored ahead of need).
func vmFirstInvocations(ctx context.Context, env *carryEnv, task string, runs int) (plain, warm []firstInvocation, err error) {
	kindling := filepath.Join(env.bins.Dir, "kindling")
	build := exec.CommandContext(ctx, "go", "build", "-o", kindling, "./cmd/kindling")
	build.Dir = testdaemon.ModuleRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("build kindling: %v\n%s", err, out)
	}
	img := filepath.Join(env.dir, "gocpu", "vm-image")
	ib := exec.CommandContext(ctx, kindling, "image", "build", "--task", task, "--init", env.bins.Init, "-o", img)
	if out, err := ib.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("kindling image build --task %s (it builds the task's kernel, which needs the kernel source: make setup): %v\n%s", task, err, out)
	}
	sha, err := testdaemon.ManifestSHA(img)
	if err != nil {
		return nil, nil, err
	}
	stateDir, err := os.MkdirTemp("", "kbv-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(stateDir)
	d, err := testdaemon.Start(env.bins, stateDir, nil, "--backend", "microvm", "--standby-restores=0")
	if err != nil {
		return nil, nil, fmt.Errorf("start kindlingd --backend microvm: %w", err)
	}
	defer func() {
		d.Kill()
		testdaemon.KillSandboxes(stateDir)
	}()
	fail := func(err error) ([]firstInvocation, []firstInvocation, error) { return nil, nil, withLog(err, d) }
	for _, f := range []struct {
		name    string
		warmups [][]byte
	}{{"plain", nil}, {"warm", [][]byte{measureEvent, profileEvent}}} {
		spec := &api.FunctionSpec{Name: f.name, Image: imageRef(img, sha), TimeoutMs: 60_000, KeepAliveMs: 1, WarmupPayloads: f.warmups}
		if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: spec}); err != nil {
			return fail(fmt.Errorf("register %s: %w", f.name, err))
		}
		if _, _, err := invokeOK(ctx, d, &api.InvokeRequest{Function: f.name, Tenant: "cut", Payload: measureEvent}, api.StartKind_COLD); err != nil {
			return fail(err)
		}
		l, err := d.API.ListFunctions(ctx, &api.ListFunctionsRequest{})
		if err != nil {
			return fail(err)
		}
		for _, fn := range l.Functions {
			if fn.Spec.Name == f.name && fn.Snapshot == "" {
				return fail(fmt.Errorf("%s: no snapshot was cut by its cold start", f.name))
			}
		}
	}
	// The two take turns.
	for i := range runs {
		for _, f := range []struct {
			name string
			out  *[]firstInvocation
		}{{"plain", &plain}, {"warm", &warm}} {
			tenant := fmt.Sprintf("r%d", i)
			r, wall, err := invokeOK(ctx, d, &api.InvokeRequest{Function: f.name, Tenant: tenant, Payload: measureEvent}, api.StartKind_RESTORE)
			if err != nil {
				return fail(err)
			}
			*f.out = append(*f.out, firstOf(r, wall))
			if err := waitGone(ctx, d, f.name, tenant, ""); err != nil {
				return fail(err)
			}
		}
	}
	return plain, warm, nil
}

// --- the Node handler --------------------------------------------------------

// nodePrepError is a failure to get node or lay out the task: nothing
// kindlingd saw.
type nodePrepError struct{ err error }

func (e nodePrepError) Error() string { return e.err.Error() }
func (e nodePrepError) Unwrap() error { return e.err }

// nodeCarryResult is the Node handler's table.
type nodeCarryResult struct {
	nodeVersion   string
	cacheBytes    int
	cacheFiles    int
	without, with []firstInvocation
	vmWhy         string
	modules       int
	load          [2]string // the host's load average before and after
}

// nodeImage prepares the nodebig task (node from the npm registry or the
// cache), carrying cache if set, and packs it.
func nodeImage(ctx context.Context, dir, initBin, src, cache string, progress io.Writer) (img, sha string, t nodejs.Task, err error) {
	t, err = nodejs.PrepareTask(ctx, nodejs.TaskOptions{Src: src, Handler: nodebig.Handler, CompileCache: cache}, progress)
	if err != nil {
		cacheDir, _ := nodejs.CacheDir()
		return "", "", t, nodePrepError{fmt.Errorf("prepare the Node task: %w\nthe Node rows need node %s from the npm registry (%s, or a mirror in $%s) or already in the cache (%s); --carry-no-node leaves them out",
			err, nodejs.DefaultVersion, nodejs.DefaultRegistry, nodejs.RegistryEnv, cacheDir)}
	}
	defer t.Cleanup()
	img, sha, err = processImage(dir, initBin, t.Binary, t.Run, t.Trees)
	return img, sha, t, err
}

// nodeCarry measures the Node handler's rows.
func nodeCarry(ctx context.Context, env *carryEnv, o carryOptions) (*nodeCarryResult, error) {
	d := env.d
	dir := filepath.Join(env.dir, "nodebig")
	src := filepath.Join(dir, "src")
	if err := nodebig.WriteModuleTree(src, o.Modules); err != nil {
		return nil, err
	}
	res := &nodeCarryResult{modules: o.Modules, load: [2]string{loadAverage()}}
	defer func() { res.load[1] = loadAverage() }()
	if !env.vm.ok {
		res.vmWhy = env.vm.why
	} else {
		res.vmWhy = "kindling image build cannot build a Node task image yet (it takes --task or --task-src, a Go package), so there is no microVM image of this handler to restore"
	}
	fmt.Fprintf(env.progress, "Node handler: %d modules; fetching node (or taking it from the cache) and packing version 1...\n", o.Modules)
	img1, sha1, t1, err := nodeImage(ctx, filepath.Join(dir, "v1"), env.bins.Init, src, "", env.progress)
	if err != nil {
		return nil, err
	}
	res.nodeVersion = t1.Runtime.Version
	// Version 1 with warm-ups: its first instance leaves the compile
	// cache kindlingd collects.
	before := imageRoots(d.StateDir)
	_, err = d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "node", Version: "1", TimeoutMs: 60_000,
		WarmupPayloads: [][]byte{[]byte(`{"seed":1}`), []byte(`{"seed":2}`)}, Image: imageRef(img1, sha1)}})
	if err != nil {
		return nil, fmt.Errorf("register node version 1: %w", err)
	}
	fmt.Fprintf(env.progress, "Node handler: version 1's warm-ups, then its compile cache (GetArtifact)...\n")
	if _, _, err := invokeOK(ctx, d, &api.InvokeRequest{Function: "node", Version: "1", Payload: []byte(`{"seed":3}`)}, api.StartKind_COLD); err != nil {
		return nil, err
	}
	root1, err := newRoot(d.StateDir, before)
	if err != nil {
		return nil, err
	}
	tarball, err := artifact(ctx, d, "node", "1", guest.ArtifactNodeCompileCache)
	if err != nil {
		return nil, err
	}
	// The measured runs of version 1's image need its root to
	// themselves: version 1's instance goes (the image stays registered
	// as node-nocache, below).
	if _, err := d.API.DeleteFunction(ctx, &api.DeleteFunctionRequest{Name: "node", Version: "1"}); err != nil {
		return nil, fmt.Errorf("delete node version 1: %w", err)
	}
	cacheTar := filepath.Join(dir, "compile-cache.tar")
	if err := os.WriteFile(cacheTar, tarball, 0o644); err != nil {
		return nil, err
	}
	res.cacheBytes = len(tarball)
	fmt.Fprintf(env.progress, "Node handler: packing version 2 with the carried compile cache (%.1f MB tar)...\n", float64(len(tarball))/1e6)
	img2, sha2, t2, err := nodeImage(ctx, filepath.Join(dir, "v2"), env.bins.Init, src, cacheTar, env.progress)
	if err != nil {
		return nil, err
	}
	// What the image carries, for putting it back before each run.
	pristine := filepath.Join(dir, "carried")
	got, err := nodejs.UnpackCompileCache(cacheTar, pristine, t2.Runtime.Version)
	if err != nil {
		return nil, err
	}
	res.cacheFiles = got.Files

	// The measured registrations: no warm-ups (a fresh environment's
	// first invocation is timed), keep-alive 1 ms (each sandbox stops
	// once it has answered), a new tenant per run.
	for _, r := range []struct {
		name, version, img, sha string
	}{{"node-nocache", "1", img1, sha1}, {"node", "2", img2, sha2}} {
		_, err = d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: r.name, Version: r.version, TimeoutMs: 60_000,
			KeepAliveMs: 1, Image: imageRef(r.img, r.sha)}})
		if err != nil {
			return nil, fmt.Errorf("register %s version %s: %w", r.name, r.version, err)
		}
	}
	// The process backend extracts an image once and every sandbox of it
	// runs from that one root, compile cache directory included, which
	// each sandbox's node writes to: before each run the directory is put
	// back as a fresh microVM would find it in its own copy of the root.
	cacheDir1 := filepath.Join(root1, nodejs.CompileCacheDir)
	var cacheDir2, root2 string
	resetEmpty := func() error { return resetDir(cacheDir1, "") }
	resetCarried := func() error { return resetDir(cacheDir2, pristine) }
	payload := []byte(`{"seed":7}`)
	// Untimed first runs: version 2's image is extracted here.
	before = imageRoots(d.StateDir)
	if _, err := coldStarts(ctx, d, "node", "2", "first", payload, 1, nil, ""); err != nil {
		return nil, err
	}
	if root2, err = newRoot(d.StateDir, before); err != nil {
		return nil, err
	}
	if err := waitGone(ctx, d, "node", "first0", root2); err != nil {
		return nil, err
	}
	cacheDir2 = filepath.Join(root2, nodejs.CompileCacheDir)
	// That run adopted the carried cache for this root (Node 22 keys an
	// entry by the module's absolute path, and version 1 ran under
	// another root: the runtime client renames the entries once); a
	// microVM runs every version at / and never needs to. What the
	// measured runs start from is the adopted cache.
	if err := resetDir(pristine, cacheDir2); err != nil {
		return nil, err
	}
	if err := waitGone(ctx, d, "node", "", root1); err != nil {
		return nil, fmt.Errorf("version 1's instance: %w", err)
	}
	if _, err := coldStarts(ctx, d, "node-nocache", "1", "first", payload, 1, resetEmpty, root1); err != nil {
		return nil, err
	}
	fmt.Fprintf(env.progress, "Node handler: %d cold starts each without and with the carried cache, taking turns...\n", o.Cold)
	for i := range o.Cold {
		peers := []func() error{
			func() error {
				r, err := coldStarts(ctx, d, "node-nocache", "1", fmt.Sprintf("n%d-", i), payload, 1, resetEmpty, root1)
				res.without = append(res.without, r...)
				return err
			},
			func() error {
				r, err := coldStarts(ctx, d, "node", "2", fmt.Sprintf("c%d-", i), payload, 1, resetCarried, root2)
				res.with = append(res.with, r...)
				return err
			},
		}
		if i%2 == 1 {
			peers[0], peers[1] = peers[1], peers[0]
		}
		for _, p := range peers {
			if err := p(); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

// resetDir empties dir and copies from's files into it ("" leaves it
// empty).
func resetDir(dir, from string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if from == "" {
		return nil
	}
	return os.CopyFS(dir, os.DirFS(from))
}

// artifact fetches a version's artifact.
func artifact(ctx context.Context, d *testdaemon.Daemon, function, version, name string) ([]byte, error) {
	st, err := d.API.GetArtifact(ctx, &api.GetArtifactRequest{Function: function, Version: version, Name: name})
	if err != nil {
		return nil, fmt.Errorf("GetArtifact %s: %w", name, err)
	}
	var b bytes.Buffer
	for {
		c, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("GetArtifact %s: %w", name, err)
		}
		b.Write(c.Data)
	}
	if b.Len() == 0 {
		return nil, fmt.Errorf("%s version %s: no %s collected after its warm-ups", function, version, name)
	}
	return b.Bytes(), nil
}

// --- the tables ------------------------------------------------------------

func msf(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

func msf2(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

// latency is a first-invocation row's figures: start+run p50, its spread,
// and the phases' and the client's p50.
func latency(fs []firstInvocation) (p50 time.Duration, value, spread string) {
	var tot, st, run, wall []time.Duration
	for _, f := range fs {
		tot, st, run, wall = append(tot, f.total()), append(st, f.start), append(run, f.run), append(wall, f.wall)
	}
	p50 = percentile(tot, 50)
	value = fmt.Sprintf("%s (start %s + run %s; wall %s)", msf(p50), msf(percentile(st, 50)), msf(percentile(run, 50)), msf(percentile(wall, 50)))
	spread = fmt.Sprintf("%s–%s", msf(percentile(tot, 1)), msf(percentile(tot, 100)))
	return p50, value, spread
}

// ratioStats are per-round ratios: median, min and max.
func ratioStats(rs []float64) (med, lo, hi float64) {
	s := append([]float64(nil), rs...)
	sort.Float64s(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

// carryTable is rows of: what, value, spread, n, ratio; notes follow.
type carryTable struct {
	rows  [][5]string
	notes []string
}

func (t *carryTable) row(what, value, spread, n, ratio string) {
	t.rows = append(t.rows, [5]string{what, value, spread, n, ratio})
}

// note adds a numbered note and returns its mark.
func (t *carryTable) note(s string) string {
	t.notes = append(t.notes, s)
	return fmt.Sprintf("[%d]", len(t.notes))
}

func (t *carryTable) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "measure\tvalue\tspread (min–max)\tn\tratio\t")
	for _, r := range t.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r[0], r[1], r[2], r[3], r[4])
	}
	tw.Flush()
	for i, n := range t.notes {
		fmt.Fprintf(w, "[%d] %s\n", i+1, n)
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func (r *goCarryResult) print(w io.Writer, o carryOptions) {
	fmt.Fprintf(w, "\nGo handler: internal/testtasks/gocpu (CPU-bound: JSON, regexp, compression; %d-order events of %d KB), through kindlingd's\n"+
		"process backend, %d CPUs (load average %s before, %s after), %s; all figures from this run\n",
		work.DefaultOrders, len(measureEvent)>>10, runtime.NumCPU(), r.load[0], r.load[1], runtime.Version())
	fmt.Fprintf(w, "reproduce: %s\n\n", o.command())
	var t carryTable
	_, v, s := latency(r.cold)
	t.row("first invocation: cold start (start+run p50)", v, s, strconv.Itoa(len(r.cold)), "")
	if len(r.plain) > 0 {
		plainP50, v, s := latency(r.plain)
		t.row("first invocation: restored, plain snapshot", v, s, strconv.Itoa(len(r.plain)), "")
		warmP50, v, s := latency(r.warm)
		t.row("first invocation: restored, warm snapshot", v, s, strconv.Itoa(len(r.warm)), fmt.Sprintf("%.2fx plain", float64(warmP50)/float64(plainP50)))
		t.notes = append(t.notes, "restores: microVM backend (kindlingd --backend microvm --standby-restores=0), image by kindling image build; "+
			"cold start: process backend, so no ratio between them")
	} else {
		mark := t.note("snapshot rows not measured: " + r.vmWhy + ". They need the microVM backend on a host whose KVM runs a guest's user space (VMX/SVM, or a PVM guest kernel); the code path (kindling image build, kindlingd --backend microvm, restores for new tenants) is in bench/carry.go.")
		t.row("first invocation: restored, plain snapshot", "n/a "+mark, "", "", "")
		t.row("first invocation: restored, warm snapshot", "n/a "+mark, "", "", "")
	}
	rounds := len(r.v1.cpu)
	perRound := func(a, b *cpuPeer) []float64 {
		var out []float64
		for i := range rounds {
			out = append(out, a.roundPerCall(i)/b.roundPerCall(i))
		}
		return out
	}
	cpuSpread := func(p *cpuPeer) string {
		var s []float64
		for i := range rounds {
			s = append(s, p.roundPerCall(i))
		}
		_, lo, hi := ratioStats(s)
		return fmt.Sprintf("%s–%s", msf2(time.Duration(lo)), msf2(time.Duration(hi)))
	}
	n := func(p *cpuPeer) string { return strconv.FormatUint(p.totalCalls(), 10) }
	same := ""
	if r.sameBuild {
		same = " — it came out identical to version 1 (same build ID): the profile changed nothing"
	}
	profMark := t.note(fmt.Sprintf("version 1's profile: %d samples in %d profiles merged by kindlingd from %d invocations on another event (seed 1; measured rows: seed 2); version 2: %s%s",
		r.profileSamples, r.profiles, r.profileCalls, r.pgoCommand, same))
	roundsMark := t.note("saved and overhead: the median over the rounds of the ratio of the two versions' CPU per invocation in that round (each round's batches run back to back, so a burst of other work on the host moves one round, not the median); totals: the ratio of the versions' CPU per invocation over all rounds")
	t.row("CPU per invocation: version 1 (profiling on) "+profMark, msf2(r.v1.perCall()), cpuSpread(r.v1), n(r.v1), "1.00x")
	pgo := float64(r.v2.perCall()) / float64(r.v1.perCall())
	med, lo, hi := ratioStats(perRound(r.v2, r.v1))
	t.row("CPU per invocation: version 2 (-pgo from v1's profile)", msf2(r.v2.perCall()), cpuSpread(r.v2), n(r.v2), fmt.Sprintf("%.3fx", pgo))
	t.row("  v2 / v1: saved "+roundsMark, fmt.Sprintf("%+.1f%%, totals %+.1f%% (target ≥ %.0f%% less: %s)", (1-med)*100, (1-pgo)*100, pgoTargetSaved*100, verdict(1-med >= pgoTargetSaved)),
		fmt.Sprintf("rounds %.3f–%.3f", lo, hi), strconv.Itoa(rounds)+" rounds", fmt.Sprintf("%.3fx", med))
	t.row("CPU per invocation: version 1, profiling off", msf2(r.off.perCall()), cpuSpread(r.off), n(r.off), fmt.Sprintf("%.3fx", float64(r.off.perCall())/float64(r.v1.perCall())))
	over := float64(r.v1.perCall())/float64(r.off.perCall()) - 1
	med, lo, hi = ratioStats(perRound(r.v1, r.off))
	t.row("  profiler overhead (task CPU, on / off) "+roundsMark, fmt.Sprintf("%+.2f%%, totals %+.2f%% (target ≤ %.0f%%: %s)", (med-1)*100, over*100, profilerTargetAdded*100, verdict(med-1 <= profilerTargetAdded)),
		fmt.Sprintf("rounds %.3f–%.3f", lo, hi), strconv.Itoa(rounds)+" rounds", fmt.Sprintf("%.3fx", med))
	if r.agentCPUAvailable {
		on := (r.v1.perCall()*time.Duration(r.v1.totalCalls()) + r.v1.agent) / time.Duration(r.v1.totalCalls())
		off := (r.off.perCall()*time.Duration(r.off.totalCalls()) + r.off.agent) / time.Duration(r.off.totalCalls())
		mark := t.note("task + agent: the task's CPU plus its guest agent's (kindling-init's threads, /proc/PID/task/*/schedstat) over the whole interleaved phase, idle time between its batches included: the sampler's ring draining, symbolising and shipping run there")
		t.row("  profiler overhead (task + agent CPU) "+mark, fmt.Sprintf("%+.2f%% (%s vs %s per invocation)", (float64(on)/float64(off)-1)*100, msf2(on), msf2(off)), "", "", "")
	}
	t.notes = append(t.notes, fmt.Sprintf("CPU per invocation: the guest agent's account of the task's CPU clock (VersionUsage deltas over each batch); %d rounds of %d warm invocations per version, the versions taking turns, the order rotating each round", rounds, o.Batch))
	if r.v1Usage != nil && r.v2Usage != nil {
		t.notes = append(t.notes, fmt.Sprintf("kindlingd's cumulative VersionUsage.cpu_ns_per_invocation: version 1 %s over %d invocations (its profiling run included), version 2 %s over %d",
			msf2(time.Duration(r.v1Usage.CpuNsPerInvocation)), r.v1Usage.Invocations, msf2(time.Duration(r.v2Usage.CpuNsPerInvocation)), r.v2Usage.Invocations))
	}
	t.notes = append(t.notes, "first invocations: start+run are kindlingd's phases (getting the sandbox, then the handler), wall the client's Invoke call; a new tenant each, so a new sandbox (the profiling-off image, no warm-ups); p50, spread min–max")
	t.print(w)
}

func (r *nodeCarryResult) print(w io.Writer, o carryOptions) {
	fmt.Fprintf(w, "\nNode handler: internal/testtasks/nodebig (%d CommonJS modules), node %s, through kindlingd's process backend, %d CPUs\n"+
		"(load average %s before, %s after); all figures from this run\n", r.modules, r.nodeVersion, runtime.NumCPU(), r.load[0], r.load[1])
	fmt.Fprintf(w, "reproduce: %s\n\n", o.command())
	var t carryTable
	p0, v, s := latency(r.without)
	t.row("first invocation: cold start, no carried cache", v, s, strconv.Itoa(len(r.without)), "1.00x")
	p1, v, s := latency(r.with)
	cacheMark := t.note(fmt.Sprintf("the compile cache version 1's instance left after its 2 warm-ups (GetArtifact %s: %.1f MB, %d files), baked into version 2's image (nodejs.PrepareTask CompileCache)",
		guest.ArtifactNodeCompileCache, float64(r.cacheBytes)/1e6, r.cacheFiles))
	t.row("first invocation: cold start, carried compile cache "+cacheMark, v, s, strconv.Itoa(len(r.with)), fmt.Sprintf("%.2fx", float64(p1)/float64(p0)))
	mark := t.note("snapshot rows not measured: " + r.vmWhy)
	t.row("first invocation: restored, plain snapshot", "n/a "+mark, "", "", "")
	t.row("first invocation: restored, warm snapshot", "n/a "+mark, "", "", "")
	t.notes = append(t.notes, "each run a new tenant (a new sandbox, no warm-ups), the two versions taking turns; start+run are kindlingd's phases (start includes node loading the module tree), wall the client's Invoke call; p50, spread min–max")
	t.notes = append(t.notes, "the process backend runs every sandbox of an image from one extracted root, compile cache directory included, which each sandbox's node writes to; "+
		"before each run that directory is put back as a fresh microVM would have it: empty for version 1, for version 2 the carried cache as its first, untimed sandbox adopted it for this root "+
		"(Node 22 keys entries by absolute path; the runtime client re-keys them once; under a microVM every version runs at / and none is needed)")
	t.print(w)
}
