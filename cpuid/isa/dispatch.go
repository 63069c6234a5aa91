package isa

import (
	"debug/elf"
	"sort"
)

// Dispatch is where a binary's run-time dispatch runs, per optional
// extension: the functions holding the extension's instructions (its fast
// paths), and the functions that test a CPU feature and lead to them. A
// CPU profile's time in either is time the extension decides: while it is
// exposed the fast path runs; when a CPU template hides it the fast path
// never runs and the time shows in the dispatcher and the fallback it calls
// instead, so a profile that samples a stack through the dispatcher counts
// either way.
//
// It is at function granularity: a dispatcher's whole time counts, not
// only the part behind its check.
type Dispatch struct {
	// Sets has one entry per optional extension, by name.
	Sets []DispatchSet `json:"sets"`
	// segs place file offsets (an unsymbolized profile frame's) at
	// virtual addresses.
	segs []segment
}

// DispatchSet is one extension's dispatched code.
type DispatchSet struct {
	Extension string `json:"extension"`
	// Users are the functions with the extension's instructions behind
	// a CPU-feature check (Use.Guarded counts them).
	Users []Func `json:"users"`
	// Dispatchers are the functions that test a CPU feature and call,
	// jump to or take the address of a User (directly, or through
	// functions only they reach); a dispatcher may be a User itself
	// (internal/bytealg's indexbytebody tests AVX2 and holds both paths).
	Dispatchers []Func `json:"dispatchers"`
}

// Func is a function of the binary: its name as the symbol table (or for
// Go, .gopclntab, whose names runtime/pprof uses too) gives it, and its
// address range.
type Func struct {
	Name       string `json:"name"`
	Start, End uint64 `json:"-"`
}

// segment is an executable PT_LOAD: file bytes [off, off+size) load at
// vaddr.
type segment struct{ off, vaddr, size uint64 }

// Dispatch is the binary's run-time dispatch, per optional extension.
// It is never nil.
func (r *Report) Dispatch() *Dispatch {
	if r.dispatch == nil {
		return &Dispatch{}
	}
	return r.dispatch
}

// Set is the dispatched code of extension ext, if it is optional in the
// binary.
func (d *Dispatch) Set(ext string) (DispatchSet, bool) {
	i := sort.Search(len(d.Sets), func(i int) bool { return d.Sets[i].Extension >= ext })
	if i < len(d.Sets) && d.Sets[i].Extension == ext {
		return d.Sets[i], true
	}
	return DispatchSet{}, false
}

// Functions lists the set's users and dispatchers once each, by name.
func (s DispatchSet) Functions() []Func {
	seen := map[string]bool{}
	var out []Func
	for _, l := range [][]Func{s.Users, s.Dispatchers} {
		for _, f := range l {
			if !seen[f.Name] {
				seen[f.Name] = true
				out = append(out, f)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Addr is the virtual address that file offset off of the binary loads
// at, if an executable segment holds it: a profile's mapping gives an
// unsymbolized frame's file offset (address - start + offset), and the
// functions here are at virtual addresses.
func (d *Dispatch) Addr(off uint64) (uint64, bool) {
	for _, s := range d.segs {
		if off >= s.off && off-s.off < s.size {
			return s.vaddr + (off - s.off), true
		}
	}
	return 0, false
}

// dispatch collects, after classify, each optional extension's users and
// the guards leading to them. A guard leads to a user it refers to, or
// that functions it refers to (reached only through guards themselves,
// and no guard) refer to; the walk does not go through another guard, so
// a function that tests POPCNT and calls memmove does not become an AVX
// dispatcher because memmove tests AVX. A guard that executes CPUID
// itself is more often the code that fills in the feature variables (the
// Go runtime's rt0_go, libgcc's __cpu_indicator_init) than a dispatcher,
// and the entry point of a program is one: it leads only to the users it
// refers to directly.
func (s *scan) dispatch() *Dispatch {
	d := &Dispatch{}
	for _, p := range s.ef.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			d.segs = append(d.segs, segment{off: p.Off, vaddr: p.Vaddr, size: p.Filesz})
		}
	}
	optional := map[string]int{}
	for _, u := range s.r.Uses {
		if !u.Required {
			optional[u.Extension] = len(d.Sets)
			d.Sets = append(d.Sets, DispatchSet{Extension: u.Extension})
		}
	}
	fn := func(i int) Func {
		f := s.info[i].sym
		return Func{Name: f.Name, Start: f.Start, End: f.End}
	}
	for i, f := range s.info {
		if !s.disp[i] {
			// Unguarded code (the Go runtime's asyncPreempt saving
			// vector registers, code reached only through function
			// tables) is not a fast path a check chooses.
			continue
		}
		for ext, n := range f.uses {
			if k, ok := optional[ext]; ok && n > 0 {
				d.Sets[k].Users = append(d.Sets[k].Users, fn(i))
			}
		}
	}
	for g, isGuard := range s.guard {
		if !isGuard {
			continue
		}
		// Extensions g leads to: its own, and those of the guard-only
		// code it reaches.
		exts := map[string]bool{}
		for ext, n := range s.info[g].uses {
			if n > 0 {
				exts[ext] = true
			}
		}
		seen := map[int]bool{g: true}
		work := []int{g}
		for len(work) > 0 {
			i := work[len(work)-1]
			work = work[:len(work)-1]
			for j := range s.info[i].refs {
				if seen[j] || !s.disp[j] || s.guard[j] {
					continue
				}
				seen[j] = true
				if !s.info[g].cpuid {
					work = append(work, j)
				}
				for ext, n := range s.info[j].uses {
					if n > 0 {
						exts[ext] = true
					}
				}
			}
		}
		for ext := range exts {
			if k, ok := optional[ext]; ok {
				d.Sets[k].Dispatchers = append(d.Sets[k].Dispatchers, fn(g))
			}
		}
	}
	for k := range d.Sets {
		byName(d.Sets[k].Users)
		byName(d.Sets[k].Dispatchers)
	}
	return d
}

func byName(fs []Func) {
	sort.Slice(fs, func(i, j int) bool {
		if fs[i].Name != fs[j].Name {
			return fs[i].Name < fs[j].Name
		}
		return fs[i].Start < fs[j].Start
	})
}
