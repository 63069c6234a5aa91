package cpuid

import "strings"

// Kind tells instruction-set extensions, which a task's code can use and a
// template may hide, from system features, which the guest kernel uses and
// the psABI-level templates leave alone.
type Kind uint8

const (
	ISA Kind = iota
	System
)

// Feature is one named CPUID feature bit.
type Feature struct {
	Name    string
	Leaf    uint32
	Subleaf uint32
	Reg     Reg
	Bit     uint8
	Kind    Kind
	// Level is the x86-64 psABI level that includes the feature: 1 for the
	// baseline, 2 to 4 for x86-64-v2..v4, 0 for none.
	Level int
	// Needs are features without which this one cannot be offered: AVX
	// state lives in XSAVE, every AVX-512 subset extends AVX512F.
	Needs []string
	// XCR0 and XSS are the XSAVE state components the feature owns; hiding
	// it hides them (leaf 0xD).
	XCR0, XSS uint64
	// Aliases are other spellings (Linux /proc/cpuinfo names).
	Aliases []string
}

// Leaves that features live in.
const (
	leafStd     = 0x1
	leafExt7    = 0x7
	leafXSave   = 0xd
	leafExtFeat = 0x8000_0001
)

// XSAVE state components (Intel SDM vol. 1, 13.1).
const (
	xcompX87      = 1 << 0
	xcompSSE      = 1 << 1
	xcompAVX      = 1 << 2
	xcompBndregs  = 1 << 3
	xcompBndcsr   = 1 << 4
	xcompOpmask   = 1 << 5
	xcompZMMHi256 = 1 << 6
	xcompHi16ZMM  = 1 << 7
	xcompPT       = 1 << 8
	xcompPKRU     = 1 << 9
	xcompCETU     = 1 << 11
	xcompCETS     = 1 << 12
	xcompTileCfg  = 1 << 17
	xcompTileData = 1 << 18
	// xcompLegacy is always there: the FXSAVE area.
	xcompLegacy = xcompX87 | xcompSSE
)

