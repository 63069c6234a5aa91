package isa

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/arch/x86/x86asm"
)

// Inst is one decoded instruction.
type Inst struct {
	Len       int      // length in bytes (>= 1)
	Exts      []string // extensions it needs beyond the x86-64 baseline, sorted, no duplicates; nil for baseline instructions
	Op        string   // a short mnemonic-ish description for debugging, e.g. "VPADDD(evex.512)" or x86asm's Op string
	VEX, EVEX bool
}

// Prefix and escape bytes (64-bit mode).
const (
	decPfxOpSize   = 0x66
	decPfxAddrSize = 0x67
	decPfxLock     = 0xF0
	decPfxRepNE    = 0xF2
	decPfxRep      = 0xF3
	decPfxCS       = 0x2E
	decPfxSS       = 0x36
	decPfxDS       = 0x3E
	decPfxES       = 0x26
	decPfxFS       = 0x64
	decPfxGS       = 0x65
	decEscape0F    = 0x0F
	decEscape38    = 0x38
	decEscape3A    = 0x3A
	decVEX3        = 0xC4
	decVEX2        = 0xC5
	decEVEX        = 0x62
	decXOP         = 0x8F

	decMaxLen = 15 // architectural limit
)

// Opcode maps, numbered as VEX.mmmmm / EVEX.mmm number them.
const (
	decMap1Byte = 0
	decMap0F    = 1
	decMap0F38  = 2
	decMap0F3A  = 3
	decMap5     = 5 // EVEX only (AVX512-FP16)
	decMap6     = 6 // EVEX only (AVX512-FP16)
)

// Mandatory-prefix / VEX.pp values.
const (
	decPPNone = 0
	decPP66   = 1
	decPPF3   = 2
	decPPF2   = 3
)

var decErrTruncated = errors.New("isa: truncated instruction")

// decPrefixes is what the legacy prefixes and REX of one instruction say.
type decPrefixes struct {
	opSize, addrSize, lock bool
	rep                    byte // last of F2/F3 seen, 0 if none: it wins as mandatory prefix
	rex                    byte // REX in force (immediately before the opcode), 0 if none
	sawREX                 bool // any REX, even one voided by a later prefix
}

// pp is the mandatory prefix in VEX.pp terms: F2/F3 override 66.
func (p decPrefixes) pp() int {
	switch {
	case p.rep == decPfxRep:
		return decPPF3
	case p.rep == decPfxRepNE:
		return decPPF2
	case p.opSize:
		return decPP66
	}
	return decPPNone
}

// Decode decodes the instruction at the start of code in 64-bit mode.
// It returns an error (never panics) on truncated or undecodable bytes; the
// caller then skips one byte.
func Decode(code []byte) (Inst, error) {
	if len(code) > decMaxLen {
		code = code[:decMaxLen] // nothing valid is longer; bounds every later index
	}
	var p decPrefixes
	i := 0
prefixes:
	for ; i < len(code); i++ {
		b := code[i]
		switch b {
		case decPfxOpSize:
			p.opSize = true
		case decPfxAddrSize:
			p.addrSize = true
		case decPfxLock:
			p.lock = true
		case decPfxRepNE, decPfxRep:
			p.rep = b
		case decPfxCS, decPfxSS, decPfxDS, decPfxES, decPfxFS, decPfxGS:
		default:
			if b&0xF0 == 0x40 {
				p.rex = b
				p.sawREX = true
				continue // a REX followed by another prefix is ignored; the last one counts
			}
			break prefixes
		}
		p.rex = 0
	}
	if i >= len(code) {
		return Inst{}, decErrTruncated
	}
	switch code[i] {
	case decVEX2, decVEX3, decEVEX:
		// In 64-bit mode these are always VEX/EVEX; only 67 and segment
		// overrides may precede them.
		if p.opSize || p.lock || p.rep != 0 || p.sawREX {
			return Inst{}, fmt.Errorf("vex: 66/F2/F3/F0/REX prefix before %#02x", code[i])
		}
		return vexDecode(code, i)
	}
	return legDecode(code, i, p)
}

