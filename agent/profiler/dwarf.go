package profiler

import (
	"debug/dwarf"
	"sort"
)

// dwarfTable answers "which source frames is this PC" from DWARF: the
// subprogram holding it, the inlined calls nested there (so each inlined
// function is its own frame, as pprof and PGO expect), and the line table.
// A compile unit is decoded the first time a PC in it is looked up, so
// the memory kept is that of the packages the task spends time in, not
// the whole binary's.
type dwarfTable struct {
	d       *dwarf.Data
	cus     []cuRange // every unit's address ranges, sorted; built on first use
	indexed bool
	units   map[dwarf.Offset]*dwarfUnit
	origins map[dwarf.Offset]origin // abstract subprograms named by inlined calls
}

// cuRange is one address range of a compile unit.
type cuRange struct {
	low, high uint64
	off       dwarf.Offset
}

// origin is what a frame needs from a function's declaration.
type origin struct {
	name      string
	startLine int64
}

type dwarfUnit struct {
	funcs []funcRange // sorted by low
	rows  []lineRow   // sorted by addr
	files []string
}

type funcRange struct {
	low, high uint64
	fn        *dwarfFunc
}

type dwarfFunc struct {
	origin
	inlines []inlined // every inlined call in the function, any depth
}

// inlined is one address range of an inlined call: the callee, and the
// position of the call in the function one level out.
type inlined struct {
	low, high uint64
	depth     int // 1: called from the subprogram itself
	origin
	callFile string
	callLine int64
}

type lineRow struct {
	addr uint64
	line uint32
	file uint32 // index into dwarfUnit.files
	end  bool   // end_sequence: no code from addr on
}

func newDwarfTable(d *dwarf.Data) *dwarfTable {
	return &dwarfTable{d: d, units: make(map[dwarf.Offset]*dwarfUnit), origins: make(map[dwarf.Offset]origin)}
}

// frames returns the source frames at pc, innermost first, or nil if
// DWARF does not cover pc.
func (t *dwarfTable) frames(pc uint64) []srcFrame {
	u := t.unit(pc)
	if u == nil {
		return nil
	}
	i := sort.Search(len(u.funcs), func(i int) bool { return u.funcs[i].high > pc })
	if i == len(u.funcs) || u.funcs[i].low > pc {
		return nil
	}
	fn := u.funcs[i].fn
	file, line := u.line(pc)

	// The inlined calls holding pc, one per depth, outermost first.
	var chain []*inlined
	for j := range fn.inlines {
		in := &fn.inlines[j]
		if in.low <= pc && pc < in.high && in.depth == len(chain)+1 {
			chain = append(chain, in)
		}
	}
	out := make([]srcFrame, 0, len(chain)+1)
	for k := len(chain); k >= 0; k-- {
		f := srcFrame{origin: fn.origin, file: file, line: line}
		if k > 0 {
			f.origin = chain[k-1].origin
		}
		out = append(out, f)
		if k > 0 { // the next frame out is at the call of this one
			file, line = chain[k-1].callFile, chain[k-1].callLine
		}
	}
	return out
}

// entry returns the start of the function holding pc.
func (t *dwarfTable) entry(pc uint64) (uint64, bool) {
	u := t.unit(pc)
	if u == nil {
		return 0, false
	}
	i := sort.Search(len(u.funcs), func(i int) bool { return u.funcs[i].high > pc })
	if i == len(u.funcs) || u.funcs[i].low > pc {
		return 0, false
	}
	return u.funcs[i].low, true
}

func (u *dwarfUnit) line(pc uint64) (string, int64) {
	i := sort.Search(len(u.rows), func(i int) bool { return u.rows[i].addr > pc }) - 1
	if i < 0 || u.rows[i].end || int(u.rows[i].file) >= len(u.files) {
		return "", 0
	}
	return u.files[u.rows[i].file], int64(u.rows[i].line)
}

// unit returns the decoded compile unit holding pc, decoding it on first use.
func (t *dwarfTable) unit(pc uint64) *dwarfUnit {
	if !t.indexed {
		t.index()
	}
	i := sort.Search(len(t.cus), func(i int) bool { return t.cus[i].high > pc })
	if i == len(t.cus) || t.cus[i].low > pc {
		return nil
	}
	off := t.cus[i].off
	if u, ok := t.units[off]; ok {
		return u
	}
	r := t.d.Reader()
	r.Seek(off)
	var u *dwarfUnit
	if cu, err := r.Next(); err == nil && cu != nil && cu.Tag == dwarf.TagCompileUnit {
		u = t.decodeUnit(r, cu)
	}
	t.units[off] = u // nil too: don't retry a broken unit
	return u
}