// features is the table of named feature bits (Intel SDM vol. 2 CPUID,
// AMD APM vol. 3 appendix E). Never written after initialisation.
var features = []Feature{
	// Leaf 1 EDX: the x86-64 baseline.
	{Name: "fpu", Leaf: leafStd, Reg: EDX, Bit: 0, Level: 1},
	{Name: "tsc", Leaf: leafStd, Reg: EDX, Bit: 4, Kind: System},
	{Name: "cx8", Leaf: leafStd, Reg: EDX, Bit: 8, Level: 1},
	{Name: "apic", Leaf: leafStd, Reg: EDX, Bit: 9, Kind: System},
	{Name: "cmov", Leaf: leafStd, Reg: EDX, Bit: 15, Level: 1},
	{Name: "clflush", Leaf: leafStd, Reg: EDX, Bit: 19, Kind: System},
	{Name: "mmx", Leaf: leafStd, Reg: EDX, Bit: 23, Level: 1},
	{Name: "fxsr", Leaf: leafStd, Reg: EDX, Bit: 24, Level: 1},
	{Name: "sse", Leaf: leafStd, Reg: EDX, Bit: 25, Level: 1},
	{Name: "sse2", Leaf: leafStd, Reg: EDX, Bit: 26, Level: 1},
	// Leaf 1 ECX.
	{Name: "sse3", Leaf: leafStd, Reg: ECX, Bit: 0, Level: 2, Aliases: []string{"pni"}},
	{Name: "pclmulqdq", Leaf: leafStd, Reg: ECX, Bit: 1},
	{Name: "ssse3", Leaf: leafStd, Reg: ECX, Bit: 9, Level: 2},
	{Name: "fma", Leaf: leafStd, Reg: ECX, Bit: 12, Level: 3, Needs: []string{"avx"}},
	{Name: "cx16", Leaf: leafStd, Reg: ECX, Bit: 13, Level: 2},
	{Name: "pcid", Leaf: leafStd, Reg: ECX, Bit: 17, Kind: System},
	{Name: "sse4_1", Leaf: leafStd, Reg: ECX, Bit: 19, Level: 2, Aliases: []string{"sse4.1"}},
	{Name: "sse4_2", Leaf: leafStd, Reg: ECX, Bit: 20, Level: 2, Aliases: []string{"sse4.2"}},
	{Name: "x2apic", Leaf: leafStd, Reg: ECX, Bit: 21, Kind: System},
	{Name: "movbe", Leaf: leafStd, Reg: ECX, Bit: 22, Level: 3},
	{Name: "popcnt", Leaf: leafStd, Reg: ECX, Bit: 23, Level: 2},
	{Name: "aes", Leaf: leafStd, Reg: ECX, Bit: 25},
	{Name: "xsave", Leaf: leafStd, Reg: ECX, Bit: 26, Kind: System, Level: 3},
	{Name: "avx", Leaf: leafStd, Reg: ECX, Bit: 28, Level: 3, Needs: []string{"xsave"}, XCR0: xcompAVX},
	{Name: "f16c", Leaf: leafStd, Reg: ECX, Bit: 29, Level: 3, Needs: []string{"avx"}},
	{Name: "rdrand", Leaf: leafStd, Reg: ECX, Bit: 30},
	// Leaf 7.0 EBX.
	{Name: "fsgsbase", Leaf: leafExt7, Reg: EBX, Bit: 0, Kind: System},
	{Name: "bmi1", Leaf: leafExt7, Reg: EBX, Bit: 3, Level: 3},
	{Name: "hle", Leaf: leafExt7, Reg: EBX, Bit: 4},
	{Name: "avx2", Leaf: leafExt7, Reg: EBX, Bit: 5, Level: 3, Needs: []string{"avx"}},
	{Name: "smep", Leaf: leafExt7, Reg: EBX, Bit: 7, Kind: System},
	{Name: "bmi2", Leaf: leafExt7, Reg: EBX, Bit: 8, Level: 3},
	{Name: "erms", Leaf: leafExt7, Reg: EBX, Bit: 9, Kind: System},
	{Name: "invpcid", Leaf: leafExt7, Reg: EBX, Bit: 10, Kind: System},
	{Name: "rtm", Leaf: leafExt7, Reg: EBX, Bit: 11},
	{Name: "mpx", Leaf: leafExt7, Reg: EBX, Bit: 14, XCR0: xcompBndregs | xcompBndcsr},
	{Name: "avx512f", Leaf: leafExt7, Reg: EBX, Bit: 16, Level: 4, Needs: []string{"avx2", "fma", "f16c"}, XCR0: xcompOpmask | xcompZMMHi256 | xcompHi16ZMM},
	{Name: "avx512dq", Leaf: leafExt7, Reg: EBX, Bit: 17, Level: 4, Needs: []string{"avx512f"}},
	{Name: "rdseed", Leaf: leafExt7, Reg: EBX, Bit: 18},
	{Name: "adx", Leaf: leafExt7, Reg: EBX, Bit: 19},
	{Name: "smap", Leaf: leafExt7, Reg: EBX, Bit: 20, Kind: System},
	{Name: "avx512ifma", Leaf: leafExt7, Reg: EBX, Bit: 21, Needs: []string{"avx512f"}},
	{Name: "clflushopt", Leaf: leafExt7, Reg: EBX, Bit: 23},
	{Name: "clwb", Leaf: leafExt7, Reg: EBX, Bit: 24},
	{Name: "intel_pt", Leaf: leafExt7, Reg: EBX, Bit: 25, Kind: System, XSS: xcompPT},
	{Name: "avx512cd", Leaf: leafExt7, Reg: EBX, Bit: 28, Level: 4, Needs: []string{"avx512f"}},
	{Name: "sha", Leaf: leafExt7, Reg: EBX, Bit: 29, Aliases: []string{"sha_ni"}},
	{Name: "avx512bw", Leaf: leafExt7, Reg: EBX, Bit: 30, Level: 4, Needs: []string{"avx512f"}},
	{Name: "avx512vl", Leaf: leafExt7, Reg: EBX, Bit: 31, Level: 4, Needs: []string{"avx512f"}},
	// Leaf 7.0 ECX.
	{Name: "avx512vbmi", Leaf: leafExt7, Reg: ECX, Bit: 1, Needs: []string{"avx512f"}},
	{Name: "umip", Leaf: leafExt7, Reg: ECX, Bit: 2, Kind: System},
	{Name: "pku", Leaf: leafExt7, Reg: ECX, Bit: 3, XCR0: xcompPKRU},
	{Name: "avx512vbmi2", Leaf: leafExt7, Reg: ECX, Bit: 6, Needs: []string{"avx512f"}, Aliases: []string{"avx512_vbmi2"}},
	{Name: "shstk", Leaf: leafExt7, Reg: ECX, Bit: 7, Kind: System, XSS: xcompCETU | xcompCETS},
	{Name: "gfni", Leaf: leafExt7, Reg: ECX, Bit: 8},
	{Name: "vaes", Leaf: leafExt7, Reg: ECX, Bit: 9, Needs: []string{"avx", "aes"}},
	{Name: "vpclmulqdq", Leaf: leafExt7, Reg: ECX, Bit: 10, Needs: []string{"avx", "pclmulqdq"}},
	{Name: "avx512vnni", Leaf: leafExt7, Reg: ECX, Bit: 11, Needs: []string{"avx512f"}, Aliases: []string{"avx512_vnni"}},
	{Name: "avx512bitalg", Leaf: leafExt7, Reg: ECX, Bit: 12, Needs: []string{"avx512f"}, Aliases: []string{"avx512_bitalg"}},
	{Name: "avx512vpopcntdq", Leaf: leafExt7, Reg: ECX, Bit: 14, Needs: []string{"avx512f"}, Aliases: []string{"avx512_vpopcntdq"}},
	{Name: "la57", Leaf: leafExt7, Reg: ECX, Bit: 16, Kind: System},
	{Name: "rdpid", Leaf: leafExt7, Reg: ECX, Bit: 22},
	{Name: "movdiri", Leaf: leafExt7, Reg: ECX, Bit: 27},
	{Name: "movdir64b", Leaf: leafExt7, Reg: ECX, Bit: 28},
	// Leaf 7.0 EDX.
	{Name: "fsrm", Leaf: leafExt7, Reg: EDX, Bit: 4, Kind: System},
	{Name: "avx512vp2intersect", Leaf: leafExt7, Reg: EDX, Bit: 8, Needs: []string{"avx512f"}},
	{Name: "serialize", Leaf: leafExt7, Reg: EDX, Bit: 14},
	{Name: "tsxldtrk", Leaf: leafExt7, Reg: EDX, Bit: 16},
	{Name: "ibt", Leaf: leafExt7, Reg: EDX, Bit: 20, Kind: System, XSS: xcompCETU | xcompCETS},
	{Name: "amx_bf16", Leaf: leafExt7, Reg: EDX, Bit: 22, Needs: []string{"amx_tile"}},
	{Name: "avx512fp16", Leaf: leafExt7, Reg: EDX, Bit: 23, Needs: []string{"avx512bw"}, Aliases: []string{"avx512_fp16"}},
	{Name: "amx_tile", Leaf: leafExt7, Reg: EDX, Bit: 24, Needs: []string{"xsave"}, XCR0: xcompTileCfg | xcompTileData},
	{Name: "amx_int8", Leaf: leafExt7, Reg: EDX, Bit: 25, Needs: []string{"amx_tile"}},
	{Name: "arch_capabilities", Leaf: leafExt7, Reg: EDX, Bit: 29, Kind: System},
	// Leaf 7.1 EAX.
	{Name: "avx_vnni", Leaf: leafExt7, Subleaf: 1, Reg: EAX, Bit: 4, Needs: []string{"avx"}},
	{Name: "avx512bf16", Leaf: leafExt7, Subleaf: 1, Reg: EAX, Bit: 5, Needs: []string{"avx512f"}, Aliases: []string{"avx512_bf16"}},
	// Leaf 0xD.1 EAX: XSAVE instruction variants.
	{Name: "xsaveopt", Leaf: leafXSave, Subleaf: 1, Reg: EAX, Bit: 0, Kind: System, Needs: []string{"xsave"}},
	{Name: "xsavec", Leaf: leafXSave, Subleaf: 1, Reg: EAX, Bit: 1, Kind: System, Needs: []string{"xsave"}},
	{Name: "xgetbv1", Leaf: leafXSave, Subleaf: 1, Reg: EAX, Bit: 2, Kind: System, Needs: []string{"xsave"}},
	{Name: "xsaves", Leaf: leafXSave, Subleaf: 1, Reg: EAX, Bit: 3, Kind: System, Needs: []string{"xsave"}},
	// Leaf 0x8000_0001.
	{Name: "lahf_lm", Leaf: leafExtFeat, Reg: ECX, Bit: 0, Level: 2},
	{Name: "lzcnt", Leaf: leafExtFeat, Reg: ECX, Bit: 5, Level: 3, Aliases: []string{"abm"}},
	{Name: "sse4a", Leaf: leafExtFeat, Reg: ECX, Bit: 6},
	{Name: "prefetchw", Leaf: leafExtFeat, Reg: ECX, Bit: 8, Aliases: []string{"3dnowprefetch"}},
	{Name: "xop", Leaf: leafExtFeat, Reg: ECX, Bit: 11, Needs: []string{"avx"}},
	{Name: "fma4", Leaf: leafExtFeat, Reg: ECX, Bit: 16, Needs: []string{"avx"}},
	{Name: "tbm", Leaf: leafExtFeat, Reg: ECX, Bit: 21},
	{Name: "perfctr_core", Leaf: leafExtFeat, Reg: ECX, Bit: 23, Kind: System},
	{Name: "syscall", Leaf: leafExtFeat, Reg: EDX, Bit: 11, Level: 1},
	{Name: "nx", Leaf: leafExtFeat, Reg: EDX, Bit: 20, Kind: System},
	{Name: "pdpe1gb", Leaf: leafExtFeat, Reg: EDX, Bit: 26, Kind: System},
	{Name: "rdtscp", Leaf: leafExtFeat, Reg: EDX, Bit: 27, Kind: System},
	{Name: "lm", Leaf: leafExtFeat, Reg: EDX, Bit: 29, Level: 1},
}