// decModRM measures ModRM, SIB and displacement at code[pos:]. It returns
// the ModRM fields and the position after the displacement.
func decModRM(code []byte, pos int) (mod, reg, rm byte, end int, err error) {
	if pos >= len(code) {
		return 0, 0, 0, 0, decErrTruncated
	}
	m := code[pos]
	pos++
	mod, reg, rm = m>>6, (m>>3)&7, m&7
	if mod == 3 {
		return mod, reg, rm, pos, nil
	}
	// 64-bit and 32-bit (67 prefix) addressing share the ModRM layout.
	base := byte(0)
	if rm == 4 {
		if pos >= len(code) {
			return 0, 0, 0, 0, decErrTruncated
		}
		base = code[pos] & 7
		pos++
	}
	switch {
	case mod == 1:
		pos++
	case mod == 2:
		pos += 4
	case rm == 5: // RIP-relative
		pos += 4
	case rm == 4 && base == 5: // SIB without base
		pos += 4
	}
	if pos > len(code) {
		return 0, 0, 0, 0, decErrTruncated
	}
	return mod, reg, rm, pos, nil
}

// decExtSet accumulates extension names.
type decExtSet []string

func (s *decExtSet) add(names ...string) { *s = append(*s, names...) }

// list returns the sorted, de-duplicated names, or nil.
func (s decExtSet) list() []string {
	if len(s) == 0 {
		return nil
	}
	sort.Strings(s)
	out := s[:1]
	for _, n := range s[1:] {
		if n != out[len(out)-1] {
			out = append(out, n)
		}
	}
	return out
}

// decX86asmOp asks x86asm for a mnemonic, trusting it only when it agrees
// with the length we computed.
func decX86asmOp(code []byte) string {
	in, err := x86asm.Decode(code, 64)
	if err != nil || in.Len != len(code) || in.Op == 0 {
		return ""
	}
	return in.Op.String()
}

// Immediate kinds for the legacy length tables.
const (
	legImmNone  = iota
	legImm8     // also rel8
	legImm16    // RET/RETF imm16
	legImmZ     // 16 or 32 bits by operand size
	legImm32    // rel32: 32 bits whatever the operand size (Intel 64-bit semantics)
	legImmV     // B8+r: 16, 32 or 64 bits
	legImmMoffs // A0-A3: 64-bit offset, 32 with 67
	legImmEnter // C8: imm16 + imm8
	legImmGrp3  // F6/F7: imm only for /0 and /1
	legImm8x2   // SSE4a EXTRQ/INSERTQ with two imm8
)

// Shape flags for the legacy length tables.
const (
	legModRM   = 1 << 4
	legInvalid = 1 << 5
	legRegOnly = 1 << 6 // MOV to/from CR/DR: ModRM is always a register form
	legImmMask = 0x0F
)

// legOneByte and legMap0F give, per opcode, ModRM presence and immediate
// kind, from the SDM opcode maps (Vol. 2 App. A) for 64-bit mode.
var (
	legOneByte = legBuildOneByte()
	legMap0F   = legBuildMap0F()
)

func legBuildOneByte() (t [256]byte) {
	for op := 0; op < 0x40; op++ {
		switch op & 7 {
		case 0, 1, 2, 3:
			t[op] = legModRM
		case 4:
			t[op] = legImm8
		case 5:
			t[op] = legImmZ
		default: // 06/07/0E/16/17/1E/1F/27/2F/37/3F and the prefixes
			t[op] = legInvalid
		}
	}
	set := func(v byte, ops ...int) {
		for _, op := range ops {
			t[op] = v
		}
	}
	set(legInvalid, 0x60, 0x61, 0x82, 0x9A, 0xCE, 0xD4, 0xD5, 0xD6, 0xEA)
	set(legModRM, 0x63, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F,
		0xD0, 0xD1, 0xD2, 0xD3, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE, 0xFF)
	set(legImmZ, 0x68, 0xA9)
	set(legModRM|legImmZ, 0x69, 0x81, 0xC7)
	set(legImm8, 0x6A, 0xA8, 0xCD, 0xE0, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xEB)
	set(legModRM|legImm8, 0x6B, 0x80, 0x83, 0xC0, 0xC1, 0xC6)
	for op := 0x70; op <= 0x7F; op++ {
		t[op] = legImm8
	}
	for op := 0xB0; op <= 0xB7; op++ {
		t[op] = legImm8
	}
	for op := 0xB8; op <= 0xBF; op++ {
		t[op] = legImmV
	}
	set(legImmMoffs, 0xA0, 0xA1, 0xA2, 0xA3)
	set(legImm16, 0xC2, 0xCA)
	set(legImmEnter, 0xC8)
	set(legImm32, 0xE8, 0xE9)
	set(legModRM|legImmGrp3, 0xF6, 0xF7)
	// 40-5F, 6C-6F, 90-99, 9B-9F, A4-A7, AA-AF, C3, C9, CB, CC, CF, D7,
	// EC-EF, F1, F4, F5, F8-FD take no operand bytes (zero value).
	return t
}

