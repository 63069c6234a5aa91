package cpuid

import (
	"fmt"
	"strings"
)

// UnavailableError says a template asks for what a host's KVM does not
// offer: named features, or leaves beyond the host's range.
type UnavailableError struct {
	Template string
	// Missing are feature names, or "leaf L.S reg bit N" for bits without
	// a name.
	Missing []string
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("CPU template %s needs %s, which this host's KVM does not offer (KVM_GET_SUPPORTED_CPUID); use a smaller template or another host",
		e.Template, strings.Join(e.Missing, ", "))
}

// Apply returns supported (a host's KVM_GET_SUPPORTED_CPUID) changed by
// the template, with every feature whose prerequisite is now hidden
// hidden too. It fails if the template sets a feature bit the host lacks,
// or modifies a leaf the host does not have.
func (t *Template) Apply(supported Table) (Table, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	out := supported.Clone()
	var missing []string
	for i, m := range t.CPUID {
		r, _ := ParseReg(m.Register)
		mask32, val64, _ := ParseBitmap(m.Bitmap, 32)
		mask, val := uint32(mask32), uint32(val64)
		leaf := uint32(m.Leaf)
		e := out.Find(leaf, m.Subleaf)
		if e == nil {
			if val == 0 {
				continue // clearing what is not there is a no-op
			}
			if max := out.MaxLeaf(leaf); leaf > max {
				return nil, fmt.Errorf("CPU template %s: cpuid[%d] sets bits in leaf %#x, beyond this host's highest leaf %#x: the host's KVM does not support that leaf",
					t.Name, i, leaf, max)
			}
			return nil, fmt.Errorf("CPU template %s: cpuid[%d] sets bits in leaf %#x subleaf %d, which this host's supported CPUID does not list",
				t.Name, i, leaf, m.Subleaf)
		}
		have := e.Get(r)
		if featureRegister(leaf, m.Subleaf, r) {
			for b := 0; b < 32; b++ {
				if val&(1<<b) != 0 && have&(1<<b) == 0 {
					name := featureAt(leaf, m.Subleaf, r, b)
					if name == "" {
						name = fmt.Sprintf("leaf %#x.%d %s bit %d", leaf, m.Subleaf, r, b)
					}
					missing = append(missing, name)
				}
			}
		}
		e.Set(r, have&^mask|val)
	}
	if len(missing) > 0 {
		return nil, &UnavailableError{Template: t.Name, Missing: missing}
	}
	hidePrerequisites(out)
	return out, nil
}

// hidePrerequisites clears every feature one of whose prerequisites is
// clear, until none is left: hiding AVX hides AVX2, FMA and AVX-512.
func hidePrerequisites(t Table) {
	for changed := true; changed; {
		changed = false
		for i := range features {
			f := &features[i]
			if !t.Has(f) {
				continue
			}
			for _, n := range f.Needs {
				if !t.Has(Lookup(n)) {
					e := t.Find(f.Leaf, f.Subleaf)
					e.Set(f.Reg, e.Get(f.Reg)&^(1<<f.Bit))
					changed = true
					break
				}
			}
		}
	}
}
