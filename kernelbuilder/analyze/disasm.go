package analyze

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"

	"github.com/kindlingvm/kindling/internal/elfsym"
)

// fn is a named address range of code.
type fn struct {
	name       string
	start, end uint64
}

// inst is one decoded instruction and its address.
type inst struct {
	pc uint64
	x86asm.Inst
}

// object is one ELF file being scanned: the task or one of its libraries.
type object struct {
	path  string
	ef    *elf.File
	funcs []fn // sorted by start
	// exports are the functions in the dynamic symbol table (a library's
	// API), with every alias.
	exports []fn
	plt     map[uint64]string // PLT stub or GOT slot address -> imported symbol
}

// segment is the decoded body of one function (or of an unnamed run of
// code), the unit in which register values are tracked.
type segment struct {
	fn    string
	insts []inst
	// jumpsTo maps a target address to the direct jumps that reach it,
	// built on first use.
	jumpsTo map[uint64][]int
}

// segments decodes every executable section, restarting at each function
// start so data or padding between functions cannot desynchronise decoding.
func (o *object) segments(visit func(seg *segment)) error {
	for _, sec := range o.ef.Sections {
		if sec.Type != elf.SHT_PROGBITS || sec.Flags&elf.SHF_EXECINSTR == 0 {
			continue
		}
		if strings.HasPrefix(sec.Name, ".plt") {
			continue
		}
		data, err := sec.Data()
		if err != nil {
			return fmt.Errorf("%s: read %s: %w", o.path, sec.Name, err)
		}
		end := sec.Addr + uint64(len(data))
		cuts := []uint64{sec.Addr}
		i := sort.Search(len(o.funcs), func(i int) bool { return o.funcs[i].start >= sec.Addr })
		for ; i < len(o.funcs) && o.funcs[i].start < end; i++ {
			cuts = append(cuts, o.funcs[i].start)
			if e := o.funcs[i].end; e > o.funcs[i].start && e < end {
				cuts = append(cuts, e)
			}
		}
		cuts = append(cuts, end)
		sort.Slice(cuts, func(a, b int) bool { return cuts[a] < cuts[b] })
		seg := &segment{}
		for c := 0; c+1 < len(cuts); c++ {
			lo, hi := cuts[c], cuts[c+1]
			if lo == hi {
				continue
			}
			seg.fn = o.funcAt(lo)
			seg.insts = seg.insts[:0]
			seg.jumpsTo = nil
			for pc := lo; pc < hi; {
				in, err := x86asm.Decode(data[pc-sec.Addr:hi-sec.Addr], 64)
				if err != nil || in.Len == 0 {
					pc++ // not code; resynchronise on the next byte
					continue
				}
				seg.insts = append(seg.insts, inst{pc, in})
				pc += uint64(in.Len)
			}
			visit(seg)
		}
	}
	return nil
}

// funcAt names the function containing pc, or "" if none is known.
func (o *object) funcAt(pc uint64) string {
	i := sort.Search(len(o.funcs), func(i int) bool { return o.funcs[i].start > pc }) - 1
	if i < 0 {
		return ""
	}
	f := o.funcs[i]
	if f.end > f.start && pc >= f.end {
		return ""
	}
	return f.name
}

// callTarget names what a CALL (or tail JMP) at in goes to: a function of
// this object, or an import through the PLT or GOT.
func (o *object) callTarget(in inst) string {
	if len(in.Args) == 0 || in.Args[0] == nil {
		return ""
	}
	next := in.pc + uint64(in.Len)
	switch a := in.Args[0].(type) {
	case x86asm.Rel:
		t := uint64(int64(next) + int64(a))
		if name, ok := o.plt[t]; ok {
			return name
		}
		i := sort.Search(len(o.funcs), func(i int) bool { return o.funcs[i].start >= t })
		if i < len(o.funcs) && o.funcs[i].start == t {
			return o.funcs[i].name
		}
	case x86asm.Mem:
		if a.Base == x86asm.RIP && a.Index == 0 {
			return o.plt[uint64(int64(next)+a.Disp)]
		}
	}
	return ""
}