func legBuildMap0F() (t [256]byte) {
	for op := range t {
		t[op] = legModRM
	}
	set := func(v byte, ops ...int) {
		for _, op := range ops {
			t[op] = v
		}
	}
	set(legInvalid, 0x04, 0x0A, 0x0C, 0x24, 0x25, 0x26, 0x27, 0x36, 0x39,
		0x3B, 0x3C, 0x3D, 0x3E, 0x3F, 0x7A, 0x7B, 0xA6, 0xA7)
	set(legImmNone, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30, 0x31, 0x32,
		0x33, 0x34, 0x35, 0x37, 0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA,
		0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF)
	set(legModRM|legRegOnly, 0x20, 0x21, 0x22, 0x23)
	set(legModRM|legImm8, 0x0F, 0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6)
	for op := 0x80; op <= 0x8F; op++ {
		t[op] = legImm32
	}
	return t
}

// legDecode measures and classifies a legacy-encoded instruction whose
// opcode starts at code[i].
func legDecode(code []byte, i int, p decPrefixes) (Inst, error) {
	mapID := decMap1Byte
	op := code[i]
	i++
	if op == decEscape0F {
		if i >= len(code) {
			return Inst{}, decErrTruncated
		}
		op = code[i]
		i++
		mapID = decMap0F
		if op == decEscape38 || op == decEscape3A {
			if op == decEscape38 {
				mapID = decMap0F38
			} else {
				mapID = decMap0F3A
			}
			if i >= len(code) {
				return Inst{}, decErrTruncated
			}
			op = code[i]
			i++
		}
	}
	var shape byte
	switch mapID {
	case decMap1Byte:
		shape = legOneByte[op]
		if op == decXOP && i < len(code) && code[i]&0x1F >= 8 {
			return Inst{}, errors.New("xop: AMD XOP encoding not supported")
		}
	case decMap0F:
		shape = legMap0F[op]
		if (op == 0x78 || op == 0x79) && (p.pp() == decPP66 || p.pp() == decPPF2) {
			shape = legModRM // SSE4a EXTRQ/INSERTQ, not VMREAD/VMWRITE
			if op == 0x78 {
				shape |= legImm8x2
			}
		}
	case decMap0F38:
		shape = legModRM
	case decMap0F3A:
		shape = legModRM | legImm8
	}
	if shape&legInvalid != 0 {
		return Inst{}, fmt.Errorf("legacy: invalid opcode %#02x in map %d", op, mapID)
	}
	modrmPos := -1
	var mod, reg, rm byte
	if shape&legModRM != 0 {
		modrmPos = i
		if shape&legRegOnly != 0 {
			if i >= len(code) {
				return Inst{}, decErrTruncated
			}
			mod, reg, rm = 3, (code[i]>>3)&7, code[i]&7
			i++
		} else {
			var err error
			mod, reg, rm, i, err = decModRM(code, i)
			if err != nil {
				return Inst{}, err
			}
		}
	}
	_ = rm
	z := 4 // operand-size-dependent immediates; REX.W beats 66
	if p.opSize && p.rex&0x08 == 0 {
		z = 2
	}
	switch shape & legImmMask {
	case legImm8:
		i++
	case legImm16:
		i += 2
	case legImmZ:
		i += z
	case legImm32:
		i += 4
	case legImmV:
		if p.rex&0x08 != 0 {
			i += 8
		} else {
			i += z
		}
	case legImmMoffs:
		if p.addrSize {
			i += 4
		} else {
			i += 8
		}
	case legImmEnter:
		i += 3
	case legImmGrp3:
		if reg < 2 {
			if op == 0xF6 {
				i++
			} else {
				i += z
			}
		}
	case legImm8x2:
		i += 2
	}
	if i > len(code) {
		return Inst{}, decErrTruncated
	}
	if mapID == decMap1Byte && op == 0x9B {
		if in, ok := legFWAIT(code, i); ok {
			return in, nil
		}
	}
	in := Inst{Len: i}
	var exts decExtSet
	name := legSpecial(code, mapID, op, p, modrmPos, mod, reg, &exts)
	if name == "" {
		name = decX86asmOp(code[:i])
		legExtsByOp(name, &exts)
	}
	if name == "" {
		name = fmt.Sprintf("legacy.map%d.%02X", mapID, op)
	}
	// HLE: XACQUIRE/XRELEASE are F2/F3 on a locked instruction or XCHG
	// with memory, F3 also on a MOV store.
	if mapID == decMap1Byte && mod != 3 && modrmPos >= 0 {
		switch {
		case p.rep != 0 && p.lock:
			exts.add("hle")
		case p.rep != 0 && (op == 0x86 || op == 0x87):
			exts.add("hle")
		case p.rep == decPfxRep && (op == 0x88 || op == 0x89 || op == 0xC6 || op == 0xC7):
			exts.add("hle")
		}
	} else if p.rep != 0 && p.lock && mod != 3 && modrmPos >= 0 {
		exts.add("hle") // locked 0F-map ops: BTS/BTR/BTC, CMPXCHG, XADD
	}
	in.Op = name
	in.Exts = exts.list()
	return in, nil
}

