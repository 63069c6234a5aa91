package main

// kindling-bench --invoke: warm invocations through kindlingd against the
// same aws-lambda-go handler called directly over HTTP, the floor. Both
// run on this host in one run; kindlingd runs its process backend, the
// one every Linux host has (microVM invocations need guest user space,
// which ../shared/HOST.md's hosts cannot run).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/syncbuf"
	"github.com/kindlingvm/kindling/internal/testdaemon"
)

// invokeTargetAdded is the target for the p50 latency kindlingd
// adds to a warm invocation over calling the handler directly.
const invokeTargetAdded = time.Millisecond

// invokePayload is every measured call's event: the golambda task's echo.
var invokePayload = []byte(`{"op":"echo","text":"x"}`)

// invokeOptions says how much to measure.
type invokeOptions struct {
	// N sequential calls per path for the latencies; C concurrent clients
	// calling for Duration per path for the throughput.
	N, C     int
	Duration time.Duration
}

// pathResult is one path's figures: latencies of the sequential calls,
// throughput of the concurrent ones.
type pathResult struct {
	name           string
	p50, p99, mean time.Duration
	perSecond      float64
}

// invokeReport is what invokeBench measured.
type invokeReport struct {
	opts           invokeOptions
	direct, daemon pathResult
}

// invoker makes one call and checks its answer.
type invoker func(ctx context.Context) error

// invokeMain runs the benchmark and prints its table.
func invokeMain(ctx context.Context, w io.Writer, opts invokeOptions) error {
	if opts.N < 1 || opts.C < 1 || opts.Duration <= 0 {
		return fmt.Errorf("--invoke-n and --invoke-c must be at least 1, --invoke-duration positive (got %d, %d, %v)", opts.N, opts.C, opts.Duration)
	}
	if _, err := os.Stat(filepath.Join(testdaemon.ModuleRoot(), "go.mod")); err != nil {
		return errors.New("--invoke builds kindlingd, kindling-init and the test task from source: run it in the kindling repository")
	}
	fmt.Fprintf(w, "building kindlingd, kindling-init and the aws-lambda-go test task (go build)...\n")
	r, err := invokeBench(ctx, opts)
	if err != nil {
		return err
	}
	r.print(w)
	return nil
}

// invokeBench builds the binaries, starts kindlingd (process backend) and
// the task as a plain HTTP server, and measures both paths. It removes
// everything it started and made before it returns.
func invokeBench(ctx context.Context, opts invokeOptions) (*invokeReport, error) {
	buildDir, err := os.MkdirTemp("", "kindling-bench-invoke-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(buildDir)
	bins, err := testdaemon.Build(buildDir)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	// Short: the state dir holds kindlingd's Unix socket (108 bytes).
	stateDir, err := os.MkdirTemp("", "kb-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stateDir)
	d, err := testdaemon.Start(bins, stateDir, nil)
	if err != nil {
		return nil, fmt.Errorf("start kindlingd: %w", err)
	}
	defer func() {
		if _, err := d.Terminate(30 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "kindling-bench: %v\n", err)
		}
		testdaemon.KillSandboxes(stateDir)
	}()
	daemon, err := daemonInvoker(ctx, d, bins, opts)
	if err != nil {
		return nil, fmt.Errorf("%w\nkindlingd's log:\n%s", err, d.Log)
	}
	direct, stop, err := directInvoker(ctx, bins.Task, opts.C)
	if err != nil {
		return nil, err
	}
	defer stop()

	r := &invokeReport{opts: opts, direct: pathResult{name: "direct HTTP (floor)"}, daemon: pathResult{name: "kindlingd Invoke (gRPC, process backend)"}}
	paths := []struct {
		res  *pathResult
		call invoker
	}{{&r.direct, direct}, {&r.daemon, daemon}}
	// Warm up both paths: connections, the handlers' first runs, and every
	// prewarmed instance.
	warm := min(200, max(10, opts.N/10))
	for _, p := range paths {
		if _, err := sequential(ctx, p.call, warm); err != nil {
			return nil, fmt.Errorf("%s: warm-up: %w", p.res.name, err)
		}
		if _, err := concurrent(ctx, p.call, opts.C, 100*time.Millisecond); err != nil {
			return nil, fmt.Errorf("%s: warm-up: %w", p.res.name, err)
		}
	}
	// Latency: the paths take turns, one call each, so drift on the host
	// hits both alike.
	lat := [2][]time.Duration{}
	for range opts.N {
		for i, p := range paths {
			t0 := time.Now()
			if err := p.call(ctx); err != nil {
				return nil, fmt.Errorf("%s: %w", p.res.name, err)
			}
			lat[i] = append(lat[i], time.Since(t0))
		}
	}
	for i, p := range paths {
		p.res.p50, p.res.p99, p.res.mean = percentile(lat[i], 50), percentile(lat[i], 99), mean(lat[i])
	}
	// Throughput: C clients at once for Duration, one path at a time.
	for _, p := range paths {
		rate, err := concurrent(ctx, p.call, opts.C, opts.Duration)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.res.name, err)
		}
		p.res.perSecond = rate
	}
	return r, nil
}

