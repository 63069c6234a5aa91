package launch

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/jail"
)

func buildVMM(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("skipping: no /dev/kvm (%v)", err)
	}
	bin := filepath.Join(t.TempDir(), BinaryName)
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kindlingvm/kindling/cmd/kindling-vmm").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// A detached VMM has a session of its own and writes its output to files
// in its directory; the Process works as for an attached one.
func TestDetach(t *testing.T) {
	bin := buildVMM(t)
	ctx := context.Background()
	if _, err := Start(ctx, vmm.Config{MemoryMiB: 16, VCPUs: 1}, Options{Binary: bin, Detach: true}); err == nil || !strings.Contains(err.Error(), "needs a Dir") {
		t.Errorf("detached without a Dir: %v", err)
	}

	dir := t.TempDir()
	p, err := Start(ctx, vmm.Config{MemoryMiB: 16, VCPUs: 1, Console: "none"}, Options{Binary: bin, Dir: dir, ID: "detached", Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Cmd.Process.Pid
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("session %d %v, want its own (%d)", sid, err, pid)
	}
	if pgid, _ := unix.Getpgid(pid); pgid != pid {
		t.Errorf("process group %d", pgid)
	}
	for fd, want := range map[int]string{0: os.DevNull, 1: filepath.Join(dir, DetachedStdout), 2: filepath.Join(dir, DetachedStderr)} {
		if got, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", strconv.Itoa(fd))); err != nil || got != want {
			t.Errorf("fd %d: %s %v, want %s", fd, got, err, want)
		}
	}
	if st, err := p.Client.Status(ctx); err != nil || st.State != vmm.StateCreated {
		t.Fatalf("status %v %v", st.State, err)
	}
	if _, err := p.Client.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the VMM did not exit after a stop")
	}
	if code := p.Wait(); code != 0 {
		t.Errorf("exit %d", code)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the caller's Dir was removed: %v", err)
	}
}

// A detached VMM that fails at once is reported by its own message, read
// from its log file: this run's, not an earlier one's.
func TestDetachReportsTheVMMError(t *testing.T) {
	bin := buildVMM(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, DetachedStderr), []byte("kindling-vmm: an earlier run's complaint\n"), 0o600)
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("not a kernel at all"), 0o644)
	_, err := Start(context.Background(), vmm.Config{Kernel: kernel, MemoryMiB: 16, VCPUs: 1, Console: "none"}, Options{Binary: bin, Dir: dir, Detach: true, Start: true})
	if err == nil || !strings.Contains(err.Error(), "kernel "+kernel) || strings.Contains(err.Error(), "earlier") {
		t.Fatalf("got %v, want the VMM's complaint about %s", err, kernel)
	}
	log, _ := os.ReadFile(filepath.Join(dir, DetachedStderr))
	if !strings.Contains(string(log), "earlier run") || !strings.Contains(string(log), kernel) {
		t.Errorf("log %q: want both runs", log)
	}
}

// A jailed VMM: the jail's command runs detached (its own session, PID 1
// of its PID namespace), under seccomp, with its API at Dir/run/api.sock;
// a jailer that fails before the exec is reported by its status file; a
// file the VMM writes must be under the jail's /run.
func TestJailed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: jails need root")
	}
	bin := buildVMM(t)
	jailer := filepath.Join(t.TempDir(), jail.JailerName)
	cmd := exec.Command("go", "build", "-o", jailer, "github.com/kindlingvm/kindling/cmd/kindling-jailer")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// buildVMM's binary may be dynamically linked; the jail needs static.
	static := exec.Command("go", "build", "-o", bin, "github.com/kindlingvm/kindling/cmd/kindling-vmm")
	static.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := static.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx := context.Background()
	spec := func(id string) *jail.Spec {
		return &jail.Spec{ID: id, UID: jail.UniqueID(id), GID: jail.UniqueID(id), Devices: []string{"/dev/kvm"}}
	}
	newDir := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "jail")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := jail.Clean(dir); err != nil {
				t.Error(err)
			}
		})
		return dir
	}

	dir := newDir(t)
	p, err := Start(ctx, vmm.Config{MemoryMiB: 16, VCPUs: 1, Console: "none", Vsock: &vmm.Vsock{GuestCID: 3, Path: filepath.Join(dir, "run", "vsock")}},
		Options{Binary: bin, Jailer: jailer, Dir: dir, ID: "launch-jailed", Detach: true, Seccomp: true, Jail: spec("launch-jailed")})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Cmd.Process.Pid
	if p.Sock != filepath.Join(dir, "run", "api.sock") {
		t.Errorf("socket %s", p.Sock)
	}
	if sid, _ := unix.Getsid(pid); sid != pid {
		t.Errorf("session %d, want its own", sid)
	}
	status, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	for _, want := range []string{"NSpid:\t" + strconv.Itoa(pid) + "\t1\n", "Seccomp:\t2\n"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("/proc/%d/status lacks %q", pid, want)
		}
	}
	if st, err := p.Client.Status(ctx); err != nil || st.State != vmm.StateCreated {
		t.Fatalf("status %v %v", st.State, err)
	}
	if _, err := p.Client.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if code := p.Wait(); code != 0 {
		t.Errorf("exit %d\n%s", code, readAt(filepath.Join(dir, DetachedStderr), 0, 4096))
	}

	t.Run("setup-fails", func(t *testing.T) {
		s := spec("launch-setup")
		s.Devices = []string{"/dev/kindling-no-such-device"}
		dir := newDir(t)
		_, err := Start(ctx, vmm.Config{MemoryMiB: 16, VCPUs: 1, Console: "none"}, Options{Binary: bin, Jailer: jailer, Dir: dir, Detach: true, Jail: s})
		var se *jail.SetupError
		if !errors.As(err, &se) || !strings.Contains(se.Step, "device") {
			t.Fatalf("got %v, want the jailer's setup error at the device step", err)
		}
		t.Logf("%v", err)
	})
	t.Run("outside-run", func(t *testing.T) {
		dir := newDir(t)
		_, err := Start(ctx, vmm.Config{MemoryMiB: 16, VCPUs: 1, Console: "none", Vsock: &vmm.Vsock{GuestCID: 3, Path: filepath.Join(dir, "vsock")}},
			Options{Binary: bin, Jailer: jailer, Dir: dir, Detach: true, Jail: spec("launch-outside")})
		if err == nil || !strings.Contains(err.Error(), "the jail's /run") {
			t.Fatalf("got %v", err)
		}
	})
}
