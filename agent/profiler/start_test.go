package profiler

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out = append(out, e.Name()+" "+target)
	}
	return out
}

// noChildren fails unless this process has no children left, stopped,
// running or zombie.
func noChildren(t *testing.T) {
	t.Helper()
	var ws unix.WaitStatus
	pid, err := unix.Wait4(-1, &ws, unix.WNOHANG|unix.WALL, nil)
	if !errors.Is(err, unix.ECHILD) {
		t.Errorf("a child is left: wait4 = %d, %v, %v", pid, ws, err)
	}
}

// A Start that fails, before or after the task starts, leaves no
// process and no descriptor behind.
func TestStartFailures(t *testing.T) {
	dir := t.TempDir()
	hog := buildHog(t, dir)
	other := buildHog(t, t.TempDir(), "-ldflags=-w") // another build of it

	noexec := filepath.Join(dir, "noexec")
	if b, err := os.ReadFile(hog); err != nil || os.WriteFile(noexec, b, 0o644) != nil {
		t.Fatal("copy hog", err)
	}
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		cmd     func() *exec.Cmd
		opts    Options
		wantErr string
		started bool // the task ran (and was killed and reaped)
	}{
		{name: "missing", cmd: func() *exec.Cmd { return exec.Command(filepath.Join(dir, "missing")) }, wantErr: "open task binary"},
		{name: "not executable", cmd: func() *exec.Cmd { return exec.Command(noexec) }, wantErr: "permission denied"},
		{name: "not ELF", cmd: func() *exec.Cmd { return exec.Command(script) }, wantErr: "not an ELF"},
		{name: "frequency", cmd: func() *exec.Cmd { return exec.Command(hog) }, opts: Options{Frequency: MaxFrequency + 1}, wantErr: "out of range"},
		{name: "already traced", cmd: func() *exec.Cmd {
			c := exec.Command(hog)
			c.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
			return c
		}, wantErr: "Ptrace is set"},
		{name: "other build", cmd: func() *exec.Cmd { return exec.Command(hog, "-d", "10s") }, opts: Options{Binary: other}, wantErr: "build ID", started: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := openFDs(t)
			cmd := tt.cmd()
			s, err := Start(cmd, tt.opts)
			if err == nil {
				s.Close()
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not say %q", err, tt.wantErr)
			}
			t.Log(err)
			if started := cmd.Process != nil && cmd.ProcessState != nil; started != tt.started {
				t.Errorf("task started and was reaped: %v, want %v", started, tt.started)
			}
			noChildren(t)
			if after := openFDs(t); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("descriptors before: %v\nafter: %v", before, after)
			}
		})
	}
}

