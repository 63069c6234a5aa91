package cpuid

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// FlagSignificantIndex is KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry
// applies to one subleaf only.
const FlagSignificantIndex = 1

// Entry is one CPUID leaf (and subleaf) as KVM describes it.
type Entry struct {
	Leaf    Hex32  `json:"leaf"`
	Subleaf uint32 `json:"subleaf"`
	Flags   uint32 `json:"flags"`
	EAX     Hex32  `json:"eax"`
	EBX     Hex32  `json:"ebx"`
	ECX     Hex32  `json:"ecx"`
	EDX     Hex32  `json:"edx"`
}

// Hex32 is a 32-bit value written in JSON as a "0x…" string, and read from
// either such a string or a plain number.
type Hex32 uint32

func (h Hex32) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf(`"0x%08x"`, uint32(h))), nil
}

func (h *Hex32) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		s = string(b)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 32)
	if err != nil {
		return fmt.Errorf("%s is not a 32-bit number (write 7, \"7\" or \"0x7\")", b)
	}
	*h = Hex32(v)
	return nil
}

// Reg names one of the four CPUID output registers.
type Reg uint8

const (
	EAX Reg = iota
	EBX
	ECX
	EDX
)

var regNames = [...]string{"eax", "ebx", "ecx", "edx"}

func (r Reg) String() string {
	if int(r) < len(regNames) {
		return regNames[r]
	}
	return fmt.Sprintf("reg(%d)", uint8(r))
}

// ParseReg reads a register name: eax, ebx, ecx or edx.
func ParseReg(s string) (Reg, error) {
	for i, n := range regNames {
		if strings.EqualFold(s, n) {
			return Reg(i), nil
		}
	}
	return 0, fmt.Errorf("register %q: want eax, ebx, ecx or edx", s)
}

// Get returns register r.
func (e *Entry) Get(r Reg) uint32 {
	switch r {
	case EAX:
		return uint32(e.EAX)
	case EBX:
		return uint32(e.EBX)
	case ECX:
		return uint32(e.ECX)
	}
	return uint32(e.EDX)
}

// Set sets register r.
func (e *Entry) Set(r Reg, v uint32) {
	switch r {
	case EAX:
		e.EAX = Hex32(v)
	case EBX:
		e.EBX = Hex32(v)
	case ECX:
		e.ECX = Hex32(v)
	default:
		e.EDX = Hex32(v)
	}
}

// Table is a whole CPUID description: KVM_GET_SUPPORTED_CPUID's answer, or
// what one vCPU is given.
type Table []Entry

// Clone returns a copy that shares nothing with t.
func (t Table) Clone() Table { return append(Table(nil), t...) }

// Find returns the entry for leaf and subleaf, or nil. An entry without
// the significant-index flag answers every subleaf.
func (t Table) Find(leaf, subleaf uint32) *Entry {
	for i := range t {
		e := &t[i]
		if uint32(e.Leaf) == leaf && (e.Flags&FlagSignificantIndex == 0 || e.Subleaf == subleaf) {
			return e
		}
	}
	return nil
}

// Reg returns one register of leaf.subleaf, and whether the table has it.
func (t Table) Reg(leaf, subleaf uint32, r Reg) (uint32, bool) {
	if e := t.Find(leaf, subleaf); e != nil {
		return e.Get(r), true
	}
	return 0, false
}

// Has says whether the table sets feature f.
func (t Table) Has(f *Feature) bool {
	v, ok := t.Reg(f.Leaf, f.Subleaf, f.Reg)
	return ok && v&(1<<f.Bit) != 0
}

// Features lists the named features the table sets, in table order.
func (t Table) Features() []string {
	var out []string
	for i := range features {
		if t.Has(&features[i]) {
			out = append(out, features[i].Name)
		}
	}
	return out
}

// MaxLeaf is the highest leaf of the range that leaf belongs to (basic
// 0x0…, hypervisor 0x4000_0000…, extended 0x8000_0000…), as the table's
// range head reports it.
func (t Table) MaxLeaf(leaf uint32) uint32 {
	base := leaf & 0xffff_0000
	if v, ok := t.Reg(base, 0, EAX); ok {
		return v
	}
	return 0
}

// sort orders a table by leaf, then subleaf, for stable output.
func (t Table) sort() {
	sort.SliceStable(t, func(i, j int) bool {
		if t[i].Leaf != t[j].Leaf {
			return t[i].Leaf < t[j].Leaf
		}
		return t[i].Subleaf < t[j].Subleaf
	})
}

// Dump is a recorded table with where it came from: the files in
// testdata/hosts, and what `kindling cpu show --dump` writes.
type Dump struct {
	CPU       string `json:"cpu"`
	Vendor    string `json:"vendor,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Source    string `json:"source,omitempty"`
	Converted string `json:"converted,omitempty"`
	Entries   Table  `json:"entries"`
}

// LoadDump reads a recorded table.
func LoadDump(path string) (*Dump, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cpuid dump: %w", err)
	}
	var d Dump
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("cpuid dump %s: %w", path, err)
	}
	if len(d.Entries) == 0 {
		return nil, fmt.Errorf("cpuid dump %s: no entries", path)
	}
	return &d, nil
}

// Vendor reads the vendor string from leaf 0.
func (t Table) Vendor() string {
	e := t.Find(0, 0)
	if e == nil {
		return ""
	}
	var b [12]byte
	for i, v := range []uint32{uint32(e.EBX), uint32(e.EDX), uint32(e.ECX)} {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	return string(b[:])
}

// IsAMD picks the AMD-specific leaves to normalise.
func (t Table) IsAMD() bool {
	v := t.Vendor()
	return v == "AuthenticAMD" || v == "HygonGenuine"
}
