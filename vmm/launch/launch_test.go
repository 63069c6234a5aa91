package launch

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/vmm"
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
