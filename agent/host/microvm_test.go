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
	"github.com/kindlingvm/kindling/vmm/jail"
	"github.com/kindlingvm/kindling/vmm/seccomp"
)

func buildVMM(t *testing.T, dir string) string {
	t.Helper()
	return buildStatic(t, dir, "kindling-vmm")
}

// buildStatic builds cmd/name into dir, statically: a jail has no shared
// libraries.
func buildStatic(t *testing.T, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", bin, "github.com/kindlingvm/kindling/cmd/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
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
// killed mid-invocation, stop, and boots that fail. It runs jailed (the
// default: each VMM in its own jail, under seccomp) and unjailed.
func TestMicroVMBackendWithStandInAgent(t *testing.T) {
	testhost.RequireKVM(t)
	for _, jailed := range []bool{true, false} {
		name := "jailed"
		if !jailed {
			name = "unjailed"
		}
		t.Run(name, func(t *testing.T) {
			if jailed {
				requireRootForJail(t)
			}
			testMicroVMBackend(t, jailed)
		})
	}
}

func requireRootForJail(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: jails need root (namespaces, mounts, mknod)")
	}
}

// microVMFixture is what the microVM tests share: the binaries, an image
// of the aws-lambda-go task with a kernel that only halts, and sandbox
// specs.
type microVMFixture struct {
	dir, vmm, jailer, init, task, img string
	m                                 *rootfs.Manifest
	n                                 int
}

func newMicroVMFixture(t *testing.T) *microVMFixture {
	t.Helper()
	f := &microVMFixture{dir: t.TempDir()}
	kernel := pvhKernel(t, f.dir, "idle.elf", "1:\thlt\n\tjmp 1b\n")
	f.vmm = buildVMM(t, f.dir)
	f.jailer = buildStatic(t, f.dir, "kindling-jailer")
	f.init = filepath.Join(f.dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", f.init, "github.com/kindlingvm/kindling/cmd/kindling-init").CombinedOutput(); err != nil {
		t.Fatalf("build kindling-init: %v\n%s", err, out)
	}
	var err error
	if f.task, err = testtasks.Build(f.dir, testtasks.GoLambda); err != nil {
		t.Fatal(err)
	}
	f.img = filepath.Join(f.dir, "image")
	if f.m, err = rootfs.BuildImage(rootfs.ImageSpec{Init: f.init, Task: f.task, Kernel: kernel, Codec: rootfs.CodecNone}, f.img); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *microVMFixture) spec(t *testing.T) Spec {
	t.Helper()
	f.n++
	id := fmt.Sprintf("vm-%d", f.n)
	d := filepath.Join(f.dir, "state", id)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return Spec{ID: id, Dir: d, Image: f.img, Manifest: f.m, Function: "fn", MemoryMiB: 32, VCPUs: 1}
}

func (f *microVMFixture) backend(jailed bool) *MicroVMBackend {
	return NewMicroVMBackend(MicroVMOptions{VMM: f.vmm, Jailer: f.jailer, NoJail: !jailed})
}

// procStatusField is a field of /proc/PID/status, its spaces squeezed.
func procStatusField(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return ""
}