// vexFields is what a VEX or EVEX prefix says, plus the opcode and ModRM.
type vexFields struct {
	evex   bool
	mapID  int
	pp     int
	w      bool
	l      int // VEX.L, or EVEX.L'L (0..3)
	b      bool
	op     byte
	hasRM  bool
	mod    byte
	reg    byte
	prefix int // offset of C4/C5/62 in code
}

// vexDecode measures and classifies a VEX/EVEX instruction whose C4/C5/62
// byte is at code[i] (after any 67 or segment prefixes).
func vexDecode(code []byte, i int) (Inst, error) {
	f := vexFields{prefix: i}
	switch code[i] {
	case decVEX2:
		if i+1 >= len(code) {
			return Inst{}, decErrTruncated
		}
		b1 := code[i+1]
		f.mapID = decMap0F
		f.l = int(b1>>2) & 1
		f.pp = int(b1 & 3)
		i += 2
	case decVEX3:
		if i+2 >= len(code) {
			return Inst{}, decErrTruncated
		}
		b1, b2 := code[i+1], code[i+2]
		f.mapID = int(b1 & 0x1F)
		if f.mapID < decMap0F || f.mapID > decMap0F3A {
			return Inst{}, fmt.Errorf("vex: reserved map %d", f.mapID)
		}
		f.w = b2&0x80 != 0
		f.l = int(b2>>2) & 1
		f.pp = int(b2 & 3)
		i += 3
	default: // EVEX
		if i+3 >= len(code) {
			return Inst{}, decErrTruncated
		}
		p0, p1, p2 := code[i+1], code[i+2], code[i+3]
		// P0 bit 3 is reserved (0) and bits 2:0 select the map since
		// AVX512-FP16; map 4 and 7 belong to APX, which we do not decode.
		if p0&0x08 != 0 {
			return Inst{}, fmt.Errorf("evex: reserved bit P0.3 set")
		}
		f.mapID = int(p0 & 7)
		switch f.mapID {
		case decMap0F, decMap0F38, decMap0F3A, decMap5, decMap6:
		default:
			return Inst{}, fmt.Errorf("evex: reserved map %d", f.mapID)
		}
		if p1&0x04 == 0 {
			return Inst{}, fmt.Errorf("evex: reserved bit P1.2 clear")
		}
		f.evex = true
		f.w = p1&0x80 != 0
		f.pp = int(p1 & 3)
		f.l = int(p2>>5) & 3
		f.b = p2&0x10 != 0
		i += 4
	}
	if i >= len(code) {
		return Inst{}, decErrTruncated
	}
	f.op = code[i]
	i++
	// VZEROUPPER/VZEROALL are the only VEX instructions without ModRM.
	if !(f.mapID == decMap0F && f.op == 0x77 && !f.evex) {
		var err error
		f.hasRM = true
		f.mod, f.reg, _, i, err = decModRM(code, i)
		if err != nil {
			return Inst{}, err
		}
	}
	if vexHasImm8(f) {
		i++
	}
	if i > len(code) {
		return Inst{}, decErrTruncated
	}
	in := Inst{Len: i, VEX: !f.evex, EVEX: f.evex}
	name := ""
	if f.mapID <= decMap0F3A {
		// x86asm wants the VEX prefix first; 67/segment prefixes do not
		// change the mnemonic.
		name = vexX86asmName(code[f.prefix:i])
	}
	var exts decExtSet
	if f.evex {
		evexExts(f, name, &exts)
	} else {
		vexExts(f, name, &exts)
	}
	in.Exts = exts.list()
	in.Op = vexOpString(f, name)
	return in, nil
}

