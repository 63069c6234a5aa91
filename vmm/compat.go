package vmm

import (
	"fmt"
	"os"
	"strings"

	"github.com/kindlingvm/kindling/cpuid"
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

// checkCompatible refuses a snapshot this host cannot run, naming why:
// another KVM flavour, a CPU template the host cannot offer, or vCPU CPUID
// claiming features the host's KVM lacks.
func checkCompatible(st *MachineState, supported []kvm.CPUIDEntry) error {
	if kind := HostKind(); st.HostKind != "" && st.HostKind != kind {
		return fmt.Errorf("%w: the snapshot was taken on a %s host, this host is %s; vCPU state does not cross KVM flavours",
			ErrIncompatible, st.HostKind, kind)
	}
	host := cpuid.FromKVM(supported)
	if t := st.Config.CPUTemplate; t != nil {
		if _, err := t.Apply(host); err != nil {
			return fmt.Errorf("%w: the snapshot's %v", ErrIncompatible, err)
		}
	}
	for _, v := range st.VCPUs {
		if miss := cpuid.Missing(cpuid.FromKVM(v.CPUID), host); len(miss) > 0 {
			return fmt.Errorf("%w: vcpu %d's CPUID exposes features this host's KVM does not offer: %s",
				ErrIncompatible, v.ID, strings.Join(miss, ", "))
		}
	}
	return nil
}
