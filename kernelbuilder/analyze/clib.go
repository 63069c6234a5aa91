package analyze

import (
	"debug/elf"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/ldd"
	"golang.org/x/arch/x86/x86asm"
)

// cWrappers take the system call number as their first C argument (RDI)
// rather than in RAX.
func isCWrapper(name string) bool {
	switch name {
	case "syscall", "__syscall", "__internal_syscall":
		return true
	}
	return false
}

// isCancelWrapper: glibc 2.41's cancellable calls go through
// __syscall_cancel(a1, ..., a6, nr), the number being the seventh argument,
// on the stack at the call.
func isCancelWrapper(name string) bool {
	switch name {
	case "__syscall_cancel", "__internal_syscall_cancel", "__syscall_cancel_arch":
		return true
	}
	return false
}

// isCFamilyFunc reports whether name is socket(2)'s libc wrapper.
func isCFamilyFunc(name string) bool {
	switch name {
	case "socket", "__socket", "socketpair", "__socketpair":
		return true
	}
	return false
}

// scanC reads the syscall sites of a C object. Resolved numbers go to
// direct, keyed by the enclosing function, when direct is non-nil (libc),
// and into the report otherwise.
func (r *Report) scanC(o *object, direct map[uint64][]int64) error {
	base := filepath.Base(o.path)
	return o.segments(func(seg *segment) {
		if isCWrapper(seg.fn) || isCancelWrapper(seg.fn) {
			return
		}
		famFn := isCFamilyFunc(seg.fn)
		for i, in := range seg.insts {
			var site Site
			var nrs []int64
			var why string
			switch in.Op {
			case x86asm.SYSCALL:
				site = Site{Object: base, Func: seg.fn, Addr: in.pc, Via: "syscall instruction"}
				nrs, why = constIn(seg, i, x86asm.RAX)
			case x86asm.CALL, x86asm.JMP:
				t := o.callTarget(in)
				switch {
				case isCWrapper(t):
					site = Site{Object: base, Func: seg.fn, Addr: in.pc, Via: "call to " + t + "()"}
					nrs, why = constIn(seg, i, x86asm.RDI)
				case isCancelWrapper(t):
					site = Site{Object: base, Func: seg.fn, Addr: in.pc, Via: "call to " + t + "()"}
					nrs, why = pushedBefore(seg, i)
				case isCFamilyFunc(t) && !famFn && direct == nil:
					v, why := constIn(seg, i, x86asm.RDI)
					r.family(Site{Object: base, Func: seg.fn, Addr: in.pc, Via: "call to " + t + "()"}, v, why)
					continue
				default:
					continue
				}
			default:
				continue
			}
			if direct != nil {
				if why == "" {
					start := seg.insts[0].pc
					direct[start] = append(direct[start], nrs...)
				}
				continue
			}
			r.recordSite(seg, i, site, nrs, why, x86asm.RDI, famFn)
		}
	})
}

func openObject(path string) (*object, bool, error) {
	ef, err := elf.Open(path)
	if err != nil {
		return nil, false, fmt.Errorf("open %s: %w", path, err)
	}
	funcs, fromSymtab := elfFuncs(ef)
	return &object{path: path, ef: ef, funcs: funcs, exports: dynamicFuncs(ef), plt: readPLT(ef)}, fromSymtab, nil
}

// analyseC reads a C (or other non-Go) binary: its own syscall sites, and
// for a dynamic one its loader and libraries, with libc imports mapped
// through the libc table.
func (r *Report) analyseC(path string, ef *elf.File) error {
	funcs, fromSymtab := elfFuncs(ef)
	self := &object{path: path, ef: ef, funcs: funcs, plt: readPLT(ef)}
	if !fromSymtab {
		r.Stripped = true
		r.Notes = append(r.Notes, "stripped (no symbol table): sites are reported by address; the system call set is the same, since every SYSCALL instruction is read")
	}
	if err := r.scanC(self, nil); err != nil {
		return err
	}
	if r.Static {
		r.Notes = append(r.Notes, "static binary: the C library is linked in, so every system call site it contains counts whether or not the program reaches it (a superset)")
		return nil
	}
	return r.dynamicLibs(path, ef)
}

// dynamicLibs reads a dynamic binary's loader and libraries, and maps its
// libc imports through the libc table.
func (r *Report) dynamicLibs(path string, ef *elf.File) error {
	abs, err := filepath.Abs(path) // ld.so --list treats a bare name as a library to search for
	if err != nil {
		return err
	}
	libs, err := ldd.List(abs)
	if err != nil {
		return fmt.Errorf("analyse %s: resolve its shared libraries with the dynamic loader: %w", path, err)
	}
	var libc string
	for _, lib := range libs {
		r.Libraries = append(r.Libraries, lib)
		if strings.HasPrefix(filepath.Base(lib), "libc.so") {
			libc = lib
			continue
		}
		// The loader runs before main and other libraries are not
		// mapped per function: all their sites count.
		o, _, err := openObject(lib)
		if err != nil {
			return fmt.Errorf("analyse %s: library: %w", path, err)
		}
		err = r.scanC(o, nil)
		o.ef.Close()
		if err != nil {
			return err
		}
	}
	sort.Strings(r.Libraries)
	if libc == "" {
		r.Notes = append(r.Notes, "no libc.so among the libraries: only direct SYSCALL sites were read")
		return nil
	}
	return r.libcImports(path, ef, libc)
}

// libcImports maps each function the binary imports from libc to the
// calls it makes: the libc table, plus the SYSCALL sites inside that
// function's own body in the installed libc.
func (r *Report) libcImports(path string, ef *elf.File, libcPath string) error {
	libc, _, err := openObject(libcPath)
	if err != nil {
		return err
	}
	defer libc.ef.Close()
	// Aliases (socket, __socket) share one body: key bodies by address.
	exported := map[string]uint64{}
	for _, f := range libc.exports {
		exported[f.name] = f.start
	}
	direct := map[uint64][]int64{}
	if err := r.scanC(libc, direct); err != nil {
		return err
	}
	syms, err := ef.DynamicSymbols()
	if err != nil {
		return fmt.Errorf("analyse %s: dynamic symbols: %w", path, err)
	}
	table, pure := libcSyscalls(), libcPure()
	base := filepath.Base(path)
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF || elf.ST_TYPE(s.Info) == elf.STT_OBJECT || s.Name == "" || exported[s.Name] == 0 {
			continue
		}
		site := Site{Object: base, Func: s.Name, Via: "libc " + s.Name + "()"}
		names, known := table[s.Name]
		for _, n := range names {
			r.addSyscallName(n, site)
		}
		body := direct[exported[s.Name]]
		for _, nr := range body {
			r.addSyscall(nr, Site{Object: filepath.Base(libcPath), Func: s.Name, Via: "syscall instruction in libc " + s.Name + "()"})
		}
		if !known && !pure[s.Name] && len(body) == 0 && s.Name != "syscall" {
			r.Unresolved = append(r.Unresolved, Unresolved{Site: site, What: "libc function", Why: "not in the libc table and no system call in its own body; calls it makes through libc internals are not listed"})
		}
	}
	return nil
}
