package profiler

import (
	"debug/elf"
)

// go120PCLnTabMagic opens a .gopclntab whose _func records carry
// startLine (Go 1.20 and later; internal/abi.Go120PCLnTabMagic).
const go120PCLnTabMagic = 0xfffffff1

// goStartLines reads every function's declaration line (_func.startLine)
// from .gopclntab, in the order of its function table, which is the order
// of debug/gosym's Table.Funcs: gosym reads the same table but does not
// expose that field. nil if the table is older or malformed.
func goStartLines(ef *elf.File) []int32 {
	sec := ef.Section(".gopclntab")
	if sec == nil {
		return nil
	}
	data, err := sec.Data()
	if err != nil || len(data) < 8 || ef.ByteOrder.Uint32(data) != go120PCLnTabMagic {
		return nil
	}
	// pcHeader: magic u32, pad, pad, minLC, ptrSize u8, then words:
	// nfunc, nfiles, (unused), funcnameOffset, cuOffset, filetabOffset,
	// pctabOffset, pclnOffset.
	ptr := int(data[7])
	if ptr != 4 && ptr != 8 || len(data) < 8+8*ptr {
		return nil
	}
	word := func(i int) uint64 {
		if ptr == 4 {
			return uint64(ef.ByteOrder.Uint32(data[8+4*i:]))
		}
		return ef.ByteOrder.Uint64(data[8+8*i:])
	}
	nfunc, pcln := word(0), word(7)
	if pcln > uint64(len(data)) {
		return nil
	}
	// functab: {entryOff, funcOff u32} per function (and one past the
	// end); startLine is the tenth u32 of a _func, at byte 36.
	ftab := data[pcln:]
	if nfunc > uint64(len(ftab)/8) {
		return nil
	}
	const startLineOff = 36
	out := make([]int32, nfunc)
	for i := range out {
		f := uint64(ef.ByteOrder.Uint32(ftab[8*i+4:]))
		if f+startLineOff+4 > uint64(len(ftab)) {
			return nil
		}
		out[i] = int32(ef.ByteOrder.Uint32(ftab[f+startLineOff:]))
	}
	return out
}