// The task's exit status reaches cmd.Wait as if there were no sampler.
func TestWaitStatus(t *testing.T) {
	hog := buildHog(t, t.TempDir())
	cmd := exec.Command(hog, "-bad")
	s, err := Start(cmd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ee *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("Wait = %v, want exit status 2 (a panic)", err)
	}
	if _, _, err := s.Collect(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Collect(); err == nil {
		t.Error("Collect after Close succeeded")
	}
	noChildren(t)
}

// A child process the task forks and execs is sampled and symbolised too.
func TestForkedChild(t *testing.T) {
	hog := buildHog(t, t.TempDir())
	p, _, _ := runHog(t, hog, Options{Frequency: testFrequency}, "-fork", "-d", "700ms")
	spinByPID := make(map[int64]int64)
	for _, s := range p.Sample {
		if leafName(s) == "main.spin" {
			spinByPID[s.NumLabel["pid"][0]] += s.Value[0]
		}
	}
	if len(spinByPID) != 2 {
		t.Errorf("main.spin sampled in processes %v, want the task and its child", spinByPID)
	}
}

// A position-independent build is mapped at a random base; its addresses
// are translated back to the ELF's before lookup.
func TestPIE(t *testing.T) {
	hog := buildHog(t, t.TempDir(), "-buildmode=pie")
	p, _, _ := runHog(t, hog, Options{Frequency: testFrequency}, "-d", "500ms")
	if m := p.Mapping[0]; m.File != hog || m.Start < 0x10000000 {
		t.Errorf("Mapping[0] = %+v, want %s at a PIE base", m, hog)
	}
	flat := make(map[string]int64)
	for _, s := range p.Sample {
		flat[leafName(s)] += s.Value[0]
	}
	if flat["main.spin"] == 0 || flat["main.tableHash"] == 0 {
		t.Errorf("flat samples by function: %v", flat)
	}
}

// Collect while the task runs: each sample is in exactly one profile,
// and the profiles' intervals follow one another.
func TestCollectWhileRunning(t *testing.T) {
	hog := buildHog(t, t.TempDir())
	cmd := exec.Command(hog, "-d", "1200ms")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	s, err := Start(cmd, Options{Frequency: testFrequency})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var total, profiles int64
	var end int64
	collect := func() {
		p, st, err := s.Collect()
		if err != nil {
			t.Fatal(err)
		}
		if p == nil {
			t.Log("an interval without samples")
			end = 0 // no profile covers it
			return
		}
		if err := p.CheckValid(); err != nil {
			t.Fatal(err)
		}
		// Durations are monotonic and times wall-clock: allow them to differ slightly.
		if end != 0 && (p.TimeNanos < end-int64(time.Millisecond) || p.TimeNanos-end > int64(time.Millisecond)) {
			t.Errorf("profile from %d, previous ended %d", p.TimeNanos, end)
		}
		end = p.TimeNanos + p.DurationNanos
		var n int64
		for _, smp := range p.Sample {
			n += smp.Value[0]
		}
		if n != st.Samples {
			t.Errorf("profile has %d samples, stats say %d", n, st.Samples)
		}
		total += n
		profiles++
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for running := true; running; {
		select {
		case err := <-exited:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		case <-tick.C:
		}
		collect()
	}
	want := float64(cmd.ProcessState.UserTime()) / float64(time.Second) * testFrequency
	if float64(total) < 0.8*want || float64(total) > 1.2*want || profiles < 3 {
		t.Errorf("%d samples in %d profiles for %v of user time, want about %.0f", total, profiles, cmd.ProcessState.UserTime(), want)
	}
}

// A dynamically linked, stripped, non-Go executable: its own code, the C
// library's and the vdso are attributed to their mappings.
func TestNonGoTask(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	cmd := exec.Command(sh, "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	s, err := Start(cmd, Options{Frequency: testFrequency})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	p, st, err := s.Collect()
	if err != nil || p == nil {
		t.Fatalf("Collect = %v, %+v, %v", p, st, err)
	}
	files := make(map[string]int64)
	for _, smp := range p.Sample {
		for _, l := range smp.Location {
			if l.Mapping != nil {
				files[l.Mapping.File] += smp.Value[0]
			}
		}
	}
	real, _ := filepath.EvalSymlinks(sh)
	t.Logf("samples by mapping: %v", files)
	if files[p.Mapping[0].File] == 0 || !strings.HasSuffix(p.Mapping[0].File, filepath.Base(real)) && p.Mapping[0].File != sh {
		t.Errorf("Mapping[0] %+v, samples by file %v", p.Mapping[0], files)
	}
}

// The drain loop empties the rings while nobody collects, and at 5 kHz
// (rings sized for it) nothing is lost.
func TestDrainWithoutCollect(t *testing.T) {
	const freq = 4999
	hog := buildHog(t, t.TempDir())
	cmd := exec.Command(hog, "-d", "1s")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	s, err := Start(cmd, Options{Frequency: freq})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	want := float64(cmd.ProcessState.UserTime()) / float64(time.Second) * freq
	time.Sleep(2 * drainInterval)
	s.mu.Lock()
	drained := s.samples
	s.mu.Unlock()
	if float64(drained) < 0.8*want {
		t.Errorf("the drain loop applied %d samples by itself, want about %.0f", drained, want)
	}
	_, st, err := s.Collect()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d samples (%d before Collect), %d lost; %v of user time", st.Samples, drained, st.Lost, cmd.ProcessState.UserTime())
	if st.Lost != 0 || float64(st.Samples) < 0.8*want {
		t.Errorf("%d samples, %d lost, for %v of user time at %d Hz (want about %.0f)", st.Samples, st.Lost, cmd.ProcessState.UserTime(), freq, want)
	}
}

// Options.Binary may be another copy of the build the task runs (here a
// stripped one runs and the original symbolises): its mappings are
// recognised by what the task executed, not by the Binary's path.
func TestBinaryCopy(t *testing.T) {
	dir := t.TempDir()
	hog := buildHog(t, dir)
	run := filepath.Join(t.TempDir(), "stripped")
	b, err := os.ReadFile(hog)
	if err != nil || os.WriteFile(run, b, 0o755) != nil {
		t.Fatal("copy hog:", err)
	}
	if strip, err := exec.LookPath("strip"); err == nil {
		if out, err := exec.Command(strip, run).CombinedOutput(); err != nil {
			t.Fatalf("strip: %v\n%s", err, out)
		}
	}
	p, _, _ := runHog(t, run, Options{Frequency: testFrequency, Binary: hog}, "-d", "300ms")
	if p.Mapping[0].File != hog || !p.Mapping[0].HasInlineFrames {
		t.Errorf("Mapping[0] = %+v, want %s with DWARF", p.Mapping[0], hog)
	}
	flat := make(map[string]int64)
	for _, s := range p.Sample {
		flat[leafName(s)] += s.Value[0]
	}
	if flat["main.step"] == 0 || flat["main.spin"] == 0 {
		t.Errorf("flat samples by function: %v", flat)
	}
}
