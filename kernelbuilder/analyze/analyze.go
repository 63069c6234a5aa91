// Package analyze finds the system calls and other kernel needs of an
// x86-64 ELF task by reading its machine code, so the kernel builder can
// leave out everything else (patent US10949237B2 in DESIGN.md).
//
// Go binaries: every SYSCALL instruction and every call to a syscall
// wrapper (syscall.Syscall*, syscall.RawSyscall*, internal/runtime/syscall,
// golang.org/x/sys/unix) is decoded with x86asm and the number is read from
// the constant the caller puts in RAX (Go's register ABI passes the first
// argument there). C binaries: imported libc functions are mapped to the
// calls they make, and `mov eax, imm; syscall` sites are read in the
// binary, its dynamic loader and its other libraries. Whatever cannot be
// resolved is reported, never dropped.
package analyze

import (
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"

	"github.com/kindlingvm/kindling/kernelbuilder/syscalls"
)

// Site is where a system call or need was found.
type Site struct {
	Object string `json:"object"` // file name of the task or library
	Func   string `json:"func,omitempty"`
	Addr   uint64 `json:"addr,omitempty"`
	Via    string `json:"via"` // "syscall instruction", "call to syscall.Syscall", "libc write", ...
}

func (s Site) String() string {
	where := s.Object
	if s.Func != "" {
		where += ":" + s.Func
	}
	if s.Addr != 0 {
		where += fmt.Sprintf("@%#x", s.Addr)
	}
	return where + " (" + s.Via + ")"
}

// maxSites bounds how many sites are kept per call; Count has them all.
const maxSites = 4

// Syscall is one system call the task may make.
type Syscall struct {
	Nr    int    `json:"nr"`
	Name  string `json:"name"`
	Count int    `json:"sites"`
	Sites []Site `json:"where"`
}

// Need is an argument-dependent need, such as a socket address family.
type Need struct {
	Name  string `json:"name"` // AF_INET, AF_VSOCK, ...
	Count int    `json:"sites"`
	Sites []Site `json:"where"`
}

// Unresolved is something the analysis saw but could not pin down.
type Unresolved struct {
	Site
	What string `json:"what"` // "syscall number", "socket family", "libc function"
	Why  string `json:"why"`
}

func (u Unresolved) String() string { return u.What + " at " + u.Site.String() + ": " + u.Why }

// Report is the analysis of one task binary.
type Report struct {
	Path      string   `json:"path"`
	Language  string   `json:"language"` // go or c
	Static    bool     `json:"static"`
	Stripped  bool     `json:"stripped"`
	GoVersion string   `json:"go_version,omitempty"`
	Module    string   `json:"module,omitempty"`
	Modules   []string `json:"modules,omitempty"` // dependencies, path@version
	Libraries []string `json:"libraries,omitempty"`

	Syscalls   []*Syscall   `json:"syscalls"`
	Needs      []*Need      `json:"needs"`
	Unresolved []Unresolved `json:"unresolved"`
	// Notes say which fallbacks were taken and what they cost.
	Notes []string `json:"notes,omitempty"`
	// Conservative: the set could not be bounded, so a kernel for this
	// task must keep every optional system call.
	Conservative bool `json:"conservative"`

	table   *syscalls.Table
	byNr    map[int]*Syscall
	needsBy map[string]*Need
}

// Errors for input that cannot be analysed.
var (
	ErrNotELF        = errors.New("not an ELF file")
	ErrNotX86_64     = errors.New("not an x86-64 binary")
	ErrNotExecutable = errors.New("not an executable")
)

// File analyses the ELF executable at path.
func File(path string) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("analyse task: %w", err)
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		var magic [4]byte
		_, _ = io.ReadFull(io.NewSectionReader(f, 0, 4), magic[:])
		return nil, fmt.Errorf("analyse %s: %w (starts with %q; a task must be a Linux x86-64 executable, not a script or archive)", path, ErrNotELF, magic[:])
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("analyse %s: %w: it is a %s %s binary; rebuild it for x86-64 (GOARCH=amd64, or gcc without -m32)", path, ErrNotX86_64, classBits(ef.Class), ef.Machine)
	}
	if ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN {
		return nil, fmt.Errorf("analyse %s: %w: ELF type %s (an object file or core dump?)", path, ErrNotExecutable, ef.Type)
	}
	r := &Report{Path: path, table: syscalls.Default(), byNr: map[int]*Syscall{}, needsBy: map[string]*Need{}}
	r.Static = ef.Section(".interp") == nil
	if bi, err := buildinfo.Read(f); err == nil {
		r.Language = "go"
		r.GoVersion = bi.GoVersion
		r.Module = bi.Main.Path
		for _, d := range bi.Deps {
			r.Modules = append(r.Modules, d.Path+"@"+d.Version)
		}
		err = r.analyseGo(path, ef)
	} else {
		r.Language = "c"
		err = r.analyseC(path, ef)
	}
	if err != nil {
		return nil, err
	}
	r.finish()
	return r, nil
}

