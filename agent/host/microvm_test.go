package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/internal/syncbuf"
	"github.com/kindlingvm/kindling/internal/testhost"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api/client"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

func buildVMM(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "kindling-vmm")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kindlingvm/kindling/cmd/kindling-vmm").CombinedOutput(); err != nil {
		t.Fatalf("build kindling-vmm: %v\n%s", err, out)
	}
	return bin
}

// pvhKernel assembles a PVH ELF "kernel" from src.
func pvhKernel(t *testing.T, dir, name, src string) string {
	t.Helper()
	if err := asm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	elf, err := asm.AssembleELF(".code32\n"+src+asm.PVHNote, 0x100000)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, elf, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// standInAgent runs kindling-init as a host process dialing channel: the
// guest agent of a VM whose own guest never runs one (the VM runs a kernel
// that only halts), so that the backend's VMM handling and its agent
// handling meet for real on a host where guest user space cannot run.
func standInAgent(t *testing.T, initBin, task, channel string) {
	t.Helper()
	cmd := exec.Command(initBin, "--task", task, "--channel", "unix:"+channel, "--runtime-addr", "127.0.0.1:0")
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own, so that its task goes with it (and lets go of
	// the output pipe).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("stand-in agent for %s:\n%s", channel, out.String())
		}
	})
}