// regFamily maps every width of a general-purpose register to its 64-bit
// name, so writes to EAX or AL count as writes to RAX.
func regFamily(r x86asm.Reg) x86asm.Reg {
	switch {
	case r >= x86asm.AL && r <= x86asm.R15B:
		return regByteFamily[r-x86asm.AL]
	case r >= x86asm.AX && r <= x86asm.R15W:
		return x86asm.RAX + (r - x86asm.AX)
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return x86asm.RAX + (r - x86asm.EAX)
	case r >= x86asm.RAX && r <= x86asm.R15:
		return r
	}
	return 0
}

// x86asm orders the byte registers AL CL DL BL AH CH DH BH SPB BPB SIB DIB
// R8B..R15B; the high bytes belong to the first four.
var regByteFamily = [...]x86asm.Reg{
	x86asm.RAX, x86asm.RCX, x86asm.RDX, x86asm.RBX, x86asm.RAX, x86asm.RCX, x86asm.RDX, x86asm.RBX,
	x86asm.RSP, x86asm.RBP, x86asm.RSI, x86asm.RDI,
	x86asm.R8, x86asm.R9, x86asm.R10, x86asm.R11, x86asm.R12, x86asm.R13, x86asm.R14, x86asm.R15,
}

// constIn finds the constants register reg may hold just before
// instruction i of seg. It walks back along every path within the
// function: through fall-through and through each jump that lands on the
// way, following register copies, until each path meets a MOV of an
// immediate or a XOR of the register with itself; a loop's back edge adds
// nothing. Any path on which the value is not a constant (a call clobbers
// it, something computes it, the function receives it as an argument)
// makes the answer unresolved, with why.
func constIn(seg *segment, i int, reg x86asm.Reg) ([]int64, string) {
	if seg.jumpsTo == nil {
		seg.jumpsTo = map[uint64][]int{}
		for k, in := range seg.insts {
			if in.Op == x86asm.CALL || len(in.Args) == 0 {
				continue
			}
			if rel, ok := in.Args[0].(x86asm.Rel); ok {
				t := uint64(int64(in.pc) + int64(in.Len) + int64(rel))
				seg.jumpsTo[t] = append(seg.jumpsTo[t], k)
			}
		}
	}
	w := &walk{seg: seg, seen: map[walkKey]bool{}, vals: map[int64]bool{}, budget: 4096}
	w.arrive(i, regFamily(reg))
	if w.why != "" {
		return nil, w.why
	}
	if len(w.vals) == 0 {
		return nil, fmt.Sprintf("no path into %#x sets %s", seg.insts[i].pc, reg)
	}
	out := make([]int64, 0, len(w.vals))
	for v := range w.vals {
		out = append(out, v)
	}
	sort.Slice(out, func(a, b int) bool { return out[a] < out[b] })
	return out, ""
}

type walkKey struct {
	pos int
	reg x86asm.Reg
}

// walk is one backward search for a register's constant values.
type walk struct {
	seg    *segment
	seen   map[walkKey]bool
	vals   map[int64]bool
	why    string
	budget int
}

func (w *walk) fail(format string, args ...any) {
	if w.why == "" {
		w.why = fmt.Sprintf(format, args...)
	}
}

