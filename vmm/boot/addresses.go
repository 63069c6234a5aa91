// Package boot loads a Linux kernel into guest memory and describes the boot
// vCPU's entry state: the x86 boot protocol's 64-bit entry for a bzImage,
// PVH for an ELF vmlinux, with the e820 map, MP table, command line and
// initrd a kernel expects from its loader. It never trusts the kernel file:
// every header field that drives a copy is checked against the file and
// guest memory first, and bad input is an error naming the file.
package boot

import "github.com/kindlingvm/kindling/vmm/memory"

// Fixed low-memory layout (guest physical addresses). Nothing here overlaps
// (addresses_test.go checks); everything sits below the kernel at 1 MiB.
const (
	gdtAddr       = 0x500    // boot GDT
	idtAddr       = 0x520    // empty IDT: the kernel installs its own
	startInfoAddr = 0x6000   // PVH hvm_start_info
	modlistAddr   = 0x6040   // PVH module list (the initrd)
	memmapAddr    = 0x6100   // PVH memory map
	zeroPageAddr  = 0x7000   // bzImage boot_params
	stackTop      = 0x8ff0   // boot stack for the 64-bit entry
	pml4Addr      = 0x9000   // page tables for the 64-bit entry
	pdptAddr      = 0xa000   //
	pdAddr        = 0xb000   // four page directories: 0xb000-0xefff
	cmdlineAddr   = 0x20000  // kernel command line
	ebdaStart     = 0x9fc00  // EBDA: the MP table lives here
	biosEnd       = 0x100000 // end of the legacy BIOS area
	kernelAddr    = 0x100000 // where kernels load (the boot protocol's 1 MiB)

	// cmdlineMax bounds the command-line area: up to the next structure.
	cmdlineMax = ebdaStart - cmdlineAddr
	// memmapMax bounds PVH memory map entries to the space before
	// zeroPageAddr (24 bytes each).
	memmapMax = (zeroPageAddr - memmapAddr) / 24
)

// lowRAMEnd is the end of RAM below the 32-bit MMIO hole for a guest of
// size bytes: where initrds go.
func lowRAMEnd(size uint64) uint64 {
	return min(size, memory.MMIOHoleStart)
}
