package jail

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/internal/testhost"
	"github.com/kindlingvm/kindling/snapshot"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api/client"
	"github.com/kindlingvm/kindling/vmm/seccomp"
)

// vmmJail is a kindling-vmm jail: the VMM and what it reads bound in,
// /dev/kvm made inside, its API socket at /run/api.sock.
func vmmJail(t *testing.T, id string, files []Bind, args ...string) Spec {
	t.Helper()
	id = "t-" + id
	return Spec{
		ID: id, Dir: jailDir(t), UID: UniqueID(id), GID: UniqueID(id),
		ReadOnly: append(append([]Bind{{Source: binary(t, "github.com/kindlingvm/kindling/cmd/kindling-vmm"), Target: "/kindling-vmm"}}, KVMModuleBinds()...), files...),
		Devices:  []string{"/dev/kvm"},
		Proc:     true, // for the working set (/proc/self/pagemap)
		Argv:     append([]string{"/kindling-vmm", "--api-sock", "/run/api.sock", "--id", id, "--seccomp"}, args...),
	}
}

// api waits for the jailed VMM's API, reached from the host at
// Dir/run/api.sock.
func (r *jailRun) api(t *testing.T, s Spec) *client.Client {
	t.Helper()
	c := client.New(filepath.Join(s.Dir, RunName, "api.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- c.WaitReady(ctx) }()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%v\nstderr: %s", err, &r.stderr)
		}
	case <-r.done:
		t.Fatalf("the jailed VMM ended: %s\nstderr: %s", seccomp.Describe(r.cmd.ProcessState), &r.stderr)
	}
	return c
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		out[k] = strings.Join(strings.Fields(v), " ")
	}
	return out
}

