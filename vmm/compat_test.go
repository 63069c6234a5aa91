package vmm

import (
	"encoding/json"
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

// A snapshot records its CPU template in its config; a host that cannot
// offer the template refuses the restore, naming what it lacks.
func TestSnapshotTemplateMustBeOffered(t *testing.T) {
	v3, _ := kcpuid.Builtin(kcpuid.NameV3)
	st := &MachineState{Config: Config{MemoryMiB: 4, VCPUs: 1, CPUTemplate: v3}}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back MachineState
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Config.CPUTemplate == nil || back.Config.CPUTemplate.Name != kcpuid.NameV3 || len(back.Config.CPUTemplate.CPUID) != len(v3.CPUID) {
		t.Fatalf("template lost in the saved state: %s", b)
	}
	// A host with SSE4.2 but no AVX2 (leaf 7 EBX bit 5 clear).
	host := []kvm.CPUIDEntry{
		{Function: 0, Eax: 0xd},
		{Function: 1, Ecx: 1<<0 | 1<<9 | 1<<12 | 1<<13 | 1<<19 | 1<<20 | 1<<22 | 1<<23 | 1<<26 | 1<<28 | 1<<29, Edx: 0x0f8b_fbff},
		{Function: 7, Flags: 1, Ebx: 1<<3 | 1<<8},
		{Function: 0x8000_0000, Eax: 0x8000_0001},
		{Function: 0x8000_0001, Ecx: 1<<0 | 1<<5, Edx: 1<<11 | 1<<29},
	}
	err = checkCompatible(&back, host)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "CPU template x86-64-v3 needs avx2, which this host's KVM does not offer") {
		t.Fatalf("restore on a host without AVX2: %v", err)
	}
}
