package cpuid

import (
	"fmt"
	"strings"
)

// msrNames names the MSRs templates are likely to touch, for messages.
var msrNames = map[uint32]string{
	0x10a:      "IA32_ARCH_CAPABILITIES",
	0x1a0:      "IA32_MISC_ENABLE",
	0x48:       "IA32_SPEC_CTRL",
	0x10b:      "IA32_FLUSH_CMD",
	0x122:      "IA32_TSX_CTRL",
	0x345:      "IA32_PERF_CAPABILITIES",
	0x480:      "IA32_VMX_BASIC",
	0xc0011029: "AMD DE_CFG",
}

// MSRName is "IA32_ARCH_CAPABILITIES (0x10a)", or just the index.
func MSRName(index uint32) string {
	if n, ok := msrNames[index]; ok {
		return fmt.Sprintf("%s (%#x)", n, index)
	}
	return fmt.Sprintf("MSR %#x", index)
}

// Apply changes v as the modifier says.
func (m MSRModifier) Apply(v uint64) uint64 {
	mask, val, err := ParseBitmap(m.Bitmap, 64)
	if err != nil {
		return v // Validate refuses such a template before it is used
	}
	return v&^mask | val
}

// CheckMSRs refuses a template that modifies MSRs the host's KVM does not
// offer (its KVM_GET_MSR_INDEX_LIST and KVM_GET_MSR_FEATURE_INDEX_LIST):
// KVM would reject the write, and on some hosts (HOST.md: AMD refuses
// IA32_ARCH_CAPABILITIES) that is expected.
func (t *Template) CheckMSRs(offered []uint32) error {
	have := make(map[uint32]bool, len(offered))
	for _, i := range offered {
		have[i] = true
	}
	var missing []string
	for _, m := range t.MSRs {
		if !have[uint32(m.Index)] {
			missing = append(missing, MSRName(uint32(m.Index)))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("CPU template %s modifies %s, which this host's KVM does not offer (not in KVM_GET_MSR_INDEX_LIST or KVM_GET_MSR_FEATURE_INDEX_LIST); remove those modifiers or use another host",
			t.Name, strings.Join(missing, ", "))
	}
	return nil
}
