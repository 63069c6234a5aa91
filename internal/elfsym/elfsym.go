// Package elfsym finds the functions and data objects of an ELF binary:
// from Go's .gopclntab (which stripping keeps), the symbol table, or the
// dynamic symbol table, whichever the binary still has.
package elfsym

import (
	"debug/elf"
	"debug/gosym"
	"fmt"
	"sort"
)

// Sym is a named address range.
type Sym struct {
	Name       string
	Start, End uint64
}

// Contains says whether addr falls in the symbol.
func (s Sym) Contains(addr uint64) bool {
	return addr >= s.Start && (addr < s.End || addr == s.Start)
}

// GoTable reads a Go binary's .gopclntab: functions, files and lines.
func GoTable(ef *elf.File) (*gosym.Table, error) {
	sec, text := ef.Section(".gopclntab"), ef.Section(".text")
	if sec == nil || text == nil {
		return nil, fmt.Errorf("no .gopclntab section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil, fmt.Errorf("parse .gopclntab: %w", err)
	}
	return tab, nil
}

// GoFuncs reads function boundaries from .gopclntab.
func GoFuncs(ef *elf.File) ([]Sym, error) {
	tab, err := GoTable(ef)
	if err != nil {
		return nil, err
	}
	return TableFuncs(tab), nil
}

// TableFuncs lists a read .gopclntab's functions, sorted by address.
func TableFuncs(tab *gosym.Table) []Sym {
	out := make([]Sym, 0, len(tab.Funcs))
	for _, f := range tab.Funcs {
		out = append(out, Sym{Name: f.Name, Start: f.Entry, End: f.End})
	}
	sortSyms(out)
	return out
}

// Funcs reads function symbols from the symbol table, or failing that
// from the dynamic symbol table (a stripped library still exports its
// API). fromSymtab says which.
func Funcs(ef *elf.File) (funcs []Sym, fromSymtab bool) {
	return bySymType(ef, elf.STT_FUNC)
}

// Objects reads data symbols the same way.
func Objects(ef *elf.File) (objs []Sym, fromSymtab bool) {
	return bySymType(ef, elf.STT_OBJECT)
}

func bySymType(ef *elf.File, typ elf.SymType) (out []Sym, fromSymtab bool) {
	syms, err := ef.Symbols()
	fromSymtab = err == nil && len(syms) > 0
	if !fromSymtab {
		syms, _ = ef.DynamicSymbols()
	}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != typ || s.Value == 0 || s.Section == elf.SHN_UNDEF {
			continue
		}
		out = append(out, Sym{Name: s.Name, Start: s.Value, End: s.Value + s.Size})
	}
	sortSyms(out)
	return out, fromSymtab
}

func sortSyms(s []Sym) {
	sort.Slice(s, func(i, j int) bool { return s[i].Start < s[j].Start })
}

// At returns the symbol in sorted that contains addr.
func At(sorted []Sym, addr uint64) (Sym, bool) {
	i := sort.Search(len(sorted), func(i int) bool { return sorted[i].Start > addr }) - 1
	if i >= 0 && sorted[i].Contains(addr) {
		return sorted[i], true
	}
	return Sym{}, false
}