// arrive collects the values reg may hold when control arrives at
// instruction pos.
func (w *walk) arrive(pos int, reg x86asm.Reg) {
	for w.why == "" {
		k := walkKey{pos, reg}
		if w.seen[k] {
			return // a loop, or a path already followed
		}
		w.seen[k] = true
		if w.budget--; w.budget < 0 {
			w.fail("%s: too many paths to follow in %s", reg, w.seg.fn)
			return
		}
		for _, j := range w.seg.jumpsTo[w.seg.insts[pos].pc] {
			w.arrive(j, reg) // a jump does not change the register
		}
		if pos == 0 {
			w.fail("%s is not set in %s (passed in by its callers)", reg, w.seg.fn)
			return
		}
		in := w.seg.insts[pos-1]
		switch in.Op {
		case x86asm.JMP, x86asm.RET, x86asm.UD2, x86asm.HLT:
			// Alignment padding after a jump is dead code, not a path.
			if op := w.seg.insts[pos].Op; len(w.seg.jumpsTo[w.seg.insts[pos].pc]) == 0 && op != x86asm.NOP && op != x86asm.INT {
				w.fail("%s: %#x is reached only through an indirect jump", reg, w.seg.insts[pos].pc)
			}
			return // no fall-through into pos
		case x86asm.CALL:
			w.fail("%s is clobbered by the call at %#x", reg, in.pc)
			return
		}
		if implicitlyWrites(in, reg) {
			w.fail("%s is set by %s at %#x", reg, strings.ToLower(in.Op.String()), in.pc)
			return
		}
		pos--
		if !writesReg(in, reg) {
			continue
		}
		switch in.Op {
		case x86asm.MOV:
			switch src := in.Args[1].(type) {
			case x86asm.Imm:
				w.vals[int64(src)] = true
				return
			case x86asm.Reg:
				if regFamily(src) != 0 {
					reg = regFamily(src) // follow the copy
					continue
				}
			}
		case x86asm.XOR, x86asm.SUB:
			if r, ok := in.Args[1].(x86asm.Reg); ok && regFamily(r) == reg {
				w.vals[0] = true
				return
			}
		}
		w.fail("%s is computed at %#x (%s)", reg, in.pc, x86asm.IntelSyntax(in.Inst, in.pc, nil))
	}
}

// constOnStack finds the constant stored at [rsp+off] before instruction
// i: the first argument of a call to an ABI0 (stack-argument) function,
// which is how Go code calls assembly in its own package.
func constOnStack(seg *segment, i int, off int64) ([]int64, string) {
	for j := i - 1; j >= 0; j-- {
		in := seg.insts[j]
		switch in.Op {
		case x86asm.CALL:
			return nil, fmt.Sprintf("the stack argument is clobbered by the call at %#x", in.pc)
		case x86asm.JMP, x86asm.RET, x86asm.UD2:
			return nil, fmt.Sprintf("the stack argument is set on another path (control flow joins after %#x)", in.pc)
		case x86asm.MOV:
			m, ok := in.Args[0].(x86asm.Mem)
			if !ok || m.Base != x86asm.RSP || m.Index != 0 || m.Disp != off {
				continue
			}
			switch src := in.Args[1].(type) {
			case x86asm.Imm:
				return []int64{int64(src)}, ""
			case x86asm.Reg:
				return constIn(seg, j, src)
			}
			return nil, fmt.Sprintf("the stack argument is computed at %#x", in.pc)
		}
	}
	return nil, fmt.Sprintf("the stack argument is not set in %s (passed in by its callers)", seg.fn)
}

// pushedBefore finds the constant last pushed before the call at i: the
// seventh argument of a C call. Anything else that moves RSP in between
// makes it unresolved.
func pushedBefore(seg *segment, i int) ([]int64, string) {
	for j := i - 1; j >= 0; j-- {
		in := seg.insts[j]
		switch in.Op {
		case x86asm.PUSH:
			switch a := in.Args[0].(type) {
			case x86asm.Imm:
				return []int64{int64(a)}, ""
			case x86asm.Reg:
				return constIn(seg, j, a)
			}
			return nil, fmt.Sprintf("the seventh argument is pushed from memory at %#x", in.pc)
		case x86asm.CALL, x86asm.JMP, x86asm.RET, x86asm.POP, x86asm.LEAVE:
			return nil, fmt.Sprintf("no push of the seventh argument before %#x", seg.insts[i].pc)
		}
		if writesReg(in, x86asm.RSP) {
			return nil, fmt.Sprintf("RSP moves at %#x before the seventh argument is found", in.pc)
		}
	}
	return nil, "no push of the seventh argument in " + seg.fn
}

// implicitlyWrites covers instructions that write registers they do not
// name as their destination.
func implicitlyWrites(in inst, reg x86asm.Reg) bool {
	var regs []x86asm.Reg
	switch in.Op {
	case x86asm.SYSCALL:
		regs = []x86asm.Reg{x86asm.RAX, x86asm.RCX, x86asm.R11}
	case x86asm.CPUID:
		regs = []x86asm.Reg{x86asm.RAX, x86asm.RBX, x86asm.RCX, x86asm.RDX}
	case x86asm.RDTSC, x86asm.RDTSCP, x86asm.MUL, x86asm.DIV, x86asm.IDIV, x86asm.CMPXCHG:
		regs = []x86asm.Reg{x86asm.RAX, x86asm.RDX}
	case x86asm.CQO, x86asm.CDQ, x86asm.CWD:
		regs = []x86asm.Reg{x86asm.RDX}
	case x86asm.XCHG, x86asm.XADD:
		for _, a := range in.Args {
			if r, ok := a.(x86asm.Reg); ok {
				regs = append(regs, regFamily(r))
			}
		}
	}
	for _, r := range regs {
		if r == reg {
			return true
		}
	}
	return false
}

