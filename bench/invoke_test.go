package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestInvokeBench runs kindling-bench --invoke --invoke-n 50 --invoke-c 2
// (with a short throughput run) end to end: it builds kindlingd and the task (about 10 s uncached),
// measures both paths and prints the table.
func TestInvokeBench(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kindlingd and runs it: not in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts := invokeOptions{N: 50, C: 2, Duration: 300 * time.Millisecond}
	r, err := invokeBench(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []pathResult{r.direct, r.daemon} {
		if p.p50 <= 0 || p.p99 < p.p50 || p.mean <= 0 || p.perSecond <= 0 {
			t.Errorf("%s: implausible figures %+v", p.name, p)
		}
	}
	var out bytes.Buffer
	r.print(&out)
	for _, w := range []string{"direct HTTP (floor)", "kindlingd Invoke (gRPC, process backend)", "ratio (kindlingd / floor)", "req/s (2 clients)", "added p50: ", "(target ≤ 1 ms: "} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("the table lacks %q:\n%s", w, out.String())
		}
	}
	t.Logf("\n%s", out.String())
}

func TestPercentile(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(100-i) * time.Microsecond // unsorted
	}
	for _, c := range []struct {
		p    int
		want time.Duration
	}{{50, 50 * time.Microsecond}, {99, 99 * time.Microsecond}, {100, 100 * time.Microsecond}, {1, time.Microsecond}} {
		if got := percentile(ds, c.p); got != c.want {
			t.Errorf("p%d = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("p99 of one = %v", got)
	}
	if got := mean([]time.Duration{1, 2, 3}); got != 2 {
		t.Errorf("mean = %v", got)
	}
}
