package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

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

// applyMSRModifiers changes the template's MSRs from the values KVM and
// setupVCPU left, after them, so the template has the last word.
func applyMSRModifiers(c *kvm.VCPU, t *cpuid.Template) error {
	for _, mod := range t.MSRs {
		idx := uint32(mod.Index)
		cur, err := c.GetMSRs([]uint32{idx})
		if err != nil {
			return fmt.Errorf("cpu template %s: read %s: %w", t.Name, cpuid.MSRName(idx), err)
		}
		v := mod.Apply(cur[0].Value)
		if err := c.SetMSRs([]kvm.MSR{{Index: idx, Value: v}}); err != nil {
			return fmt.Errorf("cpu template %s: set %s to %#x: %w", t.Name, cpuid.MSRName(idx), v, err)
		}
	}
	return nil
}