// daemonInvoker registers the task with kindlingd, prewarms one instance
// per client, and returns a call that invokes it and insists that it was
// served warm.
func daemonInvoker(ctx context.Context, d *testdaemon.Daemon, bins *testdaemon.Binaries, opts invokeOptions) (invoker, error) {
	spec := &api.FunctionSpec{Name: "bench", Image: &api.ImageRef{Path: bins.Image, ManifestSha256: bins.ManifestSHA},
		ConcurrencyLimit: uint32(opts.C), QueueLimit: uint32(max(100, 2*opts.C))}
	if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: spec}); err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	p, err := d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "bench", Instances: uint32(opts.C)})
	if err != nil {
		return nil, fmt.Errorf("prewarm %d instances: %w", opts.C, err)
	}
	if len(p.Instances) != opts.C {
		return nil, fmt.Errorf("prewarm started %d instances, want %d", len(p.Instances), opts.C)
	}
	return func(ctx context.Context) error {
		st, err := d.API.Invoke(ctx, &api.InvokeRequest{Function: "bench", Payload: invokePayload})
		if err != nil {
			return err
		}
		for {
			ev, err := st.Recv()
			if err != nil {
				return fmt.Errorf("invoke: %w", err)
			}
			r := ev.GetResult()
			if r == nil {
				continue // the handler's log line
			}
			switch {
			case r.State != api.InvocationState_SUCCEEDED || !bytes.Contains(r.Response, []byte(`"text":"x"`)):
				return fmt.Errorf("invocation %s: %v %s %s", r.InvocationId, r.State, r.ErrorType, r.Response)
			case r.Start != api.StartKind_WARM:
				return fmt.Errorf("invocation %s started %v, not warm: the prewarmed pool did not serve it", r.InvocationId, r.Start)
			}
			return nil
		}
	}, nil
}

// directInvoker starts the task as a host process serving HTTP
// (KINDLING_HTTP_ADDR) and returns a call that POSTs to it over a
// keep-alive connection, and the process's stop.
func directInvoker(ctx context.Context, task string, clients int) (invoker, func(), error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(task)
	cmd.Env = append(os.Environ(), "KINDLING_HTTP_ADDR="+addr)
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr // stdout: /dev/null, the handler's "echo 1" lines
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start the task over HTTP: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() { cmd.Process.Kill(); <-exited }
	// Ready when it accepts a connection.
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return nil, nil, fmt.Errorf("the task over HTTP exited at once: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("the task over HTTP does not listen on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients + 1, DisableCompression: true}}
	url := "http://" + addr + "/"
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(invokePayload))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"text":"x"`)) {
			return fmt.Errorf("POST %s: %s %s", url, resp.Status, body)
		}
		return nil
	}, stop, nil
}

// freeAddr is a loopback address with a port nothing listens on now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// sequential makes n calls one after another and returns their latencies.
func sequential(ctx context.Context, call invoker, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if err := call(ctx); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
	}
	return lat, nil
}

// concurrent has c clients call, each as soon as its last call returned,
// for d, and returns the calls completed per second. The first error
// stops every client.
func concurrent(ctx context.Context, call invoker, c int, d time.Duration) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	t0 := time.Now()
	end := t0.Add(d)
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if err := call(ctx); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(done.Load()) / time.Since(t0).Seconds(), first
}

// percentile is the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := (p*len(s) + 99) / 100 // ceil(p/100 * n)
	return s[max(rank, 1)-1]
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1e3) }

// print writes the table, the added latency against its target, and the
// ratios.
func (r *invokeReport) print(w io.Writer) {
	fmt.Fprintf(w, "\nWarm invocations of the same aws-lambda-go handler (echo), same host, same run: %d sequential calls per path for the\n"+
		"latencies (the paths taking turns), then %d concurrent clients for %v per path for the throughput; %d CPUs\n\n",
		r.opts.N, r.opts.C, r.opts.Duration, runtime.NumCPU())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\tp50\tp99\tmean\treq/s (%d clients)\t\n", r.opts.C)
	for _, p := range []pathResult{r.direct, r.daemon} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f\t\n", p.name, us(p.p50), us(p.p99), us(p.mean), p.perSecond)
	}
	ratio := func(a, b time.Duration) string { return fmt.Sprintf("%.2fx", float64(a)/float64(b)) }
	fmt.Fprintf(tw, "ratio (kindlingd / floor)\t%s\t%s\t%s\t%.2fx\t\n", ratio(r.daemon.p50, r.direct.p50), ratio(r.daemon.p99, r.direct.p99),
		ratio(r.daemon.mean, r.direct.mean), r.daemon.perSecond/r.direct.perSecond)
	tw.Flush()
	added := r.daemon.p50 - r.direct.p50
	verdict := "met"
	if added > invokeTargetAdded {
		verdict = "NOT met"
	}
	fmt.Fprintf(w, "\nadded p50: %s (target ≤ 1 ms: %s); added mean: %s\n", us(added), verdict, us(r.daemon.mean-r.direct.mean))
	fmt.Fprintf(w, "kindlingd serves %.2fx the floor's invocations per second with %d clients\n", r.daemon.perSecond/r.direct.perSecond, r.opts.C)
}
