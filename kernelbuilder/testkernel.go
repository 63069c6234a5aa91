package kernelbuilder

import (
	_ "embed"
)

// skipInt3Selftest is applied to kernels for hosts that emulate guest
// kernel mode, where KVM's emulator lacks int3 (../shared/HOST.md).
//
//go:embed patches/skip-int3-selftest.patch
var skipInt3Selftest []byte

// skipFPUDropFwait removes the one fwait a booting kernel can reach when a
// task exits with live FPU registers; KVM's emulator lacks fwait too.
//
//go:embed patches/skip-fpu-drop-fwait.patch
var skipFPUDropFwait []byte

// TestKernelOptions are the VM essentials on top of tinyconfig: PVH entry,
// paravirt KVM guest, serial console, initramfs, virtio-mmio with block,
// console and vsock, SMP with x2APIC, and the few syscall families a
// static /init needs. HOST.md's fragment, plus virtio-blk and an LZ4 bzImage.
var TestKernelOptions = []Option{
	{"CONFIG_64BIT", "y"}, {"CONFIG_PVH", "y"}, {"CONFIG_HYPERVISOR_GUEST", "y"}, {"CONFIG_PARAVIRT", "y"},
	{"CONFIG_KVM_GUEST", "y"}, {"CONFIG_PRINTK", "y"}, {"CONFIG_PRINTK_TIME", "y"}, {"CONFIG_TTY", "y"},
	{"CONFIG_SERIAL_8250", "y"}, {"CONFIG_SERIAL_8250_CONSOLE", "y"}, {"CONFIG_BLK_DEV_INITRD", "y"},
	{"CONFIG_BINFMT_ELF", "y"}, {"CONFIG_BINFMT_SCRIPT", "y"}, {"CONFIG_PROC_FS", "y"}, {"CONFIG_SYSFS", "y"},
	{"CONFIG_DEVTMPFS", "y"}, {"CONFIG_DEVTMPFS_MOUNT", "y"}, {"CONFIG_VIRTIO_MENU", "y"}, {"CONFIG_VIRTIO", "y"},
	{"CONFIG_VIRTIO_MMIO", "y"}, {"CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"}, {"CONFIG_VIRTIO_CONSOLE", "y"},
	{"CONFIG_NET", "y"}, {"CONFIG_VSOCKETS", "y"}, {"CONFIG_VIRTIO_VSOCKETS", "y"}, {"CONFIG_FUTEX", "y"},
	{"CONFIG_EPOLL", "y"}, {"CONFIG_POSIX_TIMERS", "y"}, {"CONFIG_UNIX", "y"}, {"CONFIG_SMP", "y"},
	{"CONFIG_X86_X2APIC", "y"}, {"CONFIG_X86_LOCAL_APIC", "y"}, {"CONFIG_MULTIUSER", "y"}, {"CONFIG_SHMEM", "y"},
	{"CONFIG_TMPFS", "y"}, {"CONFIG_BLOCK", "y"}, {"CONFIG_BLK_DEV", "y"}, {"CONFIG_VIRTIO_BLK", "y"},
	// LZ4 rather than tinyconfig's xz: where guest kernel mode is emulated,
	// xz decompression alone held a bzImage boot up for 9 minutes.
	{"CONFIG_KERNEL_LZ4", "y"},
}

// TestKernelSpec is the kernel the VMM's Linux test boots. On hosts that
// emulate guest kernel mode it carries patches that keep the kernel off
// instructions KVM's emulator lacks (int3 in a self-test, fwait on exit).
func TestKernelSpec(emulatedCPL0 bool) Spec {
	s := Spec{Options: TestKernelOptions, Targets: []string{"vmlinux", "bzImage"}}
	if emulatedCPL0 {
		s.Patches = []Patch{
			{Name: "skip-int3-selftest.patch", Data: skipInt3Selftest},
			{Name: "skip-fpu-drop-fwait.patch", Data: skipFPUDropFwait},
		}
	}
	return s
}

// EmulatedCPL0Cmdline is what a stock kernel's command line needs on hosts
// that emulate guest kernel mode: no XSAVE, and none of the instructions
// KVM's emulator lacks (HOST.md).
func EmulatedCPL0Cmdline() string {
	return "noxsave clearcpuid=cx16,popcnt,smap,smep,fsgsbase,rdtscp,erms,fsrm,bmi1,bmi2,movbe,pcid,invpcid,rdrand,rdseed,clwb,clflushopt,avx,avx2,avx512f,rdpid,umip"
}
