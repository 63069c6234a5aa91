package jail

import "os"

// kvmModules are the sysfs directories vmm.HostKind looks for: which KVM
// flavour this host runs (PVM, VMX or SVM).
var kvmModules = []string{"/sys/module/kvm_pvm", "/sys/module/kvm_intel", "/sys/module/kvm_amd"}

// KVMModuleBinds are read-only binds of this host's KVM module
// directories, for a kindling-vmm jail: with them, vmm.HostKind answers
// inside the jail (which has no /sys) as it does outside, so snapshots
// record the host kind, and the restore check compares it, as they would
// unjailed.
func KVMModuleBinds() []Bind {
	var out []Bind
	for _, m := range kvmModules {
		if st, err := os.Stat(m); err == nil && st.IsDir() {
			out = append(out, Bind{Source: m, Target: m})
		}
	}
	return out
}
