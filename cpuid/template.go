package cpuid

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Template is a CPU model: changes to the host's supported CPUID, and to
// MSRs, that make every host offering it look alike to a guest.
type Template struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// CPUID modifiers apply in order; at most one per register.
	CPUID []RegisterModifier `json:"cpuid,omitempty"`
	MSRs  []MSRModifier      `json:"msrs,omitempty"`
}

// RegisterModifier changes bits of one CPUID register. Bitmap has one
// character per bit, bit 31 first: 0 clears it, 1 sets it, x keeps the
// host's value.
type RegisterModifier struct {
	Leaf     Hex32  `json:"leaf"`
	Subleaf  uint32 `json:"subleaf"`
	Register string `json:"register"`
	Bitmap   string `json:"bitmap"`
}

// MSRModifier changes bits of one MSR; Bitmap has 64 characters, bit 63
// first.
type MSRModifier struct {
	Index  Hex32  `json:"index"`
	Bitmap string `json:"bitmap"`
}

// Built-in template names. HostName is not a template: it passes the
// host's supported CPUID through, normalised.
const (
	NameV2   = "x86-64-v2"
	NameV3   = "x86-64-v3"
	NameV4   = "x86-64-v4"
	NameT2   = "t2"
	NameC3   = "c3"
	HostName = "host"
)

// BuiltinNames lists the built-in templates, from the one exposing the
// least to the most on a host that has everything.
func BuiltinNames() []string { return []string{NameV2, NameC3, NameV3, NameT2, NameV4} }

var (
	// ErrUnknownTemplate: the name is neither built in nor a file.
	ErrUnknownTemplate = errors.New("unknown CPU template")
	// ErrInvalidTemplate: a template file or entry is malformed.
	ErrInvalidTemplate = errors.New("invalid CPU template")
)

// t2Hidden is what the T2-like template hides: the extensions newer than
// a Skylake-class server core, and their XSAVE state, so a snapshot moves
// freely across generations.
var t2Hidden = []string{
	"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma",
	"avx512vbmi", "avx512vbmi2", "avx512vnni", "avx512bitalg", "avx512vpopcntdq",
	"avx512bf16", "avx512fp16", "avx512vp2intersect",
	"sha", "gfni", "vaes", "vpclmulqdq", "pku", "hle", "rtm", "tsxldtrk", "mpx",
	"amx_tile", "amx_bf16", "amx_int8", "avx_vnni",
}

// c3Extra is what the C3-like template hides on top of T2's.
var c3Extra = []string{"fma", "movbe", "bmi1", "bmi2", "avx2"}

// Builtin returns a fresh copy of a built-in template.
func Builtin(name string) (*Template, error) {
	switch name {
	case NameV2, NameV3, NameV4:
		level := int(name[len(name)-1] - '0')
		return levelTemplate(name, level), nil
	case NameT2:
		return hidingTemplate(NameT2, "T2-like: the host's CPU less AVX-512, SHA, GFNI, VAES, VPCLMULQDQ, PKU, TSX, MPX and AMX, and their XSAVE state", t2Hidden), nil
	case NameC3:
		return hidingTemplate(NameC3, "C3-like: T2 less FMA, MOVBE, BMI1, BMI2 and AVX2", append(append([]string(nil), t2Hidden...), c3Extra...)), nil
	case HostName:
		return &Template{Name: HostName, Description: "the host's supported CPUID, normalised"}, nil
	}
	return nil, fmt.Errorf("%w %q: the built-in templates are %s (and %q for no template); or give a JSON file",
		ErrUnknownTemplate, name, strings.Join(BuiltinNames(), ", "), HostName)
}

// levelTemplate requires every feature of a psABI level and hides every
// other instruction-set extension.
func levelTemplate(name string, level int) *Template {
	b := newBitmaps()
	for _, f := range features {
		switch {
		case f.Level >= 1 && f.Level <= level:
			b.set(&f, '1')
		case f.Kind == ISA:
			b.set(&f, '0')
		}
	}
	return &Template{
		Name:        name,
		Description: fmt.Sprintf("x86-64 psABI level %d exactly: its extensions required, every other extension hidden", level),
		CPUID:       b.modifiers(),
	}
}

func hidingTemplate(name, desc string, hidden []string) *Template {
	b := newBitmaps()
	for _, n := range hidden {
		b.set(Lookup(n), '0')
	}
	return &Template{Name: name, Description: desc, CPUID: b.modifiers()}
}

type regKey struct {
	leaf, subleaf uint32
	reg           Reg
}

func sortRegKeys(keys []regKey) {
	sort.Slice(keys, func(i, j int) bool {
		a, c := keys[i], keys[j]
		if a.leaf != c.leaf {
			return a.leaf < c.leaf
		}
		if a.subleaf != c.subleaf {
			return a.subleaf < c.subleaf
		}
		return a.reg < c.reg
	})
}

// bitmaps collects per-register bitmaps while a template is built.
type bitmaps map[regKey][]byte

func newBitmaps() bitmaps { return bitmaps{} }

func (b bitmaps) set(f *Feature, c byte) {
	k := regKey{f.Leaf, f.Subleaf, f.Reg}
	m, ok := b[k]
	if !ok {
		m = bytes.Repeat([]byte{'x'}, 32)
		b[k] = m
	}
	m[31-int(f.Bit)] = c
}

