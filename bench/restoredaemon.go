package main

// Restore to first response through kindlingd (--restore-daemon): the
// echo guest (internal/echoguest) registered as a function on the
// microVM backend, every measured invocation for a tenant with no idle
// instance, so each is a restore of the function's warm snapshot in a
// new jailed kindling-vmm, then the invocation over vsock. QEMU's microvm
// machine restoring a guest of the same size with -incoming (to its first
// console byte: QEMU has no vsock without vhost here) is measured in the
// same run, so the ratio compares our whole path with QEMU's restore
// alone.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/echoguest"
	"github.com/kindlingvm/kindling/internal/testdaemon"
	"github.com/kindlingvm/kindling/snapshot"
)

type restoreDaemonOptions struct {
	Runs  int      // measured restores per guest size and prefetch setting
	Sizes []uint64 // guest memory sizes, MiB
	RateN int      // restores in the restores-per-second run
	RateC int      // of them at once
	QEMU  string
}

type restoreDaemonRow struct {
	memMiB uint64
	// Client-side Invoke to result, and kindlingd's own start phase, for
	// on-demand restores, with prefetch, and from a standby.
	plain, prefetch, standby                []time.Duration
	plainStart, prefetchStart, standbyStart []time.Duration
	qemu                                    []time.Duration
}

func restoreDaemonMain(ctx context.Context, w io.Writer, opts restoreDaemonOptions) error {
	if opts.Runs < 1 || opts.RateN < 1 || opts.RateC < 1 {
		return fmt.Errorf("--restore-runs, --rate-n and --rate-c must be at least 1")
	}
	if _, err := os.Stat(filepath.Join(testdaemon.ModuleRoot(), "go.mod")); err != nil {
		return errors.New("--restore-daemon builds kindlingd, the VMM, the jailer and the echo guest from source: run it in the kindling repository")
	}
	if _, err := exec.LookPath(opts.QEMU); err != nil {
		return fmt.Errorf("%s: %w (install qemu-system-x86; make setup does)", opts.QEMU, err)
	}
	dir, err := os.MkdirTemp("", "kindling-bench-restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(w, "building kindlingd, kindling-vmm, kindling-jailer and the echo guest...\n")
	bins, err := testdaemon.Build(filepath.Join(dir, "bin"))
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	img, sha, err := echoguest.BuildImage(dir)
	if err != nil {
		return err
	}
	loop, err := buildLoopKernel(dir)
	if err != nil {
		return err
	}
	var rows []restoreDaemonRow
	for _, size := range opts.Sizes {
		row := restoreDaemonRow{memMiB: size}
		for _, m := range []struct {
			name              string
			prefetch, standby bool
			lat, start        *[]time.Duration
		}{
			{"on demand", false, false, &row.plain, &row.plainStart},
			{"on demand, prefetch", true, false, &row.prefetch, &row.prefetchStart},
			{"from a standby, prefetch", true, true, &row.standby, &row.standbyStart},
		} {
			fmt.Fprintf(w, "%d MiB, %s: %d restores through kindlingd...\n", size, m.name, opts.Runs)
			lat, start, err := daemonRestores(ctx, bins, img, sha, size, m.prefetch, m.standby, opts.Runs)
			if err != nil {
				return fmt.Errorf("%d MiB, %s: %w", size, m.name, err)
			}
			*m.lat, *m.start = lat, start
		}
		fmt.Fprintf(w, "%d MiB: %d QEMU -incoming restores...\n", size, opts.Runs)
		sub := filepath.Join(dir, fmt.Sprintf("qemu-%d", size))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		mig, err := qemuMigrationFile(sub, opts.QEMU, loop, size)
		if err != nil {
			return err
		}
		for range opts.Runs {
			d, err := firstByte(exec.Command(opts.QEMU, qemuArgs(loop, size, "-incoming", "exec:cat "+mig)...), 'R')
			if err != nil {
				return fmt.Errorf("qemu -incoming: %w", err)
			}
			row.qemu = append(row.qemu, d)
		}
		rows = append(rows, row)
	}
	fmt.Fprintf(w, "%d MiB: %d restores, %d at a time, through kindlingd...\n", opts.Sizes[0], opts.RateN, opts.RateC)
	rate, err := daemonRestoreRate(ctx, bins, img, sha, opts.Sizes[0], opts.RateN, opts.RateC)
	if err != nil {
		return fmt.Errorf("restore rate: %w", err)
	}

	fmt.Fprintf(w, "\nRestore to first response through kindlingd: Invoke (gRPC over its Unix socket) for a tenant with no idle instance,\n"+
		"so kindlingd checks the warm snapshot's seal and restores it, and the echo guest answers over vsock; timed by the\n"+
		"client until the result arrives. %d restores per row; %d CPUs.\n"+
		"  on demand: a new jailed, seccomp-filtered kindling-vmm restores the snapshot (--standby-restores=0)\n"+
		"  +prefetch: the same, the snapshot's recorded working set loaded before the guest runs\n"+
		"  standby:   a VM restored ahead of need in its jailed VMM, not yet started, is started (--standby-restores=1,\n"+
		"             the default; each call waits, untimed, until the standby is back)\n"+
		"QEMU: qemu-system-x86_64 -M microvm -incoming of a guest of the same size, to its first console byte (restore only:\n"+
		"no API, jail or guest round trip), same run. \"start\" is kindlingd's own start phase (seal check to agent connected).\n\n",
		opts.Runs, runtime.NumCPU())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "guest\tpath\tp50\tp99\tstart p50\tratio p50 / QEMU\t")
	for _, r := range rows {
		q := percentile(r.qemu, 50)
		for _, p := range []struct {
			name       string
			lat, start []time.Duration
		}{{"kindlingd, on demand", r.plain, r.plainStart}, {"kindlingd, on demand +prefetch", r.prefetch, r.prefetchStart},
			{"kindlingd, standby", r.standby, r.standbyStart}} {
			fmt.Fprintf(tw, "%d MiB\t%s\t%s\t%s\t%s\t%.2fx\t\n", r.memMiB, p.name,
				msStr(percentile(p.lat, 50)), msStr(percentile(p.lat, 99)), msStr(percentile(p.start, 50)), float64(percentile(p.lat, 50))/float64(q))
		}
		fmt.Fprintf(tw, "%d MiB\tQEMU -incoming\t%s\t%s\t\t1.00x\t\n", r.memMiB, msStr(q), msStr(percentile(r.qemu, 99)))
	}
	tw.Flush()
	fmt.Fprintf(w, "\nrestores per second through kindlingd (%d MiB, %d restores, %d at a time, each a new jailed VMM answering its invocation): %.0f/s\n",
		opts.Sizes[0], opts.RateN, opts.RateC, rate)
	fmt.Fprintf(w, "targets: ratio <= 0.2x QEMU; p50 < 10 ms on this host; >= 150 restores/s on bare metal\n")
	return nil
}

