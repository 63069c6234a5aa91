package main

import (
	"path/filepath"

	"github.com/kindlingvm/kindling/internal/asm"
)

// buildTinyKernel writes the smallest PVH kernel (asm.HaltKernelSrc: its
// first instruction writes to COM1, so the first console byte marks the
// first guest instruction) to dir and returns its path. Both VMMs boot the
// same file.
func buildTinyKernel(dir string) (string, error) {
	p := filepath.Join(dir, "tiny-pvh.elf")
	return p, asm.WriteHaltKernel(p)
}