func testMicroVMBackend(t *testing.T, jailed bool) {
	f := newMicroVMFixture(t)
	dir, initBin, task := f.dir, f.init, f.task
	newSpec := func() Spec { return f.spec(t) }
	b := f.backend(jailed)
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
	wantAPI := filepath.Join(spec.Dir, "api.sock")
	if jailed {
		wantAPI = filepath.Join(spec.Dir, "run", "api.sock")
	}
	if rec.Backend != BackendMicroVM || rec.Channel != filepath.Join(spec.Dir, "run", "vsock_1024") || rec.APISock != wantAPI || rec.Dir != spec.Dir {
		t.Errorf("record %+v", rec)
	}
	if jailed {
		// Jailed: its own uid, the jails' group, seccomp, no privileges,
		// PID 1 of its own PID namespace.
		uid := fmt.Sprint(jail.UniqueID(spec.ID))
		for k, want := range map[string]string{"Uid": strings.Repeat(uid+" ", 3) + uid, "Gid": strings.Repeat(fmt.Sprint(microVMJailGID)+" ", 3) + fmt.Sprint(microVMJailGID),
			"Seccomp": "2", "NoNewPrivs": "1", "CapEff": "0000000000000000", "NSpid": fmt.Sprintf("%d 1", rec.PID)} {
			if got := procStatusField(t, rec.PID, k); got != want {
				t.Errorf("the jailed VMM's %s: %q, want %q", k, got, want)
			}
		}
		if st, err := os.Stat(rec.Channel); err != nil || st.Sys().(*syscall.Stat_t).Uid != uint32(jail.UniqueID(spec.ID)) {
			t.Errorf("agent socket %v: want it the jail's, for the VMM to connect to", err)
		}
	} else if got := procStatusField(t, rec.PID, "Seccomp"); got != "0" {
		t.Errorf("unjailed VMM's Seccomp %q, want 0", got)
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
	// Root's, readable by the jails' group, for any jail to restore.
	filepath.Walk(snap, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Error(err)
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 0 || int(st.Gid) != microVMJailGID || fi.Mode().Perm()&0o077 != 0o040 && !fi.IsDir() {
			t.Errorf("snapshot file %s: owner %d:%d mode %v", p, st.Uid, st.Gid, fi.Mode())
		}
		return nil
	})
	mustRespond(t, sb, "inv-2", `{"op":"echo","text":"after snapshot"}`, "after snapshot")

	// Reattach with a fresh backend; the VMM is not our child then.
	sb.detach()
	sb2I, err := f.backend(jailed).Reattach(ctx, rec)
	if err != nil {
		t.Fatalf("reattach: %v", err)
	}
	sb2 := sb2I.(*microVMSandbox)
	if sb2.Record() != rec || sb2.jailed != jailed {
		t.Errorf("reattached record %+v, jailed %v", sb2.Record(), sb2.jailed)
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
		want := filepath.Join(bogus, "vmlinux")
		if jailed {
			want = "kernel /kernel" // the path the jailed VMM sees
		}
		if err == nil || !strings.Contains(err.Error(), want) {
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

// TestMicroVMJailedBadEnds: a jailed VMM killed by a seccomp-denied call
// fails its sandbox's start with an error naming seccomp; a jail
// directory a crash left behind is cleaned, never reused, when a sandbox
// starts in it.
func TestMicroVMJailedBadEnds(t *testing.T) {
	testhost.RequireKVM(t)
	requireRootForJail(t)
	f := newMicroVMFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("seccomp-denied", func(t *testing.T) {
		b := NewMicroVMBackend(MicroVMOptions{VMM: f.vmm, Jailer: f.jailer, vmmEnv: []string{seccomp.SelfTestEnv + "=1"}})
		spec := f.spec(t)
		_, err := b.Boot(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), "seccomp denied a call") || !strings.Contains(err.Error(), "signal 31") {
			t.Fatalf("boot of a VMM that makes a denied call: %v; want an error naming seccomp", err)
		}
		t.Logf("boot: %v", err)
		if _, err := os.Stat(agentChannel(spec.Dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("agent socket left: %v", err)
		}
	})

	t.Run("leftover-dir", func(t *testing.T) {
		spec := f.spec(t)
		// What a kindlingd that crashed mid-start leaves: a used jail
		// directory (root/, jail-status, its run/ and files).
		for _, d := range []string{"root", "run"} {
			if err := os.Mkdir(filepath.Join(spec.Dir, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		stale := filepath.Join(spec.Dir, "run", "stale")
		for _, p := range []string{filepath.Join(spec.Dir, jail.StatusName), stale} {
			if err := os.WriteFile(p, []byte(`{"ok":true}`+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		standInAgent(t, f.init, f.task, agentChannel(spec.Dir))
		sb, err := f.backend(true).Boot(ctx, spec)
		if err != nil {
			t.Fatalf("boot in a leftover jail directory: %v", err)
		}
		if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the leftover's file is still there: %v", err)
		}
		mustRespond(t, sb, "inv-1", `{"op":"echo","text":"clean"}`, "clean")
		if err := sb.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(spec.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("dir after stop: %v", err)
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