func msStr(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1e3) }

// benchDaemon starts kindlingd on the microVM backend and registers the
// echo image as "echo" with memMiB of memory; stop kills it and every VM.
func benchDaemon(ctx context.Context, bins *testdaemon.Binaries, img, sha string, memMiB uint64, limit int, args ...string) (*testdaemon.Daemon, func(), error) {
	stateDir, err := os.MkdirTemp("", "kbr-")
	if err != nil {
		return nil, nil, err
	}
	args = append([]string{"--backend", "microvm", "--max-instances", fmt.Sprint(limit + 8)}, args...)
	d, err := testdaemon.Start(bins, stateDir, nil, args...)
	if err != nil {
		os.RemoveAll(stateDir)
		return nil, nil, fmt.Errorf("start kindlingd: %w", err)
	}
	stop := func() {
		d.Kill()
		testdaemon.KillSandboxes(stateDir)
		os.RemoveAll(stateDir)
	}
	_, err = d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "echo", MemoryMib: uint32(memMiB),
		ConcurrencyLimit: uint32(limit), QueueLimit: uint32(limit), TimeoutMs: 10_000, KeepAliveMs: 600_000,
		Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("register: %w", err)
	}
	return d, stop, nil
}

// echoCall invokes the echo function for tenant and checks the answer
// and how the instance started.
func echoCall(ctx context.Context, d *testdaemon.Daemon, tenant string, want api.StartKind) (*api.Invocation, error) {
	r, _, err := d.Invoke(ctx, &api.InvokeRequest{Function: "echo", Tenant: tenant, Payload: []byte(`{"text":"` + tenant + `"}`)})
	switch {
	case err != nil:
		return nil, fmt.Errorf("invoke for %s: %w", tenant, err)
	case r.State != api.InvocationState_SUCCEEDED || !strings.Contains(string(r.Response), tenant):
		return nil, fmt.Errorf("invocation for %s: %v %s %s", tenant, r.State, r.ErrorType, r.Response)
	case want != api.StartKind_START_KIND_UNSPECIFIED && r.Start != want:
		return nil, fmt.Errorf("invocation for %s started %v, want %v", tenant, r.Start, want)
	}
	return r, nil
}

