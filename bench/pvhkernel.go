package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/kindlingvm/kindling/internal/asm"
)

// tinyKernelSrc is the smallest PVH kernel: its first instruction already
// writes to COM1, so the first console byte marks the first guest
// instruction, then it halts for good. Both VMMs boot the same file.
const tinyKernelSrc = `.code32
	mov $0x3f8, %dx
	mov $'K', %al
	out %al, %dx
	cli
1:	hlt
	jmp 1b
`

// tinyKernelLinker gives the ELF a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY,
// type 18) in a PT_NOTE segment, which QEMU and Kindling both look for.
const tinyKernelNote = `
.pushsection .note.Xen, "a", @note
	.align 4
	.long 4, 4, 18
	.asciz "Xen"
	.align 4
	.long _start
.popsection
`

// buildTinyKernel writes the tiny PVH kernel to dir and returns its path.
func buildTinyKernel(dir string) (string, error) {
	elf, err := asm.AssembleELF(tinyKernelSrc+tinyKernelNote, 0x100000)
	if err != nil {
		return "", fmt.Errorf("tiny PVH kernel: %w", err)
	}
	p := filepath.Join(dir, "tiny-pvh.elf")
	return p, os.WriteFile(p, elf, 0o644)
}
