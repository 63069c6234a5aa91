package vmm_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/testhost"
	"github.com/kindlingvm/kindling/internal/testinit"
	"github.com/kindlingvm/kindling/internal/testlock"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

// console collects a guest's console and tells a waiter when a line shows.
type console struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{}
}

func newConsole() *console { return &console{changed: make(chan struct{}, 1)} }

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.b.Write(p)
	c.mu.Unlock()
	select {
	case c.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// waitFor waits until the console shows s or the VM stops.
func (c *console) waitFor(m *vmm.Machine, s string, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		if strings.Contains(c.String(), s) {
			return true
		}
		select {
		case <-c.changed:
		case <-m.Done():
			return strings.Contains(c.String(), s)
		case <-deadline:
			return false
		}
	}
}

// linuxTestTimeout is HOST.md's bound for a boot on hosts that emulate
// guest kernel mode (3.7 minutes seen on the slowest).
const linuxTestTimeout = 10 * time.Minute

// testKernel returns the cached test kernel, building it if needed.
func testKernel(t *testing.T, emulatedCPL0 bool) *kernelbuilder.Artifacts {
	t.Helper()
	if dir := os.Getenv("KINDLING_TEST_KERNEL_DIR"); dir != "" {
		return &kernelbuilder.Artifacts{Dir: dir, Vmlinux: filepath.Join(dir, "vmlinux"), BzImage: filepath.Join(dir, "bzImage")}
	}
	art, err := kernelbuilder.Build(context.Background(), kernelbuilder.TestKernelSpec(emulatedCPL0),
		kernelbuilder.BuildOptions{Progress: os.Stderr})
	if err != nil {
		t.Fatalf("build the test kernel: %v", err)
	}
	return art
}

// TestLinuxBoots boots the test kernel on two vCPUs with an initramfs and a
// virtio-blk disk, once as an ELF vmlinux through PVH and once as a bzImage
// through the 64-bit boot protocol, one after the other (in parallel, two
// emulated boots took 6 minutes each here, against 65 s and 93 s alone).
// Everywhere each boot must
// bring up the second vCPU (MP table, INIT/SIPI) and reach the hand-off to
// /init, having probed the disk over virtio-mmio; where the host check says
// guest user space runs, /init must also print its line and reboot.
// Slow: a minute or more each where guest kernel mode is emulated (the
// bzImage is LZ4-compressed for that reason: with xz its decompressor alone
// took 9 minutes there).
func TestLinuxBoots(t *testing.T) {
	if os.Getenv("KINDLING_LINUX_TEST") == "" && os.Getenv("KINDLING_TEST_KERNEL_DIR") == "" {
		t.Skip("skipping the Linux boot: set KINDLING_LINUX_TEST=1 to build (once, cached) and boot the test kernel; make test does")
	}
	t.Run("pvh-vmlinux", func(t *testing.T) {
		bootLinux(t, func(a *kernelbuilder.Artifacts) string { return a.Vmlinux }, 2)
	})
	t.Run("bzImage", func(t *testing.T) {
		bootLinux(t, func(a *kernelbuilder.Artifacts) string { return a.BzImage }, 2)
	})
}

// linuxVM is a booted-from-scratch test VM and what the test needs of it.
type linuxVM struct {
	m       *vmm.Machine
	con     *console
	report  *hostcheck.Report
	cmdline string
}

// newLinuxVM builds (cached) the test kernel and creates a VM for it with
// an initramfs and a 4 MiB disk; it skips only where KVM is absent.
func newLinuxVM(t *testing.T, kernel func(*kernelbuilder.Artifacts) string, vcpus int) *linuxVM {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping the Linux boot in -short mode")
	}
	report := testhost.RequireKVM(t)
	art := testKernel(t, report.EmulatesCPL0())
	testlock.Exclusive(t, "linux-boot") // one emulated boot at a time, across packages
	dir := t.TempDir()
	initrd, err := testinit.BuildInitramfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cmdline := "console=ttyS0 reboot=k panic=-1"
	if report.EmulatesCPL0() {
		cmdline += " " + kernelbuilder.EmulatedCPL0Cmdline()
	}
	con := newConsole()
	m, err := vmm.New(vmm.Config{Kernel: kernel(art), Initrd: initrd, Cmdline: cmdline, MemoryMiB: 256, VCPUs: vcpus,
		Disks: []vmm.Disk{{Path: disk}}}, vmm.Options{Console: con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(); m.Close() })
	return &linuxVM{m: m, con: con, report: report, cmdline: cmdline}
}