// daemonRestores cuts the warm snapshot (a cold start), restores it once
// so that its working set is recorded, then times n restores, one at a
// time.
func daemonRestores(ctx context.Context, bins *testdaemon.Binaries, img, sha string, memMiB uint64, prefetch, standby bool, n int) (lat, start []time.Duration, err error) {
	standbys := 0
	if standby {
		standbys = 1
	}
	d, stop, err := benchDaemon(ctx, bins, img, sha, memMiB, n+2, fmt.Sprintf("--prefetch=%v", prefetch), fmt.Sprintf("--standby-restores=%d", standbys))
	if err != nil {
		return nil, nil, err
	}
	defer stop()
	fail := func(err error) ([]time.Duration, []time.Duration, error) {
		return nil, nil, fmt.Errorf("%w\nkindlingd's log:\n%s", err, d.Log)
	}
	if _, err := echoCall(ctx, d, "cold", api.StartKind_COLD); err != nil {
		return fail(err)
	}
	if _, err := echoCall(ctx, d, "first-restore", api.StartKind_RESTORE); err != nil {
		return fail(err)
	}
	if prefetch {
		if err := waitWorkingSet(d.StateDir); err != nil {
			return fail(err)
		}
	}
	for i := range n {
		if standby {
			if err := waitStandby(ctx, d); err != nil {
				return fail(err)
			}
		}
		t0 := time.Now()
		r, err := echoCall(ctx, d, fmt.Sprintf("t%d", i), api.StartKind_RESTORE)
		if err != nil {
			return fail(err)
		}
		lat = append(lat, time.Since(t0))
		start = append(start, time.Duration(r.Phases.StartUs)*time.Microsecond)
	}
	return lat, start, nil
}

// waitStandby waits until kindlingd has a standby ready.
func waitStandby(ctx context.Context, d *testdaemon.Daemon) error {
	for range 1000 {
		l, err := d.API.ListInstances(ctx, &api.ListInstancesRequest{Function: "echo"})
		if err != nil {
			return err
		}
		for _, in := range l.Instances {
			if in.State == api.InstanceState_STANDBY {
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return errors.New("no standby restore ready within 5 s")
}

func waitWorkingSet(stateDir string) error {
	pattern := filepath.Join(stateDir, "snapshots", "echo", "*", snapshot.WorkingSetFile)
	for range 500 {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no working set recorded (%s) within 5 s of the first restore", pattern)
}

// daemonRestoreRate runs n invocations for n new tenants, c at a time:
// each is a restore into a new jailed VMM.
func daemonRestoreRate(ctx context.Context, bins *testdaemon.Binaries, img, sha string, memMiB uint64, n, c int) (float64, error) {
	d, stop, err := benchDaemon(ctx, bins, img, sha, memMiB, n+2, "--standby-restores=0")
	if err != nil {
		return 0, err
	}
	defer stop()
	if _, err := echoCall(ctx, d, "cold", api.StartKind_COLD); err != nil {
		return 0, err
	}
	if _, err := echoCall(ctx, d, "first-restore", api.StartKind_RESTORE); err != nil {
		return 0, err
	}
	if err := waitWorkingSet(d.StateDir); err != nil {
		return 0, err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var first error
	var once sync.Once
	t0 := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if _, err := echoCall(ctx, d, fmt.Sprintf("r%d", i), api.StartKind_RESTORE); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return 0, fmt.Errorf("%w\nkindlingd's log:\n%s", first, d.Log)
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}