// index lists the units' ranges, reading only the units' own entries
// (Reader.SeekPC would scan them all for every lookup).
func (t *dwarfTable) index() {
	t.indexed = true
	r := t.d.Reader()
	for {
		cu, err := r.Next()
		if err != nil || cu == nil {
			break
		}
		if cu.Tag == dwarf.TagCompileUnit {
			ranges, _ := t.d.Ranges(cu)
			for _, rg := range ranges {
				if rg[0] < rg[1] {
					t.cus = append(t.cus, cuRange{low: rg[0], high: rg[1], off: cu.Offset})
				}
			}
		}
		r.SkipChildren()
	}
	sort.Slice(t.cus, func(i, j int) bool { return t.cus[i].low < t.cus[j].low })
}

// decodeUnit reads cu's line table and its subprograms, with r positioned
// just after cu's entry.
func (t *dwarfTable) decodeUnit(r *dwarf.Reader, cu *dwarf.Entry) *dwarfUnit {
	u := &dwarfUnit{}
	lr, err := t.d.LineReader(cu)
	if err != nil || lr == nil {
		return nil
	}
	fileIdx := make(map[*dwarf.LineFile]uint32)
	for _, f := range lr.Files() {
		fileIdx[f] = uint32(len(u.files))
		if f == nil {
			u.files = append(u.files, "")
		} else {
			u.files = append(u.files, f.Name)
		}
	}
	var le dwarf.LineEntry
	for lr.Next(&le) == nil {
		idx, ok := fileIdx[le.File]
		if !ok {
			continue
		}
		u.rows = append(u.rows, lineRow{addr: le.Address, line: uint32(le.Line), file: idx, end: le.EndSequence})
	}
	// Sequences need not be in address order; where one ends at the
	// address the next begins, the end marker must sort first.
	sort.SliceStable(u.rows, func(i, j int) bool {
		a, b := u.rows[i], u.rows[j]
		return a.addr < b.addr || a.addr == b.addr && a.end && !b.end
	})
	callFile := func(e *dwarf.Entry) string {
		if i, ok := e.Val(dwarf.AttrCallFile).(int64); ok && i >= 0 && int(i) < len(u.files) {
			return u.files[i]
		}
		return ""
	}

	// Walk the unit's DIEs; tags holds the open ancestors below the unit.
	var tags []dwarf.Tag
	var fn *dwarfFunc
	for {
		e, err := r.Next()
		if err != nil || e == nil || e.Tag == dwarf.TagCompileUnit {
			break
		}
		if e.Tag == 0 {
			if len(tags) == 0 {
				break // the unit's end
			}
			tags = tags[:len(tags)-1]
			continue
		}
		switch {
		case e.Tag == dwarf.TagSubprogram && len(tags) == 0:
			fn = nil
			ranges, err := t.d.Ranges(e)
			if err != nil || len(ranges) == 0 {
				break // abstract or declaration only
			}
			fn = &dwarfFunc{origin: t.originOf(e)}
			for _, rg := range ranges {
				u.funcs = append(u.funcs, funcRange{low: rg[0], high: rg[1], fn: fn})
			}
		case e.Tag == dwarf.TagInlinedSubroutine && fn != nil && len(tags) > 0:
			depth := 1
			for _, tag := range tags {
				if tag == dwarf.TagInlinedSubroutine {
					depth++
				}
			}
			ranges, err := t.d.Ranges(e)
			if err != nil {
				break
			}
			line, _ := e.Val(dwarf.AttrCallLine).(int64)
			in := inlined{depth: depth, origin: t.originOf(e), callFile: callFile(e), callLine: line}
			for _, rg := range ranges {
				in.low, in.high = rg[0], rg[1]
				fn.inlines = append(fn.inlines, in)
			}
		}
		if e.Children {
			tags = append(tags, e.Tag)
		}
	}
	sort.Slice(u.funcs, func(i, j int) bool { return u.funcs[i].low < u.funcs[j].low })
	return u
}

// originOf returns the name and declaration line of e, following
// DW_AT_abstract_origin (possibly into another unit) where e is an
// inlined call or an out-of-line copy of an inlinable function.
func (t *dwarfTable) originOf(e *dwarf.Entry) origin {
	if off, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset); ok {
		if o, ok := t.origins[off]; ok {
			return o
		}
		t.origins[off] = origin{} // a malformed self-reference ends here
		r := t.d.Reader()
		r.Seek(off)
		var o origin
		if ae, err := r.Next(); err == nil && ae != nil {
			o = t.originOf(ae)
		}
		t.origins[off] = o
		return o
	}
	name, _ := e.Val(dwarf.AttrName).(string)
	line, _ := e.Val(dwarf.AttrDeclLine).(int64)
	return origin{name: name, startLine: line}
}
