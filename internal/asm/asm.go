// Package asm turns a bespoke guest's GNU assembler source into flat machine
// code at a fixed guest address, for tests and generated probe guests. It
// runs binutils' `as` and `ld`; it is never used at VMM run time.
package asm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// PVHNote is assembler source for a PVH entry note pointing at _start
// (XEN_ELFNOTE_PHYS32_ENTRY, type 18, in a PT_NOTE segment): appended to a
// guest's source, AssembleELF makes it a kernel QEMU and Kindling can boot.
const PVHNote = `
.pushsection .note.Xen, "a", @note
	.align 4
	.long 4, 4, 18
	.asciz "Xen"
	.align 4
	.long _start
.popsection
`

// Available reports whether binutils is installed, and why not.
func Available() error {
	for _, tool := range []string{"as", "ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: install binutils (apt-get install binutils; `make setup` does)", tool)
		}
	}
	return nil
}

// Assemble assembles src (AT&T syntax; start it with .code16, .code32 or
// .code64) linked to run at origin, and returns the flat binary.
func Assemble(src string, origin uint64) ([]byte, error) {
	return build(src, origin, "--oformat=binary")
}

// AssembleELF is Assemble, but returns a static ELF64 executable (with any
// note sections src defines in PT_NOTE segments).
func AssembleELF(src string, origin uint64) ([]byte, error) {
	return build(src, origin)
}

func build(src string, origin uint64, ldFlags ...string) ([]byte, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kindling-asm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s, o, bin := filepath.Join(dir, "g.S"), filepath.Join(dir, "g.o"), filepath.Join(dir, "g.bin")
	if err := os.WriteFile(s, []byte(".globl _start\n_start:\n"+src+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := run("as", "--64", "-o", o, s); err != nil {
		return nil, err
	}
	org := "0x" + strconv.FormatUint(origin, 16)
	args := append([]string{"-m", "elf_x86_64", "-N", "-nostdlib", "-static", "-Ttext=" + org, "-e", "_start"}, ldFlags...)
	if err := run("ld", append(args, "-o", bin, o)...); err != nil {
		return nil, err
	}
	return os.ReadFile(bin)
}

func run(name string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v\n%s", name, err, out.String())
	}
	return nil
}

// HaltKernelSrc is the smallest PVH kernel: its first instruction already
// writes 'K' to COM1, so the first console byte marks the first guest
// instruction; then it halts for good, a VM that runs until the host
// stops it.
const HaltKernelSrc = `.code32
	mov $0x3f8, %dx
	mov $'K', %al
	out %al, %dx
	cli
1:	hlt
	jmp 1b
`

// WriteHaltKernel assembles HaltKernelSrc as a PVH ELF loaded at 1 MiB and
// writes it to path, readable by all (jails read it as their own uid).
func WriteHaltKernel(path string) error {
	elf, err := AssembleELF(HaltKernelSrc+PVHNote, 0x100000)
	if err != nil {
		return fmt.Errorf("halting PVH kernel: %w", err)
	}
	return os.WriteFile(path, elf, 0o644)
}