// TestMicroVMBackendWithStandInAgent drives the microVM backend with real
// kindling-vmm processes running a kernel that only halts, and a
// kindling-init host process standing in for the guest's agent on the
// VMM's vsock socket: boot, invoke, snapshot, restore, reattach, a VMM
// killed mid-invocation, stop, and boots that fail.
func TestMicroVMBackendWithStandInAgent(t *testing.T) {
	testhost.RequireKVM(t)
	dir := t.TempDir()
	kernel := pvhKernel(t, dir, "idle.elf", "1:\thlt\n\tjmp 1b\n")
	vmmBin := buildVMM(t, dir)
	initBin := filepath.Join(dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", initBin, "github.com/kindlingvm/kindling/cmd/kindling-init").CombinedOutput(); err != nil {
		t.Fatalf("build kindling-init: %v\n%s", err, out)
	}
	task, err := testtasks.Build(dir, testtasks.GoLambda)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "image")
	m, err := rootfs.BuildImage(rootfs.ImageSpec{Init: initBin, Task: task, Kernel: kernel, Codec: rootfs.CodecNone}, img)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	newSpec := func() Spec {
		n++
		id := fmt.Sprintf("vm-%d", n)
		d := filepath.Join(dir, "state", id)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return Spec{ID: id, Dir: d, Image: img, Manifest: m, Function: "fn", MemoryMiB: 32, VCPUs: 1}
	}
	b := NewMicroVMBackend(MicroVMOptions{VMM: vmmBin})
	if b.Name() != BackendMicroVM || !b.IsolationGrade() || !b.CanSnapshot() {
		t.Fatal("backend properties")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Boot.
	spec := newSpec()
	standInAgent(t, initBin, task, agentChannel(spec.Dir))
	sbI, err := b.Boot(ctx, spec)
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	sb := sbI.(*microVMSandbox)
	defer sb.Stop(context.Background())
	rec := sb.Record()
	if rec.Backend != BackendMicroVM || rec.Channel != filepath.Join(spec.Dir, "vsock_1024") || rec.APISock != filepath.Join(spec.Dir, "api.sock") || rec.Dir != spec.Dir {
		t.Errorf("record %+v", rec)
	}
	if st, err := procStartTime(rec.PID); err != nil || st != rec.StartTime {
		t.Errorf("start time %d %v, recorded %d", st, err, rec.StartTime)
	}
	if sid, _ := unix.Getsid(rec.PID); sid != rec.PID {
		t.Errorf("VMM session %d, want its own", sid)
	}
	mustRespond(t, sb, "inv-1", `{"op":"echo","text":"vm"}`, "vm")

	// Snapshot: the VM runs on.
	snap := filepath.Join(dir, "snap")
	if err := sb.Snapshot(ctx, snap); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if st, err := client.New(rec.APISock).Status(ctx); err != nil || st.State != vmm.StateRunning {
		t.Fatalf("after the snapshot: %v %v", st.State, err)
	}
	mustRespond(t, sb, "inv-2", `{"op":"echo","text":"after snapshot"}`, "after snapshot")

	// Reattach with a fresh backend; the VMM is not our child then.
	sb.detach()
	sb2I, err := NewMicroVMBackend(MicroVMOptions{VMM: vmmBin}).Reattach(ctx, rec)
	if err != nil {
		t.Fatalf("reattach: %v", err)
	}
	sb2 := sb2I.(*microVMSandbox)
	if sb2.Record() != rec {
		t.Errorf("reattached record %+v", sb2.Record())
	}
	mustRespond(t, sb2, "inv-3", `{"op":"echo","text":"reattached"}`, "reattached")

	// Restore the snapshot in a new sandbox.
	rspec := newSpec()
	standInAgent(t, initBin, task, agentChannel(rspec.Dir))
	rsbI, err := b.Restore(ctx, rspec, snap)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	rsb := rsbI.(*microVMSandbox)
	defer rsb.Stop(context.Background())
	if rsb.Record().Channel != agentChannel(rspec.Dir) || rsb.Record().PID == rec.PID {
		t.Errorf("restored record %+v", rsb.Record())
	}
	mustRespond(t, rsb, "inv-4", `{"op":"echo","text":"restored"}`, "restored")

	// The restored VM's VMM killed mid-invocation.
	go func() {
		time.Sleep(300 * time.Millisecond)
		syscall.Kill(rsb.Record().PID, syscall.SIGKILL)
	}()
	_, _, err = invoke(t, rsb, "inv-doomed", `{"op":"sleep","ms":5000}`, 10*time.Second)
	if !errors.Is(err, ErrSandboxCrashed) || !strings.Contains(err.Error(), "crashed during invocation inv-doomed: vmm killed by signal 9") {
		t.Fatalf("VMM killed: %v", err)
	}
	<-rsb.Exited()

	// Stop through the API: the VM's own exit reason is reported.
	if err := sb2.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if r := sb2.ExitReason(); !strings.Contains(r, "vm stopped: host-stop") || !strings.Contains(r, "vmm exited") {
		t.Errorf("exit reason %q", r)
	}
	if _, err := os.Stat(spec.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir after stop: %v", err)
	}
	if !waitGone(rec.PID, rec.StartTime, 5*time.Second) {
		t.Error("the VMM runs on after Stop")
	}
	if _, err := b.Reattach(ctx, rec); !errors.Is(err, ErrSandboxGone) {
		t.Errorf("reattach after stop: %v", err)
	}

	// Guests that stop before their agent connects: the boot fails,
	// saying how the VM ended.
	for _, c := range []struct {
		name, src, want string
	}{
		{"guest-resets", "mov $0xfe, %al\n\tout %al, $0x64\n1:\thlt\n\tjmp 1b\n", "vmm exited with status 0"},
		{"guest-faults", "lidt idt0\n\tud2\nidt0:\t.word 0\n\t.long 0\n", "vm stopped: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := pvhKernel(t, dir, c.name+".elf", c.src)
			kimg := filepath.Join(dir, c.name)
			km, err := rootfs.BuildImage(rootfs.ImageSpec{Init: initBin, Task: task, Kernel: k, Codec: rootfs.CodecNone}, kimg)
			if err != nil {
				t.Fatal(err)
			}
			spec := newSpec()
			spec.Image, spec.Manifest = kimg, km
			_, err = b.Boot(ctx, spec)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "before its guest agent connected") {
				t.Fatalf("boot: %v; want %q", err, c.want)
			}
			t.Logf("boot: %v", err)
			if _, err := os.Stat(agentChannel(spec.Dir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("agent socket left: %v", err)
			}
		})
	}

	t.Run("bogus-kernel", func(t *testing.T) {
		bogus := filepath.Join(dir, "bogus-image")
		notKernel := filepath.Join(dir, "not-a-kernel")
		os.WriteFile(notKernel, []byte("these are not the kernels you are looking for\n"), 0o644)
		bm, err := rootfs.BuildImage(rootfs.ImageSpec{Init: initBin, Task: task, Kernel: notKernel, Codec: rootfs.CodecNone}, bogus)
		if err != nil {
			t.Fatal(err)
		}
		spec := newSpec()
		spec.Image, spec.Manifest = bogus, bm
		_, err = b.Boot(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), filepath.Join(bogus, "vmlinux")) {
			t.Fatalf("boot of a bogus kernel: %v", err)
		}
		t.Logf("the VMM said: %v", err)
		if log, _ := os.ReadFile(filepath.Join(spec.Dir, "vmm.log")); len(log) == 0 {
			t.Error("the detached VMM's stderr went nowhere")
		}
		if _, err := os.Stat(agentChannel(spec.Dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("agent socket left: %v", err)
		}
	})
}