func (b bitmaps) modifiers() []RegisterModifier {
	keys := make([]regKey, 0, len(b))
	for k := range b {
		keys = append(keys, k)
	}
	sortRegKeys(keys)
	out := make([]RegisterModifier, 0, len(keys))
	for _, k := range keys {
		out = append(out, RegisterModifier{Leaf: Hex32(k.leaf), Subleaf: k.subleaf, Register: k.reg.String(), Bitmap: string(b[k])})
	}
	return out
}

// Load returns the built-in template of that name, or reads a JSON
// template from a file.
func Load(nameOrPath string) (*Template, error) {
	t, err := Builtin(nameOrPath)
	if err == nil || !strings.ContainsAny(nameOrPath, "/.") {
		return t, err
	}
	return LoadFile(nameOrPath)
}

// LoadFile reads and validates a JSON template. A template without a name
// is named after its file.
func LoadFile(path string) (*Template, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CPU template: %w", err)
	}
	t, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("CPU template %s: %w", path, err)
	}
	if t.Name == "" {
		t.Name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	}
	return t, nil
}

// Parse reads a JSON template, refusing unknown fields, and validates it.
func Parse(b []byte) (*Template, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var t Template
	if err := dec.Decode((*templateFields)(&t)); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidTemplate, jsonError(b, err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the template object", ErrInvalidTemplate)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// jsonError adds the line and column to a JSON syntax or type error.
func jsonError(b []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if off < 0 || off > int64(len(b)) {
		return err.Error()
	}
	line := 1 + bytes.Count(b[:off], []byte("\n"))
	col := int(off) - bytes.LastIndexByte(b[:off], '\n')
	return fmt.Sprintf("line %d column %d: %v", line, col, err)
}

// Validate checks every entry, naming the first bad one.
func (t *Template) Validate() error {
	seen := map[regKey]int{}
	for i, m := range t.CPUID {
		where := fmt.Sprintf("cpuid[%d] (leaf %#x subleaf %d %s)", i, uint32(m.Leaf), m.Subleaf, m.Register)
		r, err := ParseReg(m.Register)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidTemplate, where, err)
		}
		if !validLeaf(uint32(m.Leaf)) {
			return fmt.Errorf("%w: %s: leaf %#x is in no CPUID range (0x0…, 0x40000000…, 0x80000000…)", ErrInvalidTemplate, where, uint32(m.Leaf))
		}
		if _, _, err := ParseBitmap(m.Bitmap, 32); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidTemplate, where, err)
		}
		k := regKey{uint32(m.Leaf), m.Subleaf, r}
		if j, dup := seen[k]; dup {
			return fmt.Errorf("%w: %s: the same register as cpuid[%d]; merge them into one bitmap", ErrInvalidTemplate, where, j)
		}
		seen[k] = i
	}
	msrs := map[uint32]int{}
	for i, m := range t.MSRs {
		where := fmt.Sprintf("msrs[%d] (index %#x)", i, uint32(m.Index))
		if _, _, err := ParseBitmap(m.Bitmap, 64); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidTemplate, where, err)
		}
		if j, dup := msrs[uint32(m.Index)]; dup {
			return fmt.Errorf("%w: %s: the same MSR as msrs[%d]; merge them into one bitmap", ErrInvalidTemplate, where, j)
		}
		msrs[uint32(m.Index)] = i
	}
	return nil
}

func validLeaf(l uint32) bool {
	switch l & 0xffff_0000 {
	case 0, 0x4000_0000, 0x8000_0000:
		return true
	}
	return false
}

// ParseBitmap reads a 0/1/x bitmap of width characters, most significant
// bit first, into the mask of bits it fixes and their values.
func ParseBitmap(s string, width int) (mask, value uint64, err error) {
	if len(s) != width {
		return 0, 0, fmt.Errorf("bitmap %q has %d characters, want %d: one 0, 1 or x per bit, bit %d first", s, len(s), width, width-1)
	}
	for i := 0; i < width; i++ {
		bit := uint64(1) << (width - 1 - i)
		switch s[i] {
		case '0':
			mask |= bit
		case '1':
			mask |= bit
			value |= bit
		case 'x', 'X':
		default:
			return 0, 0, fmt.Errorf("bitmap %q: character %d (bit %d) is %q, want 0, 1 or x", s, i+1, width-1-i, s[i])
		}
	}
	return mask, value, nil
}

// MarshalIndent is the template as a JSON file a person can edit.
func (t *Template) MarshalIndent() ([]byte, error) {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// UnmarshalJSON reads a template object, or a string naming a built-in
// template (`"cpu_template": "x86-64-v3"` in a VM config).
func (t *Template) UnmarshalJSON(b []byte) error {
	var name string
	if json.Unmarshal(b, &name) == nil {
		bt, err := Builtin(name)
		if err != nil {
			return err
		}
		*t = *bt
		return nil
	}
	p, err := Parse(b)
	if err != nil {
		return err
	}
	*t = *p
	return nil
}

// templateFields is Template without its UnmarshalJSON, so Parse can
// decode the fields strictly without recursing.
type templateFields Template
