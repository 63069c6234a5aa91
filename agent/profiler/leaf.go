package profiler

import (
	"debug/elf"

	"golang.org/x/arch/x86/x86asm"
)

// The kernel unwinds user stacks by frame pointers alone, and a frame
// pointer names the current function's caller only once the function has
// pushed its own frame. Go leaves leaf functions with nothing on the stack
// frameless, and every function spends its first and last instructions
// without a frame; a sample there gets a chain that skips the caller
// (leaf, then the caller's caller). That is exactly the tight loop a CPU
// profile is about, and the lost edge is the one PGO would inline.
//
// So each sample carries the two words at the top of the user stack
// (PERF_SAMPLE_STACK_USER). When the code at the sampled IP shows the
// return address must be in one of them, and the bytes before that
// address are a call instruction (to this function, if direct), the
// caller is put back into the chain.

// prologueScan is how many instructions from a function's entry are
// searched for PUSHQ BP: Go's stack-bound check comes first (at most
// three instructions), then the push.
const prologueScan = 8

// retSlot says where the return address of the function executing at va
// is when the frame-pointer chain does not have it: 0 for [SP], 1 for
// [SP+8] (after PUSHQ BP, before MOVQ SP, BP), -1 when the frame is set
// up and the chain is right.
func (b *elfImage) retSlot(va uint64) int {
	if slot, ok := b.slots[va]; ok {
		return slot
	}
	slot := b.findRetSlot(va)
	if len(b.slots) >= symbolCacheMax {
		clear(b.slots)
	}
	b.slots[va] = slot
	return slot
}

func (b *elfImage) findRetSlot(va uint64) int {
	if b.ef.Machine != elf.EM_X86_64 {
		return -1
	}
	entry, ok := b.entry(va)
	if !ok || va < entry || va-entry > 1<<20 {
		return -1
	}
	code := b.code(entry, 16*prologueScan)
	pc := entry
	for n := 0; n < prologueScan && pc <= va && pc-entry < uint64(len(code)); n++ {
		inst, err := x86asm.Decode(code[pc-entry:], 64)
		if err != nil {
			return -1
		}
		if inst.Op == x86asm.PUSH && inst.Args[0] == x86asm.RBP {
			switch {
			case va <= pc:
				return 0
			case va == pc+uint64(inst.Len):
				return 1
			}
			// Framed and past the prologue: only the final RET, after
			// POPQ BP, has the return address back at [SP].
			if at, err := x86asm.Decode(b.code(va, 16), 64); err == nil && at.Op == x86asm.RET {
				return 0
			}
			return -1
		}
		pc += uint64(inst.Len)
	}
	return 0 // no frame pushed (yet)
}

// callsTo says whether the instruction ending at ret is a call: a direct
// one to entry, or an indirect one (a closure or interface call, whose
// target cannot be checked from the code).
func (b *elfImage) callsTo(ret, entry uint64) bool {
	const maxCall = 7 // REX + FF /2 + ModRM + SIB + disp8, or E8 rel32 is 5
	if ret < maxCall {
		return false
	}
	code := b.code(ret-maxCall, maxCall)
	if len(code) != maxCall {
		return false
	}
	for _, n := range []int{5, 2, 3, 6, 7, 4} {
		inst, err := x86asm.Decode(code[maxCall-n:], 64)
		if err != nil || inst.Len != n || inst.Op != x86asm.CALL {
			continue
		}
		if rel, ok := inst.Args[0].(x86asm.Rel); ok {
			return ret+uint64(int64(rel)) == entry
		}
		return true
	}
	return false
}
