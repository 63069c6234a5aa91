package hostcheck

import (
	"os"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/vmm/kvm"
)

func TestRunOnThisHost(t *testing.T) {
	r, err := Run()
	if err != nil {
		t.Fatal(err)
	}
	if _, statErr := os.Stat(kvm.DevicePath); statErr != nil {
		if r.KVM.OK {
			t.Fatal("no /dev/kvm, yet the report says KVM works")
		}
		t.Skipf("skipping the probe checks: no KVM here (%s)", r.KVM.Detail)
	}
	if !r.KVM.OK {
		t.Fatalf("/dev/kvm exists but the check says: %s", r.KVM.Detail)
	}
	for _, f := range []Finding{r.CPL0Native, r.UserSyscalls, r.CPUIDVirtualised} {
		if f.Detail == "" {
			t.Fatalf("a probe gave no evidence: %+v", r)
		}
	}
	// HOST.md: on PVM a stock guest's kernel mode is emulated and its
	// user-mode SYSCALL never enters CPL 0. Elsewhere both work.
	if r.HostKind == "pvm" {
		if !r.EmulatesCPL0() || r.UserSpaceRuns() {
			t.Fatalf("PVM host, but CPL0 %+v, syscalls %+v", r.CPL0Native, r.UserSyscalls)
		}
	} else if r.HostKind == "vmx" || r.HostKind == "svm" {
		if r.EmulatesCPL0() || !r.UserSpaceRuns() || !r.CPUIDVirtualised.OK {
			t.Fatalf("%s host, but %+v", r.HostKind, r)
		}
	}
	var out strings.Builder
	r.Print(&out)
	for _, want := range []string{"guest CPL 0", "guest syscalls", "CPUID", "capabilities"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed report lacks %q:\n%s", want, out.String())
		}
	}
	t.Logf("\n%s", out.String())
}
