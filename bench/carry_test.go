package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestCarryGoRows runs a tiny kindling-bench --carry --carry-no-node end
// to end through a real kindlingd (process backend): 2 cold starts, 100
// invocations of version 1 for its profile (the agent ships one every
// 100), the -pgo rebuild, 2 rounds of 10 invocations per version; then
// the table. About 40 s with a warm Go build cache (the -pgo build
// compiles the handler and its dependencies afresh).
func TestCarryGoRows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	o := carryOptions{Cold: 2, ProfileN: 100, Rounds: 2, Batch: 10, Modules: 1, NoNode: true}
	var progress bytes.Buffer
	env, stop, err := startCarryEnv(ctx, &progress)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	r, err := goCarry(ctx, env, o)
	if err != nil {
		t.Fatalf("%v\n%s", withLog(err, env.d), progress.String())
	}
	if len(r.cold) != o.Cold {
		t.Errorf("%d cold starts, want %d", len(r.cold), o.Cold)
	}
	for _, f := range r.cold {
		if f.start <= 0 || f.run <= 0 || f.wall < f.run {
			t.Errorf("implausible first invocation %+v", f)
		}
	}
	if !env.vm.ok && (r.vmWhy == "" || len(r.plain) != 0) {
		t.Errorf("no microVM user space here, yet the snapshot rows have %d restores and no reason (%q)", len(r.plain), r.vmWhy)
	}
	if r.profileSamples == 0 || r.profiles == 0 {
		t.Errorf("version 1's profile: %d samples in %d profiles", r.profileSamples, r.profiles)
	}
	for _, p := range []*cpuPeer{r.v1, r.v2, r.off} {
		if len(p.cpu) != o.Rounds || p.totalCalls() != uint64(o.Rounds*o.Batch) || p.perCall() <= time.Millisecond/10 {
			t.Errorf("%s: %d rounds, %d calls, %v CPU per call", p.name, len(p.cpu), p.totalCalls(), p.perCall())
		}
	}
	var out bytes.Buffer
	r.print(&out, o)
	for _, want := range []string{"reproduce: go run ./bench --carry --carry-cold=2 --carry-profile=100 --carry-rounds=2 --carry-batch=10",
		"first invocation: cold start", "restored, plain snapshot", "restored, warm snapshot", "version 2 (-pgo from v1's profile)",
		"v2 / v1: saved", "(target ≥ 2% less: ", "profiler overhead (task CPU, on / off)", "(target ≤ 1%: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q", want)
		}
	}
	t.Logf("\n%s", out.String())
}

func TestCarryCommand(t *testing.T) {
	if got := carryDefaults.command(); !strings.HasSuffix(got, "(or: make bench-carry)") || !strings.HasPrefix(got, "go run ./bench --carry ") {
		t.Errorf("defaults: %q", got)
	}
	o := carryDefaults
	o.NoNode = true
	if got := o.command(); strings.Contains(got, "make bench-carry") || !strings.Contains(got, "--carry-no-node") {
		t.Errorf("--carry-no-node: %q", got)
	}
}
