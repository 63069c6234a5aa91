package cpuid

import "fmt"

// dynamicBits are feature-register bits that follow guest state (OSXSAVE
// follows CR4.OSXSAVE, OSPKE follows CR4.PKE) or that the VMM sets itself
// (the hypervisor and HTT bits): they say nothing about a host.
var dynamicBits = map[regKey]uint32{
	{leafStd, 0, ECX}:  1<<27 | leaf1HypervisorBit,
	{leafStd, 0, EDX}:  leaf1HTTBit, // the VMM's topology, not the host's
	{leafExt7, 0, ECX}: 1 << 4,
}

// featureRegs lists the registers that hold named features, in order.
func featureRegs() []regKey {
	seen := map[regKey]bool{}
	var out []regKey
	for _, f := range features {
		k := regKey{f.Leaf, f.Subleaf, f.Reg}
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	sortRegKeys(out)
	return out
}

// Missing lists the feature bits want sets and have does not, by name, or
// as "leaf 0x7.0 ebx bit 13" for bits without one. A restored vCPU's CPUID
// must not claim anything its new host cannot do.
func Missing(want, have Table) []string {
	var out []string
	for _, k := range featureRegs() {
		w, ok := want.Reg(k.leaf, k.subleaf, k.reg)
		if !ok {
			continue
		}
		h, _ := have.Reg(k.leaf, k.subleaf, k.reg)
		miss := w &^ h &^ dynamicBits[k]
		for b := 0; b < 32; b++ {
			if miss&(1<<b) == 0 {
				continue
			}
			if n := featureAt(k.leaf, k.subleaf, k.reg, b); n != "" {
				out = append(out, n)
			} else {
				out = append(out, fmt.Sprintf("leaf %#x.%d %s bit %d", k.leaf, k.subleaf, k.reg, b))
			}
		}
	}
	return out
}

// FeatureDiff is one feature two tables disagree on.
type FeatureDiff struct {
	Feature string
	InA     bool
	InB     bool
}

// Diff lists the named features one table offers and the other does not,
// in CPUID order.
func Diff(a, b Table) []FeatureDiff {
	var out []FeatureDiff
	for i := range features {
		f := &features[i]
		if ha, hb := a.Has(f), b.Has(f); ha != hb {
			out = append(out, FeatureDiff{Feature: f.Name, InA: ha, InB: hb})
		}
	}
	return out
}