func TestMicroVMReattachGone(t *testing.T) {
	b := NewMicroVMBackend(MicroVMOptions{})
	ctx := context.Background()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rec := Record{ID: "vm-x", Backend: BackendMicroVM, PID: dead.Process.Pid, StartTime: 1, Dir: dir, Channel: agentChannel(dir), APISock: filepath.Join(dir, "api.sock")}
	if _, err := b.Reattach(ctx, rec); !errors.Is(err, ErrSandboxGone) {
		t.Errorf("dead PID: %v", err)
	}
	// A live process that is not a VMM answering on the socket is not
	// reattached, and is stopped.
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	go cmd.Wait()
	rec.PID = cmd.Process.Pid
	rec.StartTime, _ = procStartTime(rec.PID)
	_, err := b.Reattach(ctx, rec)
	if err == nil || errors.Is(err, ErrSandboxGone) || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("reattach to a process without a VMM API: %v", err)
	}
	if !waitGone(rec.PID, rec.StartTime, 5*time.Second) {
		t.Error("the process runs on")
	}
	rec.Backend = BackendProcess
	if _, err := b.Reattach(ctx, rec); err == nil {
		t.Error("reattached a process sandbox's record")
	}
}

// TestMicroVMBackendRealGuest boots a real task image (its kernel built
// for it, kindling-init as PID 1) through the microVM backend and invokes
// it. It needs a host where a guest's user space runs.
func TestMicroVMBackendRealGuest(t *testing.T) {
	r, err := hostcheck.Run()
	if err != nil {
		t.Fatal(err)
	}
	if !r.UserSpaceRuns() {
		detail := r.UserSyscalls.Detail
		if !r.KVM.OK {
			detail = r.KVM.Detail
		}
		t.Skipf("skipping: a guest's user space cannot run on this host (%s); TestMicroVMBackendWithStandInAgent covers the backend without it", detail)
	}
	if os.Getenv("KINDLING_LINUX_TEST") == "" {
		t.Skip("skipping: set KINDLING_LINUX_TEST=1 to build the task's kernel (cached) and boot it")
	}
	dir := t.TempDir()
	vmmBin := buildVMM(t, dir)
	initBin := filepath.Join(dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", initBin, "github.com/kindlingvm/kindling/cmd/kindling-init").CombinedOutput(); err != nil {
		t.Fatalf("build kindling-init: %v\n%s", err, out)
	}
	task, err := testtasks.Build(dir, testtasks.GoLambda)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := kernelbuilder.PlanFiles(task, initBin)
	if err != nil {
		t.Fatal(err)
	}
	art, err := kernelbuilder.Build(context.Background(), plan.Spec(false), kernelbuilder.BuildOptions{Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "image")
	m, err := rootfs.BuildImage(rootfs.ImageSpec{Init: initBin, Task: task, Kernel: art.Vmlinux, Cmdline: "console=ttyS0 reboot=k panic=-1"}, img)
	if err != nil {
		t.Fatal(err)
	}
	b := NewMicroVMBackend(MicroVMOptions{VMM: vmmBin})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mk := func(id string) Spec {
		d := filepath.Join(dir, id)
		os.MkdirAll(d, 0o700)
		return Spec{ID: id, Dir: d, Image: img, Manifest: m, Function: "fn", MemoryMiB: 256, VCPUs: 1}
	}
	t0 := time.Now()
	sb, err := b.Boot(ctx, mk("vm-real"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(context.Background())
	t.Logf("booted in %v", time.Since(t0))
	mustRespond(t, sb, "inv-1", `{"op":"echo","text":"from a microVM"}`, "from a microVM")
	snap := filepath.Join(dir, "snap")
	if err := sb.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	rsb, err := b.Restore(ctx, mk("vm-restored"), snap)
	if err != nil {
		t.Fatal(err)
	}
	defer rsb.Stop(context.Background())
	t.Logf("restored in %v", time.Since(t0))
	mustRespond(t, rsb, "inv-2", `{"op":"echo","text":"restored"}`, "restored")
	fr, _, err := invoke(t, rsb, "inv-exit", `{"op":"exit"}`, 10*time.Second)
	if err != nil || fr.Type != guest.TypeError {
		t.Fatalf("exit: %v %s", err, fr.Type)
	}
	mustRespond(t, rsb, "inv-3", `{"op":"echo","text":"again"}`, "again")
}
