package vmm

import (
	"fmt"
	"os"
	"strings"

	"github.com/kindlingvm/kindling/vmm/kvm"
)

// HostKind names the KVM flavour from its module: "pvm", "vmx", "svm" or
// "unknown". Snapshots record it; vCPU state does not cross kinds.
func HostKind() string {
	for _, k := range []struct{ mod, kind string }{{"kvm_pvm", "pvm"}, {"kvm_intel", "vmx"}, {"kvm_amd", "svm"}} {
		if _, err := os.Stat("/sys/module/" + k.mod); err == nil {
			return k.kind
		}
	}
	return "unknown"
}

// featureRegister is a CPUID register whose set bits are features.
type featureRegister struct {
	leaf, subleaf uint32
	reg           string
	// dynamic bits change with guest state (OSXSAVE follows CR4, OSPKE
	// follows CR4.PKE) or are set by the VMM itself (the hypervisor bit),
	// so they say nothing about the host.
	dynamic uint32
}

var featureRegisters = []featureRegister{
	{1, 0, "ecx", 1<<27 | 1<<31}, {1, 0, "edx", 0},
	{7, 0, "ebx", 0}, {7, 0, "ecx", 1 << 4}, {7, 0, "edx", 0},
	{0xd, 1, "eax", 0},
	{0x8000_0001, 0, "ecx", 0}, {0x8000_0001, 0, "edx", 0},
}

func cpuidReg(entries []kvm.CPUIDEntry, leaf, subleaf uint32, reg string) (uint32, bool) {
	for _, e := range entries {
		if e.Function != leaf || (e.Index != subleaf && e.Flags&1 != 0) {
			continue
		}
		switch reg {
		case "eax":
			return e.Eax, true
		case "ebx":
			return e.Ebx, true
		case "ecx":
			return e.Ecx, true
		case "edx":
			return e.Edx, true
		}
	}
	return 0, false
}

// missingFeatures lists the feature bits the snapshot's CPUID exposes that
// the host's supported CPUID lacks.
func missingFeatures(snap, host []kvm.CPUIDEntry) []string {
	var out []string
	for _, f := range featureRegisters {
		want, ok := cpuidReg(snap, f.leaf, f.subleaf, f.reg)
		if !ok {
			continue
		}
		have, _ := cpuidReg(host, f.leaf, f.subleaf, f.reg)
		if miss := want &^ have &^ f.dynamic; miss != 0 {
			var bits []string
			for b := 0; b < 32; b++ {
				if miss&(1<<b) != 0 {
					bits = append(bits, fmt.Sprint(b))
				}
			}
			out = append(out, fmt.Sprintf("leaf %#x.%d %s bits %s", f.leaf, f.subleaf, f.reg, strings.Join(bits, ",")))
		}
	}
	return out
}

// checkCompatible refuses a snapshot this host cannot run, naming why.
func checkCompatible(st *MachineState, supported []kvm.CPUIDEntry) error {
	if kind := HostKind(); st.HostKind != "" && st.HostKind != kind {
		return fmt.Errorf("%w: the snapshot was taken on a %s host, this host is %s; vCPU state does not cross KVM flavours",
			ErrIncompatible, st.HostKind, kind)
	}
	for _, v := range st.VCPUs {
		if miss := missingFeatures(v.CPUID, supported); len(miss) > 0 {
			return fmt.Errorf("%w: vcpu %d's CPUID exposes features this host's KVM does not offer: %s",
				ErrIncompatible, v.ID, strings.Join(miss, "; "))
		}
	}
	return nil
}
