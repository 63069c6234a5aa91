package kernelbuilder_test

import (
	"github.com/kindlingvm/kindling/internal/syncbuf"

	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/testhost"
	"github.com/kindlingvm/kindling/internal/testinit"
	"github.com/kindlingvm/kindling/internal/testlock"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/vmm"
)

// TestHTTPTaskKernelBoots is the end-to-end check: the kernel the
// builder derives for a Go HTTP server (plus the /init that starts it) is
// built (once, cached) and boots in our VMM to the hand-off to /init, from
// a real zstd task image, and its virtio-vsock driver answers the VMM's
// vsock device. Where guest user space runs, /init must also
// print its line. Slow: a kernel build on a cold cache, then a minute or
// more of boot where guest kernel mode is emulated.
func TestHTTPTaskKernelBoots(t *testing.T) {
	if os.Getenv("KINDLING_LINUX_TEST") == "" {
		t.Skip("skipping the task kernel build and boot: set KINDLING_LINUX_TEST=1 (make test does)")
	}
	if testing.Short() {
		t.Skip("skipping the task kernel boot in -short mode")
	}
	report := testhost.RequireKVM(t)
	dir := t.TempDir()
	if _, err := testinit.BuildInitramfs(dir); err != nil {
		t.Fatal(err)
	}
	task, err := testtasks.Build(dir, testtasks.GoHTTP)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := kernelbuilder.PlanFiles(task, filepath.Join(dir, "init"))
	if err != nil {
		t.Fatal(err)
	}
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
	// The initramfs is a real task image's: /init and /task, compressed
	// as kindling image build does on this host.
	codec := rootfs.CodecZstd
	if report.EmulatesCPL0() {
		codec = rootfs.CodecLZ4
	}
	img := filepath.Join(dir, "image")
	manifest, err := rootfs.BuildImage(rootfs.ImageSpec{Init: filepath.Join(dir, "init"), Task: task, Kernel: art.Vmlinux, Codec: codec}, img)
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(img, manifest.Initramfs.Name)
	cmdline := "console=ttyS0 reboot=k panic=-1"
	if report.EmulatesCPL0() {
		cmdline += " " + kernelbuilder.EmulatedCPL0Cmdline()
	}
	testlock.Exclusive(t, "linux-boot")
	con := &syncbuf.Buffer{}
	vsockPath := filepath.Join(dir, "vsock")
	m, err := vmm.New(vmm.Config{Kernel: art.Vmlinux, Initrd: initrd, Cmdline: cmdline, MemoryMiB: 256, VCPUs: 1,
		Vsock: &vmm.Vsock{GuestCID: 3, Path: vsockPath}}, vmm.Options{Console: con})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	defer m.Stop()
	start := time.Now()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	// Once the guest kernel's virtio-vsock driver is up, a host connect to
	// a port nobody listens on goes to the guest as a REQUEST and comes
	// back as the guest kernel's RST: the connection closes with no OK.
	// Before that the device answers "ERROR ... driver is not running".
	vsockResult := make(chan string, 1)
	go func() {
		for {
			vc, err := net.Dial("unix", vsockPath)
			if err != nil {
				vsockResult <- err.Error()
				return
			}
			fmt.Fprintf(vc, "CONNECT 52\n")
			vc.SetReadDeadline(time.Now().Add(2 * time.Minute))
			reply, err := io.ReadAll(vc)
			vc.Close()
			switch {
			case strings.Contains(string(reply), "driver is not running"):
				select {
				case <-m.Done():
					vsockResult <- "the VM stopped before its vsock driver came up"
					return
				case <-time.After(200 * time.Millisecond):
				}
				continue
			case err != nil || len(reply) != 0:
				vsockResult <- fmt.Sprintf("vsock connect to an unbound guest port: reply %q, %v; want the guest's reset", reply, err)
			default:
				vsockResult <- ""
			}
			return
		}
	}()
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
	if strings.Contains(con.String(), "Initramfs unpacking failed") {
		t.Fatalf("the kernel could not unpack the %s initramfs:\n%s", codec, con.String())
	}
	select {
	case r := <-vsockResult:
		if r != "" {
			t.Fatal(r)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("no answer from the guest's vsock driver")
	}
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
