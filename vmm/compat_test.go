package vmm

import (
	"errors"
	"strings"
	"testing"

	kcpuid "github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

func TestMissingFeaturesNamesTheBits(t *testing.T) {
	host := []kvm.CPUIDEntry{{Function: 1, Ecx: 0x0000_0201, Edx: 0xffff_ffff}, {Function: 7, Ebx: 0x9}}
	snap := []kvm.CPUIDEntry{
		{Function: 1, Ecx: 0x0000_0201 | 1<<31 | 1<<27, Edx: 0x1}, // only dynamic bits extra
		{Function: 7, Ebx: 0x9 | 1<<5},                            // AVX2 not offered
	}
	err := checkCompatible(&MachineState{VCPUs: []VCPUState{{ID: 0, CPUID: snap}}}, host)
	if !errors.Is(err, ErrIncompatible) || !strings.HasSuffix(err.Error(), "does not offer: avx2") {
		t.Fatalf("error %v", err)
	}
	if err := checkCompatible(&MachineState{HostKind: "elsewhere"}, host); !errors.Is(err, ErrIncompatible) ||
		!strings.Contains(err.Error(), "taken on a elsewhere host") {
		t.Fatalf("host kind: %v", err)
	}
}

// A snapshot's own CPUID always fits the host that took it.
func TestOwnCPUIDIsCompatible(t *testing.T) {
	m, _ := bareVM(t, 4, 1)
	cpuid := m.vcpus[0].cpuid
	if miss := kcpuid.Missing(kcpuid.FromKVM(cpuid), kcpuid.FromKVM(m.supportedCPUID)); len(miss) != 0 {
		t.Fatalf("this host's own vCPU CPUID reported incompatible: %v", miss)
	}
}
