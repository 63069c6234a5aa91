package hostcheck

import (
	"fmt"
	"io"
	"strings"
)

// Print writes the report as plain verdicts, one line each, with what a
// verdict means for running Kindling here.
func (r *Report) Print(w io.Writer) {
	line := func(name, verdict, detail string) {
		fmt.Fprintf(w, "%-18s %-16s %s\n", name, verdict, detail)
	}
	if !r.KVM.OK {
		line("KVM", "UNAVAILABLE", r.KVM.Detail)
		return
	}
	line("KVM", "ok", r.KVM.Detail)
	kind := r.HostKind
	switch kind {
	case "pvm":
		line("host kind", "PVM", "kvm_pvm is loaded: the PVM hypervisor (shadow paging, no VMX). A guest needs a PVM guest kernel (CONFIG_PVM_GUEST), pti=off, and lapic=notscdeadline on restore; snapshots from here cannot restore on a VMX host")
	case "vmx":
		line("host kind", "VMX", "Intel VT-x (kvm_intel)")
	case "svm":
		line("host kind", "SVM", "AMD-V (kvm_amd)")
	default:
		line("host kind", "unknown", "no kvm_intel, kvm_amd or kvm_pvm module found")
	}
	line("CPU vendor", r.Vendor, fmt.Sprintf("KVM signature %q", r.KVMSignature))
	verdict := func(f Finding, yes, no string) string {
		if f.OK {
			return yes
		}
		return no
	}
	line("guest CPL 0", verdict(r.CPL0Native, "native", "EMULATED"), r.CPL0Native.Detail)
	if r.EmulatesCPL0() {
		fmt.Fprintf(w, "%-18s %-16s %s\n", "", "", "=> a stock kernel boots slowly, needs noxsave and clearcpuid=… on its command line and the int3 self-test patched out (kindling kernel build-test does this)")
	}
	line("guest syscalls", verdict(r.UserSyscalls, "ok", "BROKEN"), r.UserSyscalls.Detail)
	if !r.UserSyscalls.OK {
		fmt.Fprintf(w, "%-18s %-16s %s\n", "", "", "=> nothing in a Linux guest's user space can run here; tests that need it are skipped and the process backend stands in")
	}
	line("CPUID", verdict(r.CPUIDVirtualised, "virtualised", "NOT VIRTUALISED"), r.CPUIDVirtualised.Detail)
	var missing []string
	for _, c := range r.Capabilities {
		if c.Value == 0 {
			missing = append(missing, fmt.Sprintf("%s (%s)", c.Name, c.Use))
		}
	}
	if len(missing) == 0 {
		line("capabilities", "ok", fmt.Sprintf("all %d capabilities Kindling uses are present", len(r.Capabilities)))
	} else {
		line("capabilities", "MISSING", strings.Join(missing, ", "))
	}
}
