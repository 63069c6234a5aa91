package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/internal/testhost"
	"github.com/kindlingvm/kindling/internal/testnet"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api/client"
	"github.com/kindlingvm/kindling/vmm/seccomp"
)

// fixture builds kindling-vmm as `make build` does (static) and the
// halting kernel into a temp dir.
func fixture(t *testing.T) (bin, kernel string) {
	t.Helper()
	testhost.RequireKVM(t)
	if err := asm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	dir := t.TempDir()
	bin = filepath.Join(dir, "kindling-vmm")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	kernel = filepath.Join(dir, "halt.elf")
	if err := asm.WriteHaltKernel(kernel); err != nil {
		t.Fatal(err)
	}
	return bin, kernel
}

// vmmProc is a kindling-vmm started by a test.
type vmmProc struct {
	cmd    *exec.Cmd
	api    *client.Client
	stderr *bytes.Buffer
	done   chan struct{}
}

// startVMM runs bin with args plus --api-sock in dir and waits for its
// API (or its death, which it returns without failing the test).
func startVMM(t *testing.T, bin, dir string, env []string, args ...string) *vmmProc {
	t.Helper()
	return startVMMWith(t, (*exec.Cmd).Start, bin, dir, env, args...)
}

// startVMMWith is startVMM with start starting the process (in a network
// namespace, say).
func startVMMWith(t *testing.T, start func(*exec.Cmd) error, bin, dir string, env []string, args ...string) *vmmProc {
	t.Helper()
	sock := filepath.Join(dir, "api.sock")
	p := &vmmProc{cmd: exec.Command(bin, append(args, "--api-sock", sock)...), stderr: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.stderr
	if err := start(p.cmd); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	p.api = client.New(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- p.api.WaitReady(ctx) }()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%v\n%s", err, p.stderr)
		}
	case <-p.done:
	}
	return p
}

func (p *vmmProc) wait(t *testing.T) *os.ProcessState {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("kindling-vmm did not exit\n%s", p.stderr)
	}
	return p.cmd.ProcessState
}

func writeConfig(t *testing.T, dir string, cfg vmm.Config) string {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "vm.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func seccompMode(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Seccomp:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Under --seccomp a VMM boots, serves every API call (status, start,
// metrics, pause, full and diff snapshots, resume, a vsock connection,
// stop), restores with prefetch, records a working set, and exits
// cleanly: the allow-list covers what it does.
func TestSeccompVMMServesItsAPI(t *testing.T) {
	bin, kernel := fixture(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, vmm.Config{Kernel: kernel, MemoryMiB: 32, VCPUs: 2, Console: filepath.Join(dir, "console.log"),
		Disks: []vmm.Disk{{Path: disk}}, Vsock: &vmm.Vsock{GuestCID: 3, Path: filepath.Join(dir, "v.sock")}})
	p := startVMM(t, bin, dir, nil, "--config", cfg, "--seccomp")
	if mode := seccompMode(t, p.cmd.Process.Pid); mode != "2" {
		t.Fatalf("Seccomp: %q, want 2 (filter)", mode)
	}
	ctx := context.Background()
	step := func(name string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, p.stderr)
		}
	}
	step("start", p.api.Start(ctx))
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		if string(b) == "K" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console %q: the guest did not run\n%s", b, p.stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, err := p.api.Metrics(ctx)
	step("metrics", err)
	snap, diff := filepath.Join(dir, "snap"), filepath.Join(dir, "diff")
	step("pause", p.api.Pause(ctx))
	_, err = p.api.Snapshot(ctx, snap)
	step("snapshot", err)
	step("resume", p.api.Resume(ctx))
	step("pause", p.api.Pause(ctx))
	_, err = p.api.SnapshotDiff(ctx, diff)
	step("diff snapshot", err)
	step("resume", p.api.Resume(ctx))
	// A host connection to the vsock device.
	c, err := net.Dial("unix", filepath.Join(dir, "v.sock"))
	step("vsock dial", err)
	c.Write([]byte("CONNECT 52\n"))
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	c.Read(make([]byte, 64))
	c.Close()
	st, err := p.api.Status(ctx)
	step("status", err)
	if st.State != vmm.StateRunning {
		t.Fatalf("state %s", st.State)
	}
	st, err = p.api.Stop(ctx)
	step("stop", err)
	if ps := p.wait(t); !ps.Success() {
		t.Fatalf("%s\n%s", seccomp.Describe(ps), p.stderr)
	}

	rdir := t.TempDir()
	r := startVMM(t, bin, rdir, nil, "--restore", snap, "--prefetch", "--seccomp", "--console", "none",
		"--disk", disk, "--vsock-path", filepath.Join(rdir, "v.sock"))
	step = func(name string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("restored: %s: %v\n%s", name, err, r.stderr)
		}
	}
	step("start", r.api.Start(ctx))
	_, err = r.api.RecordWorkingSet(ctx, snap)
	step("working set", err)
	_, err = r.api.Stop(ctx)
	step("stop", err)
	if ps := r.wait(t); !ps.Success() {
		t.Fatalf("restored: %s\n%s", seccomp.Describe(ps), r.stderr)
	}
}