// writesReg reports whether in's destination operand is reg (any width).
// Instructions without a register destination (CMP, TEST, stores, pushes)
// do not count.
func writesReg(in inst, reg x86asm.Reg) bool {
	if len(in.Args) == 0 || in.Args[0] == nil {
		return false
	}
	switch in.Op {
	case x86asm.CMP, x86asm.TEST, x86asm.PUSH, x86asm.BT, x86asm.NOP, x86asm.PREFETCHT0:
		return false
	}
	if r, ok := in.Args[0].(x86asm.Reg); ok {
		return regFamily(r) == reg
	}
	return false
}

// sectionData is a section and its bytes, or nothing if the file has no
// such section or it cannot be read.
func sectionData(ef *elf.File, name string) (*elf.Section, []byte) {
	sec := ef.Section(name)
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, nil
	}
	return sec, data
}

// readPLT maps PLT stubs and GOT slots to the symbols they resolve to, from
// the JUMP_SLOT and GLOB_DAT relocations and the `jmp [rip+x]` in each stub.
func readPLT(ef *elf.File) map[uint64]string {
	out := map[uint64]string{}
	dyn, err := ef.DynamicSymbols()
	if err != nil {
		return out
	}
	got := map[uint64]string{}
	for _, name := range []string{".rela.plt", ".rela.dyn"} {
		_, data := sectionData(ef, name)
		for off := 0; off+24 <= len(data); off += 24 {
			r := binary.LittleEndian.Uint64(data[off:])
			info := binary.LittleEndian.Uint64(data[off+8:])
			typ, sym := elf.R_X86_64(info&0xffffffff), int(info>>32)
			if (typ != elf.R_X86_64_JMP_SLOT && typ != elf.R_X86_64_GLOB_DAT) || sym == 0 || sym > len(dyn) {
				continue
			}
			got[r] = dyn[sym-1].Name
		}
	}
	for slot, name := range got {
		out[slot] = name // call [rip+x] with -fno-plt
	}
	for _, name := range []string{".plt.sec", ".plt"} {
		sec, data := sectionData(ef, name)
		for stub := 0; stub+16 <= len(data); stub += 16 {
			for pc := stub; pc < stub+16; {
				in, err := x86asm.Decode(data[pc:stub+16], 64)
				if err != nil || in.Len == 0 {
					break
				}
				next := sec.Addr + uint64(pc+in.Len)
				if in.Op == x86asm.JMP {
					if m, ok := in.Args[0].(x86asm.Mem); ok && m.Base == x86asm.RIP {
						if n, ok := got[uint64(int64(next)+m.Disp)]; ok {
							out[sec.Addr+uint64(stub)] = n
						}
					}
					break
				}
				pc += in.Len
			}
		}
	}
	return out
}

func dynamicFuncs(ef *elf.File) []fn {
	syms, _ := ef.DynamicSymbols()
	var out []fn
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 && s.Section != elf.SHN_UNDEF {
			out = append(out, fn{name: s.Name, start: s.Value, end: s.Value + s.Size})
		}
	}
	return out
}

// elfFuncs reads function symbols from the symbol table, or failing that
// from the dynamic symbol table (a stripped library still exports its
// API).
func elfFuncs(ef *elf.File) (funcs []fn, fromSymtab bool) {
	syms, fromSymtab := elfsym.Funcs(ef)
	return toFns(syms), fromSymtab
}

func toFns(syms []elfsym.Sym) []fn {
	out := make([]fn, len(syms))
	for i, s := range syms {
		out[i] = fn{name: s.Name, start: s.Start, end: s.End}
	}
	return out
}