// kindling-vmm in a jail, with its seccomp filter: it boots the tiny
// kernel from files bound in read-only, using a /dev/kvm made inside; the
// host reaches its API socket at Dir/run/api.sock; it pauses, snapshots
// into its /run (the host's Dir/run), resumes and stops. Then the snapshot
// restores in a second jail (bound in read-only, with prefetch) and
// records its working set (through the jail's /proc). A denied call in a
// jailed VMM kills it with SIGSYS, which its starter sees.
func TestVMMInJail(t *testing.T) {
	requireRoot(t)
	testhost.RequireKVM(t)
	if err := asm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	files := t.TempDir()
	kernel := filepath.Join(files, "halt.elf")
	cfgPath := filepath.Join(files, "vm.json")
	cfg, _ := json.Marshal(vmm.Config{Kernel: "/boot/halt.elf", MemoryMiB: 32, VCPUs: 2, Console: "/run/console.log",
		Vsock: &vmm.Vsock{GuestCID: 3, Path: "/run/vsock"}})
	// Readable by the jail's uid: it reads them through the binds.
	if err := asm.WriteHaltKernel(kernel); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	boot := []Bind{{Source: kernel, Target: "/boot/halt.elf"}, {Source: cfgPath, Target: "/vm.json"}}
	ctx := context.Background()

	s := vmmJail(t, "vmm", boot, "--config", "/vm.json", "--start")
	r := start(t, s)
	api := r.api(t, s)
	t.Logf("jailed VMM's API up in %v", r.startedSince())
	step := func(name string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\nstderr: %s", name, err, &r.stderr)
		}
	}
	st, err := api.Status(ctx)
	step("status", err)
	if st.State != vmm.StateRunning {
		t.Fatalf("state %s", st.State)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b, _ := os.ReadFile(filepath.Join(s.Dir, RunName, "console.log")); string(b) != "K"; b, _ = os.ReadFile(filepath.Join(s.Dir, RunName, "console.log")) {
		if time.Now().After(deadline) {
			t.Fatalf("console %q: the guest did not run", b)
		}
		time.Sleep(5 * time.Millisecond)
	}
	id := strconv.Itoa(UniqueID(s.ID))
	ps := procStatus(t, r.cmd.Process.Pid)
	for k, want := range map[string]string{"Uid": strings.Repeat(id+" ", 3) + id, "Seccomp": "2", "NoNewPrivs": "1", "CapEff": "0000000000000000"} {
		if ps[k] != want {
			t.Errorf("the jailed VMM's %s: %q, want %q", k, ps[k], want)
		}
	}
	if sock, err := os.Stat(filepath.Join(s.Dir, RunName, "api.sock")); err != nil || strconv.Itoa(int(statUID(sock))) != id {
		t.Errorf("api.sock: %v, owner %d: want the jail's uid", err, statUID(sock))
	}
	step("pause", api.Pause(ctx))
	_, err = api.Snapshot(ctx, "/run/snap")
	step("snapshot", err)
	step("resume", api.Resume(ctx))
	_, err = api.Metrics(ctx)
	step("metrics", err)
	_, err = api.Stop(ctx)
	step("stop", err)
	if ps := r.wait(t); !ps.Success() {
		t.Fatalf("%s\nstderr: %s", seccomp.Describe(ps), &r.stderr)
	}
	snap := filepath.Join(s.Dir, RunName, "snap")
	var state vmm.MachineState
	if err := snapshot.ReadState(snap, &state); err != nil {
		t.Fatalf("the snapshot on the host: %v", err)
	}
	if state.HostKind != vmm.HostKind() {
		t.Errorf("the snapshot cut in the jail says host kind %q; the host is %q", state.HostKind, vmm.HostKind())
	}

	t.Run("restore", func(t *testing.T) {
		// The snapshot's files belong to the jail that wrote them, mode
		// 0600. Kept by the host for other jails to restore, they become
		// root's, readable by a group the restoring jails share.
		shared := UniqueID("t-vm-group")
		err := filepath.Walk(snap, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			mode := os.FileMode(0o640)
			if fi.IsDir() {
				mode = 0o750
			}
			if err := os.Lchown(p, 0, shared); err != nil {
				return err
			}
			return os.Chmod(p, mode)
		})
		if err != nil {
			t.Fatal(err)
		}
		s := vmmJail(t, "restore", []Bind{{Source: snap, Target: "/snap"}},
			"--restore", "/snap", "--prefetch", "--console", "none", "--vsock-path", "/run/vsock")
		s.GID = shared
		r := start(t, s)
		api := r.api(t, s)
		step := func(name string, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v\nstderr: %s", name, err, &r.stderr)
			}
		}
		step("start", api.Start(ctx))
		// The snapshot is read-only in here: the working set goes to /run.
		_, err = api.RecordWorkingSet(ctx, "/run")
		step("working set", err)
		if _, err := snapshot.ReadWorkingSet(filepath.Join(s.Dir, RunName), 32<<20); err != nil {
			t.Errorf("the working set on the host: %v", err)
		}
		_, err = api.Stop(ctx)
		step("stop", err)
		if ps := r.wait(t); !ps.Success() {
			t.Fatalf("%s\nstderr: %s", seccomp.Describe(ps), &r.stderr)
		}
	})

	t.Run("denied call", func(t *testing.T) {
		s := vmmJail(t, "denied", boot, "--config", "/vm.json", "--start")
		s.Env = []string{seccomp.SelfTestEnv + "=1"}
		r := start(t, s)
		ps := r.wait(t)
		if !seccomp.Killed(ps) {
			t.Fatalf("%s, want SIGSYS\nstderr: %s", seccomp.Describe(ps), &r.stderr)
		}
		t.Logf("the caller sees: %s", seccomp.Describe(ps))
		if err := ReadStatus(s.Dir); err != nil {
			t.Errorf("the jailer's status: %v (it did exec the VMM)", err)
		}
	})
}

func statUID(fi os.FileInfo) uint32 {
	if fi == nil {
		return 0
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}
