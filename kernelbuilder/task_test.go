package kernelbuilder_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/kernelbuilder"
)

func plan(t *testing.T, names ...string) *kernelbuilder.TaskPlan {
	t.Helper()
	dir := t.TempDir()
	var bins []string
	for _, n := range names {
		bin, err := testtasks.Build(dir, n)
		if err != nil {
			t.Fatal(err)
		}
		bins = append(bins, bin)
	}
	p, err := kernelbuilder.PlanFiles(bins...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPlanFollowsTheAnalysis(t *testing.T) {
	hello, http := plan(t, testtasks.GoHello), plan(t, testtasks.GoHTTP)
	for _, o := range []string{"CONFIG_PVH", "CONFIG_VIRTIO_VSOCKETS", "CONFIG_FUTEX", "CONFIG_EPOLL", "CONFIG_POSIX_TIMERS", "CONFIG_ADVISE_SYSCALLS"} {
		if hello.Why[o] == nil || http.Why[o] == nil {
			t.Errorf("%s missing: hello %v, http %v", o, hello.Why[o], http.Why[o])
		}
	}
	for _, o := range []string{"CONFIG_INET", "CONFIG_IPV6", "CONFIG_UNIX"} {
		if hello.Why[o] != nil {
			t.Errorf("hello world gets %s: %v", o, hello.Why[o])
		}
		if http.Why[o] == nil {
			t.Errorf("HTTP server lacks %s", o)
		}
	}
	// The HTTP server's epoll comes from its syscalls, with the file.
	if w := strings.Join(http.Why["CONFIG_EPOLL"], "; "); !strings.Contains(w, "syscall epoll_create1 (fs/eventpoll.c)") {
		t.Errorf("CONFIG_EPOLL because %q", w)
	}
	out := http.Explain()
	for _, want := range []string{"CONFIG_INET=y\n    <- socket family AF_INET", "CONFIG_EPOLL=y\n    <- syscalls ", "CONFIG_PVH=y\n    <- VM essential"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
}

// TestPlansSurviveOlddefconfig resolves each task's plan against the real
// Kconfig of the installed source (tinyconfig + options + olddefconfig, no
// build): every requested option must be in the result.
func TestPlansSurviveOlddefconfig(t *testing.T) {
	if _, err := kernelbuilder.FindSource(); err != nil {
		if os.Getenv("KINDLING_LINUX_TEST") != "" {
			t.Fatal(err)
		}
		t.Skipf("skipping: %v", err)
	}
	for _, names := range [][]string{{testtasks.GoHello}, {testtasks.GoHTTP}, {testtasks.CSockets}, {testtasks.GoEpoll, testtasks.CStatic}} {
		t.Run(strings.Join(names, "+"), func(t *testing.T) {
			p := plan(t, names...)
			cfg, err := kernelbuilder.Configure(context.Background(), p.Spec(false), kernelbuilder.BuildOptions{})
			if err != nil {
				t.Fatal(err)
			}
			y := 0
			for _, v := range cfg {
				if v == "y" {
					y++
				}
			}
			t.Logf("%d options requested, %d =y after olddefconfig", len(p.Why), y)
		})
	}
}

func TestConfigureNamesTheDependency(t *testing.T) {
	if _, err := kernelbuilder.FindSource(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	// IPv6 needs INET, which tinyconfig leaves off.
	spec := kernelbuilder.Spec{Options: []kernelbuilder.Option{{Name: "CONFIG_IPV6", Value: "y"}}}
	_, err := kernelbuilder.Configure(context.Background(), spec, kernelbuilder.BuildOptions{})
	if err == nil || !strings.Contains(err.Error(), "CONFIG_IPV6=y") || !strings.Contains(err.Error(), "inside `if INET`") {
		t.Fatalf("error %v; want it to name CONFIG_IPV6 and its dependency", err)
	}
	t.Log(err)
}

// TestPlanProfiling: profiling asks for perf events with its reason, and
// a plan without it does not (so the two are separate cache entries).
// Whether the kernel then has them is the next test's business.
func TestPlanProfiling(t *testing.T) {
	p := plan(t, testtasks.GoLambda)
	const perf = "CONFIG_PERF_EVENTS"
	if w := p.Why[perf]; w != nil {
		t.Fatalf("a plan without profiling asks for %s: %v", perf, w)
	}
	before := p.Spec(false)
	p.EnableProfiling()
	want := "profiling on: the guest agent samples the task with perf_event_open"
	if w := p.Why[perf]; len(w) != 1 || w[0] != want {
		t.Errorf("%s because %q; want %q", perf, w, want)
	}
	after := p.Spec(false)
	if len(after.Options) != len(before.Options)+1 || !slices.Contains(after.Options, kernelbuilder.Option{Name: perf, Value: "y"}) {
		t.Errorf("profiling spec has %d options, the plain one %d", len(after.Options), len(before.Options))
	}
	if out := p.Explain(); !strings.Contains(out, perf+"=y\n    <- "+want) {
		t.Errorf("explain lacks the reason:\n%s", out)
	}
	if got := kernelbuilder.ProfilingOptions(); len(got) != 1 || got[0].Name != perf {
		t.Errorf("ProfilingOptions %v", got)
	}
}

// TestProfilingKernelConfig resolves a profiling plan against the real
// Kconfig (no build): perf events survive olddefconfig, with the user
// stack dump and register sampling the sampler uses. (A plan without
// profiling gets CONFIG_PERF_EVENTS=y too: arch/x86/Kconfig's config X86
// selects it.)
func TestProfilingKernelConfig(t *testing.T) {
	if _, err := kernelbuilder.FindSource(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	p := plan(t, testtasks.GoLambda)
	p.EnableProfiling()
	cfg, err := kernelbuilder.Configure(context.Background(), p.Spec(false), kernelbuilder.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"CONFIG_PERF_EVENTS", "CONFIG_HAVE_PERF_USER_STACK_DUMP", "CONFIG_HAVE_PERF_REGS"} {
		if cfg[o] != "y" {
			t.Errorf("profiling kernel: %s=%q", o, cfg[o])
		}
	}
	t.Logf("CONFIG_HZ=%s, CONFIG_HIGH_RES_TIMERS=%q: cpu-clock samples are timed by the tick", cfg["CONFIG_HZ"], cfg["CONFIG_HIGH_RES_TIMERS"])
}
