package hostcheck

import (
	"os"
	"testing"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

// templateGuestSrc reads leaf 7.0 EBX and leaf 1 ECX at CPL 3.
const templateGuestSrc = `.code64
	mov $7, %eax
	xor %ecx, %ecx
	cpuid
	mov %ebx, 0x3000
	mov $1, %eax
	cpuid
	mov %ecx, 0x3004
	mov $0xfe, %al
	out %al, $0x64
	jmp .
`

// In a guest, a CPU template hides what it says: under c3 a guest's
// CPUID shows no AVX2, BMI2 or FMA even on a host that has them. Runs only
// where 'kindling host check' finds CPUID virtualised; PVM hosts show the
// guest the host's CPUID (HOST.md), and cputemplate_test in vmm checks
// what can be checked there: what KVM holds for each vCPU.
func TestTemplateSeenInGuest(t *testing.T) {
	if _, err := os.Stat(kvm.DevicePath); err != nil {
		t.Skipf("no KVM here: %v", err)
	}
	var r Report
	if err := r.probeCPUID(); err != nil {
		t.Fatal(err)
	}
	if !r.CPUIDVirtualised.OK {
		t.Skipf("CPUID is not virtualised on this host, so no guest can see a template: %s", r.CPUIDVirtualised.Detail)
	}
	if err := asm.Available(); err != nil {
		t.Fatalf("probe guests need an assembler: %v", err)
	}
	code, err := asm.Assemble(templateGuestSrc, probeCode)
	if err != nil {
		t.Fatal(err)
	}
	c3, _ := cpuid.Builtin(cpuid.NameC3)
	m, exit, _, err := probeWith(c3, 3, code, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if exit.Kind != vmm.ExitGuestReset {
		t.Fatalf("guest did not finish: %v", exit)
	}
	ebx7, _ := m.Memory().ReadU32(probeResult)
	ecx1, _ := m.Memory().ReadU32(probeResult + 4)
	for _, name := range []string{"avx2", "bmi1", "bmi2", "fma", "movbe", "avx512f", "sha"} {
		f := cpuid.Lookup(name)
		reg := ebx7
		if f.Leaf == 1 {
			reg = ecx1
		}
		if reg&(1<<f.Bit) != 0 {
			t.Errorf("the guest sees %s under c3 (leaf 7 ebx %#x, leaf 1 ecx %#x)", name, ebx7, ecx1)
		}
	}
	if ecx1&(1<<31) == 0 {
		t.Error("the guest does not see the hypervisor bit")
	}
}