// Lookup finds a feature by name or alias, case-insensitively.
func Lookup(name string) *Feature {
	n := strings.ToLower(strings.TrimSpace(name))
	for i := range features {
		f := &features[i]
		if f.Name == n {
			return f
		}
		for _, a := range f.Aliases {
			if a == n {
				return f
			}
		}
	}
	return nil
}

// LevelFeatures lists the ISA features an x86-64 psABI level (1-4)
// includes, all lower levels' included.
func LevelFeatures(level int) []string {
	var out []string
	for _, f := range features {
		if f.Level >= 1 && f.Level <= level {
			out = append(out, f.Name)
		}
	}
	return out
}

// featureRegister says whether (leaf, subleaf, reg) holds named features,
// so that setting one of its bits claims a capability of the host.
func featureRegister(leaf, subleaf uint32, r Reg) bool {
	for _, f := range features {
		if f.Leaf == leaf && f.Subleaf == subleaf && f.Reg == r {
			return true
		}
	}
	return false
}

// featureAt names the feature at a bit, or "".
func featureAt(leaf, subleaf uint32, r Reg, bit int) string {
	for _, f := range features {
		if f.Leaf == leaf && f.Subleaf == subleaf && f.Reg == r && int(f.Bit) == bit {
			return f.Name
		}
	}
	return ""
}