const handoff = "Run /init as init process"

func bootLinux(t *testing.T, kernel func(*kernelbuilder.Artifacts) string, vcpus int) {
	t.Helper()
	v := newLinuxVM(t, kernel, vcpus)
	m, con, report, cmdline := v.m, v.con, v.report, v.cmdline
	start := time.Now()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	timeout := linuxTestTimeout
	if !con.waitFor(m, handoff, timeout) {
		m.Stop()
		t.Fatalf("no %q within %v; VM: %+v; console:\n%s", handoff, timeout, m.Status(), con.String())
	}
	t.Logf("reached the /init hand-off in %v", time.Since(start).Round(time.Millisecond))
	out := con.String()
	wants := []string{"Command line: " + cmdline, "virtio_blk virtio0: [vda] 8192 512-byte logical blocks"}
	if vcpus > 1 {
		wants = append(wants, fmt.Sprintf("smp: Brought up 1 node, %d CPUs", vcpus))
	}
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if !report.UserSpaceRuns() {
		t.Logf("guest user space cannot run on this host (%s); the test ends at the /init hand-off", report.UserSyscalls.Detail)
		return
	}
	if !con.waitFor(m, testinit.Message, time.Minute) {
		t.Fatalf("/init did not print %q; console:\n%s", testinit.Message, con.String())
	}
	select {
	case <-m.Done():
	case <-time.After(time.Minute):
		t.Fatal("the guest did not reboot after /init")
	}
	if r := m.Wait(); r.Kind != vmm.ExitGuestReset {
		t.Fatalf("exit %v, want %s", r, vmm.ExitGuestReset)
	}
}

// TestLinuxSnapshotMidBoot snapshots the PVH test kernel on two vCPUs once
// it has probed its virtio disk, restores the snapshot into a new VM, and
// requires the restored kernel to finish its boot to the /init hand-off.
// Slow like TestLinuxBoots (about a minute here).
func TestLinuxSnapshotMidBoot(t *testing.T) {
	if os.Getenv("KINDLING_LINUX_TEST") == "" && os.Getenv("KINDLING_TEST_KERNEL_DIR") == "" {
		t.Skip("skipping the Linux snapshot: set KINDLING_LINUX_TEST=1 (make test does)")
	}
	v := newLinuxVM(t, func(a *kernelbuilder.Artifacts) string { return a.Vmlinux }, 2)
	if err := v.m.Start(); err != nil {
		t.Fatal(err)
	}
	const probed = "virtio_blk virtio0: [vda]"
	if !v.con.waitFor(v.m, probed, linuxTestTimeout) {
		t.Fatalf("no %q; console:\n%s", probed, v.con.String())
	}
	if err := v.m.Pause(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v.con.String(), handoff) {
		t.Skip("the kernel reached /init before the pause; nothing left to restore into")
	}
	dir := filepath.Join(t.TempDir(), "snap")
	info, err := v.m.Snapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	v.m.Stop()
	t.Logf("snapshot after %q: %d MiB guest, %d MiB written, in %v", probed, info.MemoryBytes>>20, info.WrittenBytes>>20, info.Took)

	con := newConsole()
	r, err := vmm.Restore(dir, vmm.RestoreOverrides{}, vmm.Options{Console: con})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if !con.waitFor(r, handoff, linuxTestTimeout) {
		t.Fatalf("the restored kernel did not reach %q; VM %+v; console after restore:\n%s", handoff, r.Status(), con.String())
	}
	t.Logf("restored kernel reached the /init hand-off %v after restore", time.Since(start).Round(time.Millisecond))
	if strings.Contains(con.String(), "Linux version") {
		t.Error("the restored VM booted again from scratch instead of continuing")
	}
}
