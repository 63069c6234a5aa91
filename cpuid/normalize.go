package cpuid

import "math/bits"

// Normalisation constants (Intel SDM vol. 2 CPUID; AMD APM vol. 3 E.4).
const (
	leaf1HypervisorBit = 1 << 31 // ECX: running under a hypervisor
	leaf1PDCMBit       = 1 << 15 // ECX: perfmon and debug capability MSR
	leaf1HTTBit        = 1 << 28 // EDX: more than one logical processor
	leafCache          = 0x4
	leafTopology       = 0xb
	leafTopologyV2     = 0x1f
	leafPMU            = 0xa
	leafAMDCache       = 0x8000_001d
	leafAMDTopology    = 0x8000_001e
	leafAMDSize        = 0x8000_0008
	// xsaveLegacySize is the FXSAVE area and the XSAVE header: the XSAVE
	// area's size with only x87 and SSE state.
	xsaveLegacySize = 512 + 64
	// cacheLevelShared is the cache level shared by every core of a
	// package; lower levels belong to one core.
	cacheLevelShared = 3
	// topology level types in leaves 0xB and 0x1F, ECX[15:8].
	topoSMT  = 1
	topoCore = 2
)

// Normalize returns the CPUID vCPU id of n sees: its APIC ID in leaves 1,
// 0xB, 0x1F and 0x8000_001E; a topology of n single-thread cores in one
// package, which the cache leaves agree with; the hypervisor bit; leaf 0xD
// with only the XSAVE components of features t still has, and sizes to
// match; and no PMU (leaf 0xA zero). Hypervisor leaves (0x4000_0000 on)
// pass through unchanged: a PVM guest finds its hypervisor there.
func Normalize(t Table, id, n int) Table {
	out := t.Clone()
	fixXSave(out)
	amd := out.IsAMD()
	for i := range out {
		e := &out[i]
		switch uint32(e.Leaf) {
		case leafStd:
			e.EBX = e.EBX&0x0000_ffff | Hex32(id)<<24 | Hex32(min(n, 255))<<16
			e.ECX = (e.ECX | leaf1HypervisorBit) &^ leaf1PDCMBit
			if n > 1 {
				e.EDX |= leaf1HTTBit
			} else {
				e.EDX &^= leaf1HTTBit
			}
		case leafCache:
			if e.EAX&0x1f == 0 { // no cache at this subleaf
				continue
			}
			level := int(e.EAX>>5) & 7
			e.EAX = e.EAX&0x3fff | Hex32(min(n, 64)-1)<<26 | Hex32(sharing(level, n))<<14
		case leafAMDCache:
			if e.EAX&0x1f == 0 {
				continue
			}
			level := int(e.EAX>>5) & 7
			e.EAX = e.EAX&^(0xfff<<14) | Hex32(sharing(level, n))<<14
		case leafPMU:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case leafAMDTopology:
			e.EAX = Hex32(id)
			e.EBX = Hex32(id & 0xff) // compute unit id; one thread per unit
			e.ECX = 0                // node 0, one node
		case leafAMDSize:
			if amd {
				e.ECX = e.ECX&^0xf0ff | Hex32(apicIDBits(n))<<12 | Hex32(min(n, 256)-1)
			}
		case leafExtFeat:
			if amd {
				e.ECX &^= 1 << 23 // core performance counters: no PMU
			}
		}
	}
	out = topology(out, leafTopology, id, n)
	out = topology(out, leafTopologyV2, id, n)
	out.sort()
	return out
}

// sharing is EAX[25:14] of a cache leaf: logical processors sharing the
// cache, minus one.
func sharing(level, n int) int {
	if level >= cacheLevelShared {
		return min(n, 4096) - 1
	}
	return 0
}

// apicIDBits is how many low APIC ID bits number n cores.
func apicIDBits(n int) int {
	if n <= 1 {
		return 0
	}
	return bits.Len(uint(n - 1))
}

// topology replaces an extended topology leaf, if the table has it, with
// an SMT level of one thread and a core level of n cores, each reporting
// the vCPU's x2APIC ID.
func topology(t Table, leaf uint32, id, n int) Table {
	if t.Find(leaf, 0) == nil {
		return t
	}
	kept := t[:0]
	for _, e := range t {
		if uint32(e.Leaf) != leaf {
			kept = append(kept, e)
		}
	}
	x2apic := Hex32(id)
	return append(kept,
		Entry{Leaf: Hex32(leaf), Subleaf: 0, Flags: FlagSignificantIndex, EAX: 0, EBX: 1, ECX: topoSMT << 8, EDX: x2apic},
		Entry{Leaf: Hex32(leaf), Subleaf: 1, Flags: FlagSignificantIndex, EAX: Hex32(apicIDBits(n)), EBX: Hex32(n), ECX: topoCore<<8 | 1, EDX: x2apic},
		Entry{Leaf: Hex32(leaf), Subleaf: 2, Flags: FlagSignificantIndex, ECX: 2, EDX: x2apic},
	)
}

// XCR0 returns the XSAVE user components a table offers (leaf 0xD.0
// EDX:EAX) and the supervisor ones (leaf 0xD.1 EDX:ECX).
func (t Table) XCR0() (user, supervisor uint64) {
	if e := t.Find(leafXSave, 0); e != nil {
		user = uint64(e.EDX)<<32 | uint64(e.EAX)
	}
	if e := t.Find(leafXSave, 1); e != nil {
		supervisor = uint64(e.EDX)<<32 | uint64(e.ECX)
	}
	return user, supervisor
}

// XSaveSize is the standard-format XSAVE area size the user components in
// mask need, from the offsets and sizes in leaf 0xD's subleaves.
func (t Table) XSaveSize(mask uint64) uint32 {
	size := uint32(xsaveLegacySize)
	for c := 2; c < 64; c++ {
		if mask&(1<<c) == 0 {
			continue
		}
		if e := t.Find(leafXSave, uint32(c)); e != nil && e.ECX&1 == 0 {
			size = max(size, uint32(e.EBX)+uint32(e.EAX))
		}
	}
	return size
}

// fixXSave makes leaf 0xD agree with the features the table still has:
// components of hidden features leave XCR0 (and IA32_XSS), their subleaves
// read as zero, and the area sizes are recomputed. Without XSAVE the whole
// leaf reads zero.
func fixXSave(t Table) {
	if !t.Has(Lookup("xsave")) {
		for i := range t {
			if uint32(t[i].Leaf) == leafXSave {
				t[i].EAX, t[i].EBX, t[i].ECX, t[i].EDX = 0, 0, 0, 0
			}
		}
		return
	}
	user, super := t.XCR0()
	allowUser, allowSuper := uint64(xcompLegacy), uint64(0)
	owned := uint64(0)
	for i := range features {
		f := &features[i]
		owned |= f.XCR0 | f.XSS
		if t.Has(f) {
			allowUser |= f.XCR0
			allowSuper |= f.XSS
		}
	}
	// Components no feature of ours owns pass through: we cannot tell
	// what hides them.
	user &= allowUser | ^owned
	super &= allowSuper | ^owned
	size := t.XSaveSize(user)
	for i := range t {
		e := &t[i]
		if uint32(e.Leaf) != leafXSave {
			continue
		}
		switch c := e.Subleaf; {
		case c == 0:
			e.EAX, e.EDX = Hex32(uint32(user)), Hex32(uint32(user>>32))
			e.EBX, e.ECX = Hex32(size), Hex32(size)
		case c == 1:
			e.ECX, e.EDX = Hex32(uint32(super)), Hex32(uint32(super>>32))
		case c < 64 && (user|super)&(1<<c) == 0:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		}
	}
}
