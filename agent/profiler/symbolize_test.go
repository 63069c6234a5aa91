package profiler

import (
	"debug/elf"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// hogSyms opens a build of the hog and returns it with its function symbols.
func hogSyms(t *testing.T, flags ...string) (*elfImage, map[string]elf.Symbol) {
	t.Helper()
	b, err := openBinary(buildHog(t, t.TempDir(), flags...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.close() })
	syms := make(map[string]elf.Symbol)
	ss, _ := b.ef.Symbols()
	for _, s := range ss {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			syms[s.Name] = s
		}
	}
	return b, syms
}

// insts decodes fn's instructions.
func insts(t *testing.T, b *elfImage, fn elf.Symbol) (pcs []uint64, out []x86asm.Inst) {
	t.Helper()
	code := b.code(fn.Value, int(fn.Size))
	for off := 0; off < len(code); {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			t.Fatalf("decode %s+%#x: %v", fn.Name, off, err)
		}
		pcs, out = append(pcs, fn.Value+uint64(off)), append(out, inst)
		off += inst.Len
	}
	return pcs, out
}

func TestFramesDWARF(t *testing.T) {
	b, syms := hogSyms(t)
	decl := declLines(t)
	spin := syms["main.spin"]
	fr := b.frames(spin.Value + 8)
	if b.source != "dwarf" || len(fr) != 1 || fr[0].name != "main.spin" || fr[0].startLine != decl["main.spin"] || fr[0].line <= fr[0].startLine {
		t.Errorf("frames in main.spin from %s: %+v", b.source, fr)
	}

	// Somewhere in mix is step, inlined: two frames, innermost first,
	// the outer one at the line of the call.
	mix := syms["main.(*mixer).mix"]
	found := false
	for va := mix.Value; va < mix.Value+mix.Size; va++ {
		fr := b.frames(va)
		if len(fr) == 2 && fr[0].name == "main.step" {
			found = true
			if fr[0].startLine != decl["main.step"] || fr[1].name != "main.(*mixer).mix" || fr[1].startLine != decl["main.(*mixer).mix"] ||
				fr[1].line <= fr[1].startLine || fr[1].line >= decl["main.step"] {
				t.Errorf("inlined frames at %#x: %+v", va, fr)
			}
			break
		}
	}
	if !found {
		t.Error("no address in main.(*mixer).mix has step's inlined frame")
	}
	if fr := b.frames(1); fr != nil {
		t.Errorf("frames(1) = %+v", fr)
	}
}

// Without DWARF (-w, and -s too) .gopclntab still names every function,
// with lines, and the first line of a function stands for its declaration.
func TestFramesGoTable(t *testing.T) {
	for _, ldflags := range []string{"-w", "-s -w"} {
		t.Run(ldflags, func(t *testing.T) {
			b, _ := hogSyms(t, "-ldflags="+ldflags)
			ref, syms := hogSyms(t) // same code, with symbols to find it by
			decl := declLines(t)
			for _, name := range []string{"main.spin", "main.(*mixer).mix", "main.tableHash"} {
				fr := b.frames(syms[name].Value + 16)
				if b.source != "gopclntab" || len(fr) != 1 || fr[0].name != name || fr[0].startLine != decl[name] || fr[0].line < fr[0].startLine {
					t.Errorf("%s from %s: %+v", name, b.source, fr)
				}
			}
			if b.buildID == "" || b.buildID == ref.buildID {
				t.Errorf("build IDs %q (%s) and %q", b.buildID, ldflags, ref.buildID)
			}
		})
	}
}

func TestLeafRecovery(t *testing.T) {
	b, syms := hogSyms(t)

	// spin never has a frame: its return address is at [SP] throughout.
	pcs, _ := insts(t, b, syms["main.spin"])
	for _, pc := range pcs {
		if got := b.retSlot(pc); got != 0 {
			t.Errorf("retSlot(spin+%#x) = %d, want 0", pc-pcs[0], got)
		}
	}

	// tableHash has one: [SP] until PUSHQ BP, [SP+8] until MOVQ SP, BP,
	// then the frame pointer's chain, until the RET.
	pcs, is := insts(t, b, syms["main.tableHash"])
	pushed, framed := false, false
	for i, pc := range pcs {
		want := -1
		switch {
		case !pushed:
			want = 0
		case !framed:
			want = 1
		case is[i].Op == x86asm.RET:
			want = 0
		}
		if got := b.retSlot(pc); got != want {
			t.Errorf("retSlot(tableHash+%#x: %v) = %d, want %d", pc-pcs[0], is[i], got, want)
		}
		if is[i].Op == x86asm.PUSH && is[i].Args[0] == x86asm.RBP {
			pushed = true
		} else if pushed {
			framed = true
		}
	}

	// mixWorker calls mix directly; the goroutine's closure calls its
	// work function through a register.
	direct, indirect := 0, 0
	for _, name := range []string{"main.mixWorker", "main.main.func2"} {
		pcs, is := insts(t, b, syms[name])
		for i, in := range is {
			if in.Op != x86asm.CALL {
				continue
			}
			ret := pcs[i] + uint64(in.Len)
			if !b.callsTo(ret, syms["main.(*mixer).mix"].Value) {
				continue
			}
			if _, rel := in.Args[0].(x86asm.Rel); rel {
				direct++
				if b.callsTo(ret, syms["main.spin"].Value) {
					t.Errorf("%s: the direct call at %#x calls spin too", name, pcs[i])
				}
			} else {
				indirect++
			}
		}
		if b.callsTo(pcs[1], syms["main.spin"].Value) && is[0].Op != x86asm.CALL {
			t.Errorf("%s: callsTo after a non-call", name)
		}
	}
	if direct == 0 || indirect == 0 {
		t.Errorf("recognised %d direct and %d indirect calls", direct, indirect)
	}
}
