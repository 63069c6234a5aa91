package cpuid

import "github.com/kindlingvm/kindling/vmm/kvm"

// FromKVM converts KVM's entries into a Table.
func FromKVM(entries []kvm.CPUIDEntry) Table {
	t := make(Table, len(entries))
	for i, e := range entries {
		t[i] = Entry{Leaf: Hex32(e.Function), Subleaf: e.Index, Flags: e.Flags,
			EAX: Hex32(e.Eax), EBX: Hex32(e.Ebx), ECX: Hex32(e.Ecx), EDX: Hex32(e.Edx)}
	}
	return t
}

// KVM converts the table into KVM's entries, for KVM_SET_CPUID2.
func (t Table) KVM() []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(t))
	for i, e := range t {
		out[i] = kvm.CPUIDEntry{Function: uint32(e.Leaf), Index: e.Subleaf, Flags: e.Flags,
			Eax: uint32(e.EAX), Ebx: uint32(e.EBX), Ecx: uint32(e.ECX), Edx: uint32(e.EDX)}
	}
	return out
}

// Supported reads this host's KVM_GET_SUPPORTED_CPUID.
func Supported() (Table, error) {
	sys, err := kvm.Open()
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	entries, err := sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	return FromKVM(entries), nil
}
