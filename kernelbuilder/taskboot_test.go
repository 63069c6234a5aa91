package kernelbuilder_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/testinit"
	"github.com/kindlingvm/kindling/internal/testlock"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/kernelbuilder/analyze"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHTTPTaskKernelBoots is the end-to-end check: the kernel the
// builder derives for a Go HTTP server (plus the /init that starts it) is
// built (once, cached) and boots in our VMM to the hand-off to /init, with
// the task in the initramfs. Where guest user space runs, /init must also
// print its line. Slow: a kernel build on a cold cache, then a minute or
// more of boot where guest kernel mode is emulated.
func TestHTTPTaskKernelBoots(t *testing.T) {
	if os.Getenv("KINDLING_LINUX_TEST") == "" {
		t.Skip("skipping the task kernel build and boot: set KINDLING_LINUX_TEST=1 (make test does)")
	}
	if testing.Short() {
		t.Skip("skipping the task kernel boot in -short mode")
	}
	report, err := hostcheck.Run()
	if err != nil {
		t.Fatal(err)
	}
	if !report.KVM.OK {
		if _, statErr := os.Stat("/dev/kvm"); statErr == nil {
			t.Fatalf("/dev/kvm exists but: %s", report.KVM.Detail)
		}
		t.Skipf("skipping: no KVM (%s)", report.KVM.Detail)
	}
	dir := t.TempDir()
	if _, err := testinit.BuildInitramfs(dir); err != nil {
		t.Fatal(err)
	}
	task, err := testtasks.Build(dir, testtasks.GoHTTP)
	if err != nil {
		t.Fatal(err)
	}
	var reports []*analyze.Report
	for _, bin := range []string{task, filepath.Join(dir, "init")} {
		r, err := analyze.File(bin)
		if err != nil {
			t.Fatal(err)
		}
		reports = append(reports, r)
	}
	plan := kernelbuilder.PlanTask(reports...)
	art, err := kernelbuilder.Build(context.Background(), plan.Spec(report.EmulatesCPL0()), kernelbuilder.BuildOptions{Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(art.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"CONFIG_INET=y", "CONFIG_IPV6=y", "CONFIG_EPOLL=y", "CONFIG_FUTEX=y"} {
		if !strings.Contains(string(cfg), o+"\n") {
			t.Errorf("task kernel config lacks %s", o)
		}
	}
	var files []rootfs.File
	for _, f := range [][2]string{{"init", filepath.Join(dir, "init")}, {"task", task}} {
		rf, err := rootfs.FileFromHost(f[0], f[1])
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, rf)
	}
	var cpio bytes.Buffer
	if err := rootfs.WriteInitramfs(&cpio, files); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(initrd, cpio.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmdline := "console=ttyS0 reboot=k panic=-1"
	if report.EmulatesCPL0() {
		cmdline += " " + kernelbuilder.EmulatedCPL0Cmdline()
	}
	testlock.Exclusive(t, "linux-boot")
	con := &syncBuffer{}
	m, err := vmm.New(vmm.Config{Kernel: art.Vmlinux, Initrd: initrd, Cmdline: cmdline, MemoryMiB: 256, VCPUs: 1}, vmm.Options{Console: con})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	defer m.Stop()
	start := time.Now()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	const handoff = "Run /init as init process"
	deadline := time.Now().Add(10 * time.Minute)
	for !strings.Contains(con.String(), handoff) {
		select {
		case <-m.Done():
			t.Fatalf("VM stopped before %q: %v\n%s", handoff, m.Wait(), con.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within 10 minutes; console:\n%s", handoff, con.String())
		}
	}
	t.Logf("task kernel (%d options requested) reached the /init hand-off in %v", len(plan.Why), time.Since(start).Round(time.Millisecond))
	if !report.UserSpaceRuns() {
		t.Logf("guest user space cannot run on this host (%s); the test ends at the /init hand-off", report.UserSyscalls.Detail)
		return
	}
	for !strings.Contains(con.String(), testinit.Message) {
		select {
		case <-m.Done():
			t.Fatalf("/init did not print %q:\n%s", testinit.Message, con.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
