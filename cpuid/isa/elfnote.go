package isa

import (
	"debug/elf"
	"encoding/binary"
	"math/bits"
)

// GNU property note constants (the x86-64 psABI, "Program Property").
const (
	ntGNUPropertyType0 = 5
	// propX86ISANeeded: the ISA levels the object needs to run (an OR
	// property: any input needing one makes the output need it).
	propX86ISANeeded = 0xc0008002
	// propX86ISAUsed: the levels its instructions use (kept only when every
	// input records it).
	propX86ISAUsed = 0xc0010002
)

// isaLevels reads the GNU_PROPERTY_X86_ISA_1_NEEDED and _USED bitmaps (bit 0
// baseline, 1 v2, 2 v3, 3 v4) from .note.gnu.property.
func isaLevels(ef *elf.File) (needed, used uint32, ok bool) {
	sec := ef.Section(".note.gnu.property")
	if sec == nil {
		return 0, 0, false
	}
	data, err := sec.Data()
	if err != nil {
		return 0, 0, false
	}
	bo := ef.ByteOrder
	align := 8
	if ef.Class == elf.ELFCLASS32 {
		align = 4
	}
	for len(data) >= 12 {
		namesz, descsz, typ := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
		nameEnd := 12 + roundUp(int(namesz), 4)
		descEnd := nameEnd + roundUp(int(descsz), align)
		if namesz > 64 || nameEnd > len(data) || descEnd > len(data) || int(descsz) > len(data)-nameEnd {
			return needed, used, ok
		}
		if typ == ntGNUPropertyType0 && string(data[12:12+namesz]) == "GNU\x00" {
			n, u, found := readProps(bo, data[nameEnd:nameEnd+int(descsz)], align)
			needed |= n
			used |= u
			ok = ok || found
		}
		data = data[descEnd:]
	}
	return needed, used, ok
}

func readProps(bo binary.ByteOrder, d []byte, align int) (needed, used uint32, found bool) {
	for len(d) >= 8 {
		typ, sz := bo.Uint32(d), bo.Uint32(d[4:])
		end := 8 + roundUp(int(sz), align)
		if int(sz) > len(d)-8 {
			return
		}
		if sz >= 4 {
			switch typ {
			case propX86ISANeeded:
				needed, found = bo.Uint32(d[8:]), true
			case propX86ISAUsed:
				used, found = bo.Uint32(d[8:]), true
			}
		}
		if end > len(d) {
			return
		}
		d = d[end:]
	}
	return
}

func roundUp(n, a int) int { return (n + a - 1) &^ (a - 1) }

// levelOf is the highest psABI level (1-4) a level bitmap names; 1 for
// none.
func levelOf(bitmap uint32) int {
	if bitmap&0xf == 0 {
		return 1
	}
	return bits.Len32(bitmap & 0xf)
}