// vexHasImm8 reports whether the opcode takes an imm8 (or an is4 register
// byte, which has the same size).
func vexHasImm8(f vexFields) bool {
	switch f.mapID {
	case decMap0F3A:
		return true
	case decMap0F:
		switch f.op {
		case 0x70, 0x71, 0x72, 0x73, 0xC2, 0xC4, 0xC5, 0xC6:
			return true
		}
	}
	// Maps 0F38, 5 and 6 have no immediates.
	return false
}

func vexOpString(f vexFields, name string) string {
	enc := "vex"
	if f.evex {
		enc = "evex"
	}
	if name == "" {
		name = fmt.Sprintf("%s.map%d.pp%d.%02X", enc, f.mapID, f.pp, f.op)
	}
	if f.evex && f.b && f.mod == 3 {
		return fmt.Sprintf("%s(%s.512.rc)", name, enc) // L'L holds rounding control
	}
	return fmt.Sprintf("%s(%s.%d)", name, enc, 128<<f.l)
}

// legFWAIT joins FWAIT (9B) at code[:i] with a following x87 instruction,
// as the SDM (FSTSW = 9B DD /7, ...) and objdump both count them as one.
func legFWAIT(code []byte, i int) (Inst, bool) {
	j := i
	for j < len(code) {
		b := code[j]
		switch {
		case b == decPfxOpSize || b == decPfxAddrSize || b == decPfxLock || b == decPfxRepNE || b == decPfxRep,
			b == decPfxCS || b == decPfxSS || b == decPfxDS || b == decPfxES || b == decPfxFS || b == decPfxGS,
			b&0xF0 == 0x40:
			j++
			continue
		}
		break
	}
	if j >= len(code) || code[j] < 0xD8 || code[j] > 0xDF {
		return Inst{}, false
	}
	sub, err := Decode(code[i:])
	if err != nil || i+sub.Len > decMaxLen {
		return Inst{}, false
	}
	sub.Len += i
	sub.Op = "FWAIT;" + sub.Op
	return sub, true
}

// vexX86asmName asks x86asm for the mnemonic of the VEX/EVEX instruction
// in b (prefix first). x86asm's tables list W-ignored and length-ignored
// instructions with W=0 and L=0 only, so on failure it retries with W
// flipped and with L cleared: an instruction that fails with the bits as
// encoded can only match the other way if those bits are ignored.
func vexX86asmName(b []byte) string {
	if name := decX86asmOp(b); name != "" {
		return name
	}
	var wIdx, lIdx int
	var wBit, lMask byte
	switch b[0] {
	case decVEX2:
		lIdx, lMask = 1, 0x04 // no W bit
	case decVEX3:
		wIdx, wBit, lIdx, lMask = 2, 0x80, 2, 0x04
	default: // EVEX
		wIdx, wBit, lIdx, lMask = 2, 0x80, 3, 0x60
	}
	c := make([]byte, len(b))
	for _, try := range [...]struct{ flipW, clearL bool }{{true, false}, {false, true}, {true, true}} {
		if try.flipW && wBit == 0 || try.clearL && b[lIdx]&lMask == 0 {
			continue
		}
		copy(c, b)
		if try.flipW {
			c[wIdx] ^= wBit
		}
		if try.clearL {
			c[lIdx] &^= lMask
		}
		if name := decX86asmOp(c); name != "" {
			return name
		}
	}
	return ""
}
