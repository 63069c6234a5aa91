package analyze

import (
	"github.com/kindlingvm/kindling/internal/elfsym"

	"debug/elf"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

const (
	sysSocket     = 41
	sysSocketpair = 53
)

// goFunc splits a Go symbol into package path and name, dropping the
// ".abi0" of assembly bodies and the "vendor/" of the standard library's
// vendored copies.
func goFunc(sym string) (pkg, name string) {
	sym = strings.TrimSuffix(sym, ".abi0")
	sym = strings.TrimPrefix(sym, "vendor/")
	slash := strings.LastIndex(sym, "/")
	dot := strings.Index(sym[slash+1:], ".")
	if dot < 0 {
		return "", sym
	}
	return sym[:slash+1+dot], sym[slash+1+dot+1:]
}

// isGoWrapper reports whether sym is a function that takes a system call
// number as its first argument (RAX in Go's register ABI) and makes the
// call. Its own SYSCALL sites are pass-throughs; its callers say the number.
func isGoWrapper(sym string) bool {
	pkg, name := goFunc(sym)
	switch pkg {
	case "syscall", "golang.org/x/sys/unix", "internal/runtime/syscall", "internal/runtime/syscall/linux", "runtime/internal/syscall":
	case "runtime":
		return name == "syscall_runtime_doAllThreadsSyscall"
	default:
		return false
	}
	switch name {
	case "Syscall", "Syscall6", "Syscall9", "RawSyscall", "RawSyscall6", "RawSyscallNoError", "SyscallNoError",
		"rawSyscallNoError", "rawVforkSyscall", "runtime_doAllThreadsSyscall", "AllThreadsSyscall", "AllThreadsSyscall6",
		"schedAffinity":
		return true
	}
	return false
}

// isGoPassThrough reports whether sym's own SYSCALL sites make calls whose
// numbers are counted elsewhere: the wrappers, and runPerThreadSyscall,
// which replays on every thread a call AllThreadsSyscall's callers named.
func isGoPassThrough(sym string) bool {
	return isGoWrapper(sym) || sym == "runtime.runPerThreadSyscall"
}

// isFamilyFunc reports whether sym takes a socket family as its first
// argument and creates a socket with it.
func isFamilyFunc(sym string) bool {
	pkg, name := goFunc(sym)
	switch pkg {
	case "syscall", "golang.org/x/sys/unix":
		return name == "Socket" || name == "socket" || name == "Socketpair" || name == "socketpair"
	case "net":
		return name == "sysSocket"
	}
	return false
}

// analyseGo reads a Go binary's syscall sites and wrapper calls.
func (r *Report) analyseGo(path string, ef *elf.File) error {
	o := &object{path: path, ef: ef, plt: readPLT(ef)}
	funcs, fromSymtab := elfFuncs(ef)
	if !fromSymtab {
		r.Stripped = true
		pcl, err := goPclntab(ef)
		if err != nil {
			r.Conservative = true
			r.Notes = append(r.Notes, fmt.Sprintf("no symbol table and no usable .gopclntab (%v): calls through syscall wrappers cannot be found, only direct SYSCALL instructions are counted, and the kernel keeps every optional system call (a bigger kernel)", err))
		} else {
			funcs = pcl
			r.Notes = append(r.Notes, "stripped (no symbol table): function names come from .gopclntab, which the Go linker always keeps, so nothing is lost")
		}
	}
	o.funcs = funcs
	base := filepath.Base(path)
	present := map[string]bool{}
	for _, f := range funcs {
		present[f.name] = true
	}
	netCovered := present["net.internetSocket"] || present["net.unixSocket"]
	err := o.segments(func(seg *segment) {
		wrapper, famFn := isGoPassThrough(seg.fn), isFamilyFunc(seg.fn)
		for i, in := range seg.insts {
			var site Site
			var nrs []int64
			var why string
			famReg := x86asm.RDI
			switch in.Op {
			case x86asm.SYSCALL:
				if wrapper {
					continue
				}
				site = Site{Object: base, Func: seg.fn, Addr: in.pc, Via: "syscall instruction"}
				nrs, why = constIn(seg, i, x86asm.RAX)
			case x86asm.CALL, x86asm.JMP:
				t := o.callTarget(in)
				switch {
				case t == "" || wrapper:
					continue
				case isGoWrapper(t):
					site = Site{Object: base, Func: seg.fn, Addr: in.pc, Via: "call to " + t}
					if strings.HasSuffix(t, ".abi0") {
						nrs, why = constOnStack(seg, i, 0)
						famReg = 0 // a stack argument; not tracked
					} else {
						nrs, why = constIn(seg, i, x86asm.RAX)
						famReg = x86asm.RBX // second argument
						if why != "" {
							// .gopclntab drops the .abi0 of assembly
							// bodies, so a stripped binary's direct
							// ABI0 calls look like register calls.
							if v, w := constOnStack(seg, i, 0); w == "" {
								nrs, why, famReg = v, "", 0
							}
						}
					}
				case isFamilyFunc(t) && !famFn:
					site = Site{Object: base, Func: seg.fn, Addr: in.pc, Via: "call to " + t}
					v, why := constIn(seg, i, x86asm.RAX)
					if why != "" && netCovered && strings.HasPrefix(seg.fn, "net.") {
						continue // the net package's families are accounted below
					}
					r.family(site, v, why)
					continue
				default:
					continue
				}
			default:
				continue
			}
			r.recordSite(seg, i, site, nrs, why, famReg, famFn)
		}
	})
	if err != nil {
		return err
	}
	// The net package picks the family at run time from the address it is
	// given, so no constant reaches socket(); what it can pick is known.
	if present["net.internetSocket"] {
		site := Site{Object: base, Func: "net.internetSocket", Via: "net package: TCP/UDP/IP sockets, family chosen at run time"}
		r.addNeed("AF_INET", site)
		r.addNeed("AF_INET6", site)
	}
	if present["net.unixSocket"] {
		r.addNeed("AF_UNIX", Site{Object: base, Func: "net.unixSocket", Via: "net package: Unix domain sockets"})
	}
	if !r.Static {
		// cgo: the C library and loader run too.
		return r.dynamicLibs(path, ef)
	}
	return nil
}

// goPclntab reads function boundaries from .gopclntab, which stripping
// leaves in place.
func goPclntab(ef *elf.File) ([]fn, error) {
	syms, err := elfsym.GoFuncs(ef)
	return toFns(syms), err
}
