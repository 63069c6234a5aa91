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

// buildTinyKernel writes the tiny PVH kernel to dir and returns its path.
func buildTinyKernel(dir string) (string, error) {
	elf, err := asm.AssembleELF(tinyKernelSrc+asm.PVHNote, 0x100000)
	if err != nil {
		return "", fmt.Errorf("tiny PVH kernel: %w", err)
	}
	p := filepath.Join(dir, "tiny-pvh.elf")
	return p, os.WriteFile(p, elf, 0o644)
}