func classBits(c elf.Class) string {
	if c == elf.ELFCLASS32 {
		return "32-bit"
	}
	return "64-bit"
}

// addSyscall records call nr at site.
func (r *Report) addSyscall(nr int64, site Site) {
	if nr < 0 || nr > 1023 {
		r.Unresolved = append(r.Unresolved, Unresolved{Site: site, What: "syscall number", Why: fmt.Sprintf("%d is not an x86-64 system call", nr)})
		return
	}
	s := r.byNr[int(nr)]
	if s == nil {
		s = &Syscall{Nr: int(nr), Name: r.table.Name(int(nr))}
		r.byNr[int(nr)] = s
	}
	s.Count++
	if len(s.Sites) < maxSites {
		s.Sites = append(s.Sites, site)
	}
}

// addSyscallName records a call known by name (from the libc table).
func (r *Report) addSyscallName(name string, site Site) {
	s, ok := r.table.ByName(name)
	if !ok {
		r.Unresolved = append(r.Unresolved, Unresolved{Site: site, What: "syscall name", Why: fmt.Sprintf("%q is not an x86-64 system call in Linux %s", name, r.table.Version)})
		return
	}
	r.addSyscall(int64(s.Nr), site)
}

func (r *Report) addNeed(name string, site Site) {
	n := r.needsBy[name]
	if n == nil {
		n = &Need{Name: name}
		r.needsBy[name] = n
	}
	n.Count++
	if len(n.Sites) < maxSites {
		n.Sites = append(n.Sites, site)
	}
}

// family records the socket families found (or not, why != "") at site.
func (r *Report) family(site Site, vs []int64, why string) {
	site.Via += " (family)"
	if why != "" {
		r.Unresolved = append(r.Unresolved, Unresolved{Site: site, What: "socket family", Why: why})
		return
	}
	for _, v := range vs {
		r.addNeed(familyName(v), site)
	}
}

// recordSite records what a SYSCALL site or a wrapper call resolved to:
// its numbers, or why it could not be; and for socket() and socketpair()
// the family, read from famReg (0: a stack argument, not tracked) unless
// the site is inside a function that takes the family from its caller.
func (r *Report) recordSite(seg *segment, i int, site Site, nrs []int64, why string, famReg x86asm.Reg, famFn bool) {
	if why != "" {
		r.Unresolved = append(r.Unresolved, Unresolved{Site: site, What: "syscall number", Why: why})
		return
	}
	for _, nr := range nrs {
		r.addSyscall(nr, site)
	}
	if (!has(nrs, sysSocket) && !has(nrs, sysSocketpair)) || famFn {
		return
	}
	if famReg == 0 {
		r.family(site, nil, "the family is a stack argument")
		return
	}
	v, why := constIn(seg, i, famReg)
	r.family(site, v, why)
}

func has(vs []int64, v int64) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

func (r *Report) finish() {
	for _, s := range r.byNr {
		r.Syscalls = append(r.Syscalls, s)
	}
	sort.Slice(r.Syscalls, func(i, j int) bool { return r.Syscalls[i].Nr < r.Syscalls[j].Nr })
	for _, n := range r.needsBy {
		r.Needs = append(r.Needs, n)
	}
	sort.Slice(r.Needs, func(i, j int) bool { return r.Needs[i].Name < r.Needs[j].Name })
	sort.SliceStable(r.Unresolved, func(i, j int) bool { return r.Unresolved[i].Object < r.Unresolved[j].Object })
}

// Names lists the system calls by name, in number order.
func (r *Report) Names() []string {
	out := make([]string, len(r.Syscalls))
	for i, s := range r.Syscalls {
		out[i] = s.Name
	}
	return out
}

// Has reports whether the task may make the named call.
func (r *Report) Has(name string) bool {
	for _, s := range r.Syscalls {
		if s.Name == name {
			return true
		}
	}
	return false
}

// HasNeed reports whether the task has the named need (e.g. AF_INET).
func (r *Report) HasNeed(name string) bool {
	for _, n := range r.Needs {
		if n.Name == name {
			return true
		}
	}
	return false
}

// Summary is a one-paragraph human account of the report.
func (r *Report) Summary() string {
	var b strings.Builder
	kind := "dynamic"
	if r.Static {
		kind = "static"
	}
	fmt.Fprintf(&b, "%s: %s %s binary", filepath.Base(r.Path), kind, r.Language)
	if r.GoVersion != "" {
		fmt.Fprintf(&b, " (%s, module %s, %d dependencies)", r.GoVersion, r.Module, len(r.Modules))
	}
	fmt.Fprintf(&b, "; %d system calls, %d needs, %d unresolved", len(r.Syscalls), len(r.Needs), len(r.Unresolved))
	return b.String()
}
