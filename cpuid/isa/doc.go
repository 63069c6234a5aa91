// Package isa finds which x86 instruction-set extensions a task binary
// needs: the psABI level it declares (the Go build setting GOAMD64, or an
// ELF GNU_PROPERTY_X86_ISA_1_NEEDED note), and the extensions its .text
// uses, decoded instruction by instruction: lengths and prefixes are
// measured here (VEX and EVEX included), mnemonics come from x86asm where it
// knows them and from the bytes where it does not. Each extension is told apart as
// required (declared, or used in code no CPU-feature check guards) or
// optional (used only in runtime-dispatched code).
//
// It reads files; it never runs them.
package isa
