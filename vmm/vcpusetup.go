package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/kindlingvm/kindling/vmm/kvm"
)

// CPUID leaves and bits the VMM adjusts per vCPU. The CPU template package
// owns everything else about CPUID.
const (
	cpuidHypervisorBit = 1 << 31 // leaf 1 ECX: running under a hypervisor
)

// vcpuCPUID derives vCPU id's CPUID from the host's supported set: its APIC
// ID in leaves 1, 0xB and 0x1F, and the hypervisor bit. Hypervisor leaves
// (0x40000000 on) pass through untouched: a PVM guest finds its hypervisor
// there.
func vcpuCPUID(supported []kvm.CPUIDEntry, id, n int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case 1:
			e.Ebx = e.Ebx&0x00ff_ffff | uint32(id)<<24
			e.Ecx |= cpuidHypervisorBit
		case 0xb, 0x1f:
			e.Edx = uint32(id)
		}
	}
	return out
}

// MSRs Linux expects a freshly reset CPU to have.
const (
	msrIA32TSC         = 0x10
	msrSysenterCS      = 0x174
	msrSysenterESP     = 0x175
	msrSysenterEIP     = 0x176
	msrMiscEnable      = 0x1a0
	msrMTRRDefType     = 0x2ff
	msrSTAR            = 0xc000_0081
	msrLSTAR           = 0xc000_0082
	msrCSTAR           = 0xc000_0083
	msrSyscallMask     = 0xc000_0084
	msrKernelGSBase    = 0xc000_0102
	miscEnableFastStr  = 1
	mtrrEnableWriteBck = 1<<11 | 6 // MTRRs on, default type write-back
)

func bootMSRs() []kvm.MSR {
	return []kvm.MSR{
		{Index: msrSysenterCS}, {Index: msrSysenterESP}, {Index: msrSysenterEIP},
		{Index: msrSTAR}, {Index: msrLSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase},
		{Index: msrSyscallMask}, {Index: msrIA32TSC},
		{Index: msrMiscEnable, Value: miscEnableFastStr},
		{Index: msrMTRRDefType, Value: mtrrEnableWriteBck},
	}
}

// LAPIC register offsets and LVT delivery modes.
const (
	apicLVT0      = 0x350
	apicLVT1      = 0x360
	apicModeNMI   = 4 << 8
	apicModeExtIn = 7 << 8
)

// setupVCPU gives a vCPU the register state of a reset x86 CPU as Linux
// expects it: boot MSRs (only those this host's KVM lists: HOST.md warns
// that some hosts refuse others), an initialised FPU, and LINT0/LINT1 wired
// as ExtINT and NMI.
func setupVCPU(c *kvm.VCPU, msrIndex []uint32) error {
	listed := make(map[uint32]bool, len(msrIndex))
	for _, i := range msrIndex {
		listed[i] = true
	}
	var msrs []kvm.MSR
	for _, msr := range bootMSRs() {
		if listed[msr.Index] {
			msrs = append(msrs, msr)
		}
	}
	if err := c.SetMSRs(msrs); err != nil {
		return fmt.Errorf("boot MSRs: %w", err)
	}
	fpu := kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
	if err := c.SetFPU(fpu); err != nil {
		return err
	}
	lapic, err := c.GetLAPIC()
	if err != nil {
		return err
	}
	lvt0 := binary.LittleEndian.Uint32(lapic.Regs[apicLVT0:])
	lvt1 := binary.LittleEndian.Uint32(lapic.Regs[apicLVT1:])
	binary.LittleEndian.PutUint32(lapic.Regs[apicLVT0:], lvt0&^0x700|apicModeExtIn)
	binary.LittleEndian.PutUint32(lapic.Regs[apicLVT1:], lvt1&^0x700|apicModeNMI)
	return c.SetLAPIC(lapic)
}