// A denied call (the self-test hook's mount) kills that VMM with SIGSYS,
// and only it: a filtered sibling keeps running, answering, and stops on
// SIGTERM.
func TestSeccompDeniedCallKillsOnlyThatVMM(t *testing.T) {
	bin, kernel := fixture(t)
	sdir, ddir := t.TempDir(), t.TempDir()
	sibling := startVMM(t, bin, sdir, nil, "--config", writeConfig(t, sdir, vmm.Config{Kernel: kernel, MemoryMiB: 16, VCPUs: 1, Console: "none"}),
		"--seccomp", "--start", "--linger", "100ms")

	doomed := startVMM(t, bin, ddir, []string{seccomp.SelfTestEnv + "=1"},
		"--config", writeConfig(t, ddir, vmm.Config{Kernel: kernel, MemoryMiB: 16, VCPUs: 1, Console: "none"}), "--seccomp", "--start")
	ps := doomed.wait(t)
	if !seccomp.Killed(ps) {
		t.Fatalf("%s, want killed by SIGSYS\n%s", seccomp.Describe(ps), doomed.stderr)
	}
	if got, want := seccomp.Describe(ps), "killed by signal 31 (bad system call): seccomp denied a call"; got != want {
		t.Errorf("%q, want %q", got, want)
	}

	ctx := context.Background()
	st, err := sibling.api.Status(ctx)
	if err != nil || st.State != vmm.StateRunning {
		t.Fatalf("sibling: %v %v\n%s", st.State, err, sibling.stderr)
	}
	if err := sibling.api.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sibling.api.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// SIGTERM stops it as the API does (signal handling under the filter).
	if err := sibling.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if ps := sibling.wait(t); !ps.Success() {
		t.Fatalf("sibling: %s\n%s", seccomp.Describe(ps), sibling.stderr)
	}

	// Without --seccomp the hook does nothing: the flag is what arms it.
	odir := t.TempDir()
	off := startVMM(t, bin, odir, []string{seccomp.SelfTestEnv + "=1"},
		"--config", writeConfig(t, odir, vmm.Config{Kernel: kernel, MemoryMiB: 16, VCPUs: 1, Console: "none"}), "--start")
	if mode := seccompMode(t, off.cmd.Process.Pid); mode != "0" {
		t.Errorf("without --seccomp: Seccomp %q", mode)
	}
	if _, err := off.api.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if ps := off.wait(t); !ps.Success() {
		t.Fatalf("without --seccomp: %s\n%s", seccomp.Describe(ps), off.stderr)
	}
}

// A VMM in a network namespace attaches to a tap named by --net, reads the
// host's frames from it under --seccomp through a pause, a snapshot and a
// resume, and a restore moves the interface to another tap with --net.
func TestSeccompVMMWithNetworkInterface(t *testing.T) {
	bin, kernel := fixture(t)
	ns := testnet.New(t)
	ns.AddTap(t, "tap0", "172.16.0.1/30")
	ns.AddTap(t, "tap1", "172.16.1.1/30")
	// Forked from the namespace's thread, the VMM runs in the namespace.
	inNetns := func(c *exec.Cmd) error { return ns.Do(c.Start) }
	ctx := context.Background()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, vmm.Config{Kernel: kernel, MemoryMiB: 16, VCPUs: 1, Console: filepath.Join(dir, "console.log")})

	bad := startVMMWith(t, inNetns, bin, dir, nil, "--config", cfg, "--net", "tap0,ip=172.16.0.2")
	if ps := bad.wait(t); ps.ExitCode() != 2 || !strings.Contains(bad.stderr.String(), `net "tap0,ip=172.16.0.2": want TAP or TAP,mac=MAC`) {
		t.Fatalf("a bad --net: %s\n%s", seccomp.Describe(ps), bad.stderr)
	}
	missing := startVMMWith(t, inNetns, bin, dir, nil, "--config", cfg, "--net", "tap7")
	if ps := missing.wait(t); ps.ExitCode() != 2 || !strings.Contains(missing.stderr.String(), "tap tap7: no such device in this network namespace") {
		t.Fatalf("a missing tap: %s\n%s", seccomp.Describe(ps), missing.stderr)
	}

	p := startVMMWith(t, inNetns, bin, dir, nil, "--config", cfg, "--net", "tap0,mac=06:00:ac:10:00:05", "--seccomp", "--start")
	step := func(name string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, p.stderr)
		}
	}
	// The host ARPs for 172.16.0.2 over tap0; the VMM reads the request
	// and holds it (the guest has no driver).
	waitRead := func(p *vmmProc, tap string, dst string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for ns.ReadFrames(t, tap) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the VMM read nothing from %s\n%s", tap, p.stderr)
			}
			ns.SendUDP(t, netip.MustParseAddr(dst), 9, []byte("hello"))
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitRead(p, "tap0", "172.16.0.2")
	snap := filepath.Join(dir, "snap")
	step("pause", p.api.Pause(ctx))
	_, err := p.api.Snapshot(ctx, snap)
	step("snapshot", err)
	step("resume", p.api.Resume(ctx))
	_, err = p.api.Stop(ctx)
	step("stop", err)
	if ps := p.wait(t); !ps.Success() {
		t.Fatalf("%s\n%s", seccomp.Describe(ps), p.stderr)
	}

	rdir := t.TempDir()
	r := startVMMWith(t, inNetns, bin, rdir, nil, "--restore", snap, "--net", "tap1", "--seccomp", "--console", "none", "--start")
	waitRead(r, "tap1", "172.16.1.2")
	if _, err := r.api.Stop(ctx); err != nil {
		t.Fatalf("restored: stop: %v\n%s", err, r.stderr)
	}
	if ps := r.wait(t); !ps.Success() {
		t.Fatalf("restored: %s\n%s", seccomp.Describe(ps), r.stderr)
	}
}
