// Command kindling-bench measures Kindling's VMM against QEMU's microvm
// machine on this host, side by side in one run, and prints a table with
// ratios. Absolute numbers differ between hosts; only the ratios from one
// run mean anything.
//
//	start:  process start to the first guest instruction (the tiny PVH
//	        kernel's first instruction writes to COM1; the clock stops when
//	        that byte reaches the host)
//	RSS:    resident memory of the VMM process beyond the guest RAM mapping
//
// With --kernels it compares per-task kernels instead, with --invoke
// warm invocations through kindlingd against the same handler called
// directly over HTTP (invoke.go), and with --restore-daemon restores to
// first response through kindlingd against QEMU -incoming
// (restoredaemon.go).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kindlingvm/kindling/vmm/launch"
)

func main() {
	runs := flag.Int("runs", 20, "start-ups per VMM")
	memMiB := flag.Uint64("mem", 256, "guest memory in MiB")
	vmmBin := flag.String("vmm", "", "kindling-vmm binary (default: next to this program, then $PATH)")
	qemuBin := flag.String("qemu", "qemu-system-x86_64", "QEMU binary")
	restoreRuns := flag.Int("restore-runs", 10, "restores per guest size and VMM (0 skips the restore table)")
	kernels := flag.Bool("kernels", false, "instead: build (cached) and compare per-task kernels for three tasks")
	invoke := flag.Bool("invoke", false, "instead: warm invocations through kindlingd (process backend) against the handler called over HTTP")
	invokeN := flag.Int("invoke-n", 2000, "with --invoke: sequential calls per path, and calls in the throughput run")
	invokeC := flag.Int("invoke-c", 8, "with --invoke: concurrent clients in the throughput run (and instances prewarmed)")
	invokeD := flag.Duration("invoke-duration", 3*time.Second, "with --invoke: how long each path's throughput run lasts")
	restoreDaemon := flag.Bool("restore-daemon", false, "instead: restore to first response through kindlingd (echo guest, jailed microVMs) against QEMU -incoming")
	daemonRuns := flag.Int("daemon-runs", 50, "with --restore-daemon: measured restores per guest size and prefetch setting")
	rateN := flag.Int("rate-n", 100, "with --restore-daemon: restores in the restores-per-second run")
	rateC := flag.Int("rate-c", 4, "with --restore-daemon: restores at once in that run")
	carry := flag.Bool("carry", false, "instead: what one version hands the next, through kindlingd: first-invocation latency (cold, restored from a plain or a warm snapshot), CPU per invocation before and after a profile-guided rebuild and with profiling off (Go handler), first invocation without and with a carried compile cache (Node handler)")
	carryCold := flag.Int("carry-cold", carryDefaults.Cold, "with --carry: fresh environments per first-invocation row")
	carryProfile := flag.Int("carry-profile", carryDefaults.ProfileN, "with --carry: invocations of the Go handler's version 1 before its profile builds version 2")
	carryRounds := flag.Int("carry-rounds", carryDefaults.Rounds, "with --carry: interleaved rounds of the CPU rows")
	carryBatch := flag.Int("carry-batch", carryDefaults.Batch, "with --carry: invocations per version per round")
	carryModules := flag.Int("carry-modules", carryDefaults.Modules, "with --carry: modules in the Node handler's tree")
	carryNoNode := flag.Bool("carry-no-node", false, "with --carry: leave out the Node handler (it needs node from the npm registry or its cache)")
	flag.Parse()
	if *carry {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := carryMain(ctx, os.Stdout, carryOptions{Cold: *carryCold, ProfileN: *carryProfile, Rounds: *carryRounds, Batch: *carryBatch, Modules: *carryModules, NoNode: *carryNoNode})
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "kindling-bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if *restoreDaemon {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := restoreDaemonMain(ctx, os.Stdout, restoreDaemonOptions{Runs: *daemonRuns, Sizes: []uint64{128, 512}, RateN: *rateN, RateC: *rateC, QEMU: *qemuBin})
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "kindling-bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if *invoke {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := invokeMain(ctx, os.Stdout, invokeOptions{N: *invokeN, C: *invokeC, Duration: *invokeD})
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "kindling-bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if *kernels {
		if err := kernelTable(os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "kindling-bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*runs, *memMiB, *vmmBin, *qemuBin, *restoreRuns); err != nil {
		fmt.Fprintf(os.Stderr, "kindling-bench: %v\n", err)
		os.Exit(1)
	}
}

// sample is one start-up.
type sample struct {
	start   time.Duration
	rss     uint64 // KiB, whole process
	rssBeyd uint64 // KiB, beyond guest RAM
	private uint64 // KiB, private dirty pages beyond guest RAM
}

type peer struct {
	name string
	cmd  func(dir string, i int) *exec.Cmd
	// guestMapping tells the guest RAM mapping in /proc/PID/smaps.
	guestMapping func(name string, sizeKiB uint64) bool
}

func run(runs int, memMiB uint64, vmmBin, qemuBin string, restoreRuns int) error {
	if vmmBin == "" {
		var err error
		if vmmBin, err = launch.FindBinary(); err != nil {
			return err
		}
	}
	if _, err := exec.LookPath(qemuBin); err != nil {
		return fmt.Errorf("%s not found: install qemu-system-x86 (make setup does)", qemuBin)
	}
	dir, err := os.MkdirTemp("", "kindling-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kernel, err := buildTinyKernel(dir)
	if err != nil {
		return err
	}
	ours := peer{
		name: "kindling-vmm",
		cmd: func(dir string, i int) *exec.Cmd {
			cfg := filepath.Join(dir, "vm.json")
			_ = os.WriteFile(cfg, []byte(fmt.Sprintf(`{"kernel":%q,"memory_mib":%d,"vcpus":1}`, kernel, memMiB)), 0o644)
			return exec.Command(vmmBin, "--config", cfg, "--api-sock", filepath.Join(dir, fmt.Sprintf("api%d.sock", i)), "--start")
		},
		guestMapping: func(name string, _ uint64) bool { return strings.Contains(name, "kindling-guest-ram") },
	}
	qemu := peer{
		name: "qemu microvm",
		cmd: func(dir string, i int) *exec.Cmd {
			return exec.Command(qemuBin, "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
				"-m", strconv.FormatUint(memMiB, 10), "-smp", "1", "-nodefaults", "-no-user-config",
				"-display", "none", "-serial", "stdio", "-kernel", kernel)
		},
		// QEMU's RAM is the one anonymous mapping at least as big as it.
		guestMapping: func(name string, sizeKiB uint64) bool { return sizeKiB >= memMiB<<10 },
	}
	results := map[string][]sample{}
	// Interleave the peers so drift on the host hits both alike.
	for i := 0; i < runs; i++ {
		for _, p := range []peer{ours, qemu} {
			s, err := measure(p, dir, i)
			if err != nil {
				return fmt.Errorf("%s run %d: %w", p.name, i, err)
			}
			results[p.name] = append(results[p.name], s)
		}
	}
	fmt.Printf("Kindling VMM vs QEMU microvm: tiny PVH kernel, %d MiB guest, %d runs each, same host, same run\n\n", memMiB, runs)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "metric\tkindling-vmm\tqemu microvm\tratio (ours/qemu)\t")
	o, q := results[ours.name], results[qemu.name]
	row := func(name string, agg func([]sample, func(sample) float64) float64, f func(sample) float64, unit string) {
		a, b := agg(o, f), agg(q, f)
		fmt.Fprintf(tw, "%s\t%.2f %s\t%.2f %s\t%.3f\t\n", name, a, unit, b, unit, a/b)
	}
	startMS := func(s sample) float64 { return float64(s.start.Microseconds()) / 1000 }
	row("start to first guest instruction, median", median, startMS, "ms")
	row("start to first guest instruction, best", best, startMS, "ms")
	row("RSS beyond guest memory, median", median, func(s sample) float64 { return float64(s.rssBeyd) / 1024 }, "MiB")
	row("private dirty memory beyond guest memory, median", median, func(s sample) float64 { return float64(s.private) / 1024 }, "MiB")
	row("RSS total, median", median, func(s sample) float64 { return float64(s.rss) / 1024 }, "MiB")
	tw.Flush()
	fmt.Println("\ntargets (DESIGN.md): start <= 0.5x QEMU microvm; RSS beyond guest memory <= 5 MiB")
	if restoreRuns == 0 {
		return nil
	}
	loop, err := buildLoopKernel(dir)
	if err != nil {
		return err
	}
	fmt.Printf("\nRestore from a new process to the restored guest's first instruction (first console byte), median of %d runs each\n\n", restoreRuns)
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "guest\tkindling-vmm --restore\twith --prefetch\tqemu -incoming\tratio (ours/qemu)\tratio (prefetch/qemu)\t")
	for _, size := range []uint64{128, 512, 2048} {
		ours, pre, q, err := restoreRow(dir, vmmBin, qemuBin, loop, size, restoreRuns)
		if err != nil {
			return fmt.Errorf("restore %d MiB: %w", size, err)
		}
		a, p, b := medianDur(ours), medianDur(pre), medianDur(q)
		fmt.Fprintf(tw, "%d MiB\t%.2f ms\t%.2f ms\t%.2f ms\t%.3f\t%.3f\t\n", size, ms(a), ms(p), ms(b), ms(a)/ms(b), ms(p)/ms(b))
	}
	tw.Flush()
	fmt.Println("\ntargets (issue 3): ours <= 0.2x QEMU -incoming; < 3 ms for 512 MiB (Firecracker ~8 ms)")
	const rateN, rateConc = 60, 4
	rate, err := restoreRateFor(dir, vmmBin, loop, 128, rateN, rateConc)
	if err != nil {
		return fmt.Errorf("restore rate: %w", err)
	}
	fmt.Printf("\nrestores per second (128 MiB, each a new kindling-vmm to its first guest instruction, %d at a time, %d CPUs): %.0f/s\n",
		rateConc, runtime.NumCPU(), rate)
	fmt.Println("target (DESIGN.md): >= 150/s on bare metal, where Firecracker stands")
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func medianDur(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func best(ss []sample, f func(sample) float64) float64 {
	b := f(ss[0])
	for _, s := range ss[1:] {
		b = min(b, f(s))
	}
	return b
}

func median(ss []sample, f func(sample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

func measure(p peer, dir string, i int) (sample, error) {
	cmd := p.cmd(dir, i)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return sample{}, err
	}
	cmd.Stderr = nil
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return sample{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	first := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := out.Read(b)
		if err == nil && b[0] != 'K' {
			err = fmt.Errorf("first console byte %q, want 'K'", b[0])
		}
		first <- err
	}()
	select {
	case err := <-first:
		if err != nil {
			return sample{}, err
		}
	case <-time.After(30 * time.Second):
		return sample{}, fmt.Errorf("no console output within 30 s")
	}
	s := sample{start: time.Since(t0)}
	// Let the process settle (the guest is halted) before reading RSS.
	time.Sleep(100 * time.Millisecond)
	u, err := rss(cmd.Process.Pid, p.guestMapping)
	if err != nil {
		return sample{}, err
	}
	s.rss, s.rssBeyd, s.private = u.total, u.total-u.guest, u.private
	return s, nil
}

type usage struct{ total, guest, private uint64 }

// rss sums Rss over /proc/PID/smaps, separately over the guest mapping, and
// the private dirty pages outside it: what each extra VM really costs, since
// the binary's clean pages are shared by every VMM process on a host.
func rss(pid int, isGuest func(name string, sizeKiB uint64) bool) (u usage, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return u, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var name string
	var inGuest bool
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") || strings.Contains(fields[0], "-") {
			// A mapping header: "start-end perms offset dev inode [name]".
			name = ""
			if len(fields) >= 6 {
				name = strings.Join(fields[5:], " ")
			}
			inGuest = false
			continue
		}
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "Size:":
			inGuest = isGuest(name, v)
		case "Rss:":
			u.total += v
			if inGuest {
				u.guest += v
			}
		case "Private_Dirty:":
			if !inGuest {
				u.private += v
			}
		}
	}
	return u, sc.Err()
}
