package isa

import (
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"debug/gosym"

	"golang.org/x/arch/x86/x86asm"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/internal/elfsym"
)

// Report is what a binary needs.
type Report struct {
	Path     string `json:"path"`
	Language string `json:"language"` // "go" or "c"
	// Level is the x86-64 psABI level the binary declares (1 for the
	// baseline), and LevelFrom where it says so.
	Level     int    `json:"level"`
	LevelFrom string `json:"level_from,omitempty"`
	// Uses has one entry per extension beyond the baseline, by name.
	Uses []Use `json:"uses"`
	// Instructions decoded, and bytes that did not decode (data in .text,
	// padding).
	Instructions int      `json:"instructions"`
	Undecoded    int      `json:"undecoded_bytes"`
	Notes        []string `json:"notes,omitempty"`

	dispatch *Dispatch // see Dispatch
}

// Use is one extension the binary needs or may use.
type Use struct {
	Extension string `json:"extension"`
	Required  bool   `json:"required"`
	Why       string `json:"why"`
	// Unguarded counts instructions in code no CPU-feature check leads
	// to; Guarded those behind one. GoStd counts the unguarded ones that
	// are in Go standard library code, which the Go toolchain promises to
	// use beyond GOAMD64 only behind its own run-time checks: they do not
	// make an extension required (the guard analysis cannot follow the
	// runtime's function tables and signal handlers).
	Unguarded int `json:"unguarded"`
	Guarded   int `json:"guarded"`
	GoStd     int `json:"go_std,omitempty"`
	// Functions are a few of the functions using it, unguarded first.
	Functions []string `json:"functions,omitempty"`
}

// maxFunctions bounds Use.Functions: enough to see where, not a listing.
const maxFunctions = 4

// Errors for binaries this package cannot read.
var (
	ErrNotELF    = errors.New("not an ELF file")
	ErrNotX86_64 = errors.New("not an x86-64 binary")
)

// Required lists the required extensions.
func (r *Report) Required() []string { return r.names(true) }

// Optional lists the optional ones.
func (r *Report) Optional() []string { return r.names(false) }

func (r *Report) names(required bool) []string {
	var out []string
	for _, u := range r.Uses {
		if u.Required == required {
			out = append(out, u.Extension)
		}
	}
	return out
}

// File analyses the binary at path.
func File(path string) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := checkMagic(path, f); err != nil {
		return nil, err
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", path, ErrNotELF, err)
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%s: %w (%s %s); rebuild it for amd64 (GOARCH=amd64, or gcc -m64)", path, ErrNotX86_64, ef.Class, ef.Machine)
	}
	r := &Report{Path: path, Language: "c", Level: 1}
	if bi, err := buildinfo.Read(f); err == nil {
		r.Language = "go"
		r.Level, r.LevelFrom = 1, "GOAMD64=v1 (the default)"
		for _, s := range bi.Settings {
			if s.Key == "GOAMD64" && len(s.Value) == 2 && s.Value[0] == 'v' && s.Value[1] >= '1' && s.Value[1] <= '4' {
				r.Level, r.LevelFrom = int(s.Value[1]-'0'), "GOAMD64="+s.Value
			}
		}
	}
	if needed, used, ok := isaLevels(ef); ok {
		if l := levelOf(needed); needed != 0 && l > r.Level {
			r.Level, r.LevelFrom = l, fmt.Sprintf("GNU_PROPERTY_X86_ISA_1_NEEDED x86-64-v%d", l)
		}
		if used != 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("GNU_PROPERTY_X86_ISA_1_USED says its instructions reach x86-64-v%d", levelOf(used)))
		}
	}
	s, err := newScan(ef, r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.run()
	s.classify()
	r.dispatch = s.dispatch()
	return r, nil
}

// checkMagic refuses a file that does not start like an ELF file, quoting
// what it starts with instead.
func checkMagic(path string, f io.ReaderAt) error {
	var b [4]byte
	n, _ := f.ReadAt(b[:], 0)
	if string(b[:n]) != elf.ELFMAG {
		return fmt.Errorf("%s: %w (it starts %q); give the task's compiled binary", path, ErrNotELF, b[:n])
	}
	return nil
}

// fnInfo is what the scan learns about one function.
type fnInfo struct {
	sym elfsym.Sym
	// uses counts instructions per extension.
	uses map[string]int
	// refs are functions it calls, jumps to or takes the address of.
	refs map[int]bool
	// reads and writes are data addresses it loads from and stores to.
	reads, writes []uint64
	cpuid         bool // executes CPUID itself
	std           bool // Go standard library code
}

type scan struct {
	ef     *elf.File
	r      *Report
	funcs  []elfsym.Sym
	objs   []elfsym.Sym
	info   []*fnInfo
	byAddr map[uint64]int // function start -> index
	// guard and disp, by info index, are what classify found: functions
	// that test CPU features, and those reached only through them.
	guard, disp []bool
}

func newScan(ef *elf.File, r *Report) (*scan, error) {
	s := &scan{ef: ef, r: r, byAddr: map[uint64]int{}}
	var std func(elfsym.Sym) bool
	if r.Language == "go" {
		tab, err := elfsym.GoTable(ef)
		if err != nil {
			return nil, err
		}
		s.funcs, std = elfsym.TableFuncs(tab), goStd(tab)
	} else {
		s.funcs, _ = elfsym.Funcs(ef)
	}
	if objs, fromSymtab := elfsym.Objects(ef); fromSymtab {
		s.objs = objs
	} else {
		r.Notes = append(r.Notes, "no symbol table: the CPU-feature variables that guard dispatched code cannot be found")
	}
	s.info = make([]*fnInfo, len(s.funcs))
	for i, f := range s.funcs {
		s.info[i] = &fnInfo{sym: f, uses: map[string]int{}, refs: map[int]bool{}, std: std != nil && std(f)}
		s.byAddr[f.Start] = i
	}
	return s, nil
}

// goStd returns a test for Go standard library functions: by package path
// (no dot in its first element), or for assembly-local symbols without a
// package, by source file (the runtime's own directory prefix, or a
// -trimpath path without a module).
func goStd(tab *gosym.Table) func(elfsym.Sym) bool {
	root := ""
	if f := tab.LookupFunc("runtime.main"); f != nil {
		if file, _, _ := tab.PCToLine(f.Entry); strings.HasSuffix(file, "/runtime/proc.go") {
			root = strings.TrimSuffix(file, "runtime/proc.go")
		}
	}
	return func(sym elfsym.Sym) bool {
		if pkg, ok := goPackage(sym.Name); ok {
			return pkg != "main" && !strings.Contains(strings.Split(pkg, "/")[0], ".")
		}
		file, _, _ := tab.PCToLine(sym.Start)
		switch {
		case file == "":
			return false
		case root != "" && strings.HasPrefix(file, root):
			return true
		case strings.HasPrefix(file, "/"):
			return false
		}
		return !strings.Contains(strings.Split(file, "/")[0], ".")
	}
}

// goPackage is the import path of a Go symbol: everything before the first
// dot after the last slash.
func goPackage(name string) (string, bool) {
	slash := strings.LastIndexByte(name, '/')
	dot := strings.IndexByte(name[slash+1:], '.')
	if dot < 0 {
		return "", false
	}
	return name[:slash+1+dot], true
}

// run decodes every executable section, restarting at each function start
// so bytes between functions cannot desynchronise decoding.
func (s *scan) run() {
	for _, sec := range s.ef.Sections {
		if sec.Type != elf.SHT_PROGBITS || sec.Flags&elf.SHF_EXECINSTR == 0 || strings.HasPrefix(sec.Name, ".plt") {
			continue
		}
		data, err := sec.Data()
		if err != nil {
			s.r.Notes = append(s.r.Notes, fmt.Sprintf("%s unreadable: %v", sec.Name, err))
			continue
		}
		end := sec.Addr + uint64(len(data))
		// Pieces: each function, and the runs of code between them.
		pc := sec.Addr
		i := sort.Search(len(s.funcs), func(i int) bool { return s.funcs[i].End > sec.Addr })
		for pc < end {
			stop, fi := end, -1
			if i < len(s.funcs) && s.funcs[i].Start < end {
				if s.funcs[i].Start > pc {
					stop = s.funcs[i].Start
				} else {
					fi, stop = i, min(max(s.funcs[i].End, pc+1), end)
					i++
				}
			}
			s.decode(data[pc-sec.Addr:stop-sec.Addr], pc, fi)
			pc = stop
		}
	}
}

// decode walks one piece of code; fi is its function's index, or -1.
func (s *scan) decode(code []byte, pc uint64, fi int) {
	var f *fnInfo
	if fi >= 0 {
		f = s.info[fi]
	} else {
		// Code outside any function symbol: its own unnamed piece, which
		// nothing refers to, so whatever it uses counts as unguarded.
		f = &fnInfo{sym: elfsym.Sym{Name: fmt.Sprintf("code at %#x", pc), Start: pc, End: pc + uint64(len(code))},
			uses: map[string]int{}, refs: map[int]bool{}}
		s.info = append(s.info, f)
	}
	for off := 0; off < len(code); {
		in, err := Decode(code[off:])
		if err != nil || in.Len <= 0 {
			s.r.Undecoded++
			off++
			continue
		}
		s.r.Instructions++
		next := pc + uint64(off+in.Len)
		// TZCNT runs as BSF on a CPU without BMI1, and compilers emit it
		// for baseline targets knowing so: it requires nothing.
		if in.Op != "TZCNT" {
			for _, e := range in.Exts {
				f.uses[e]++
			}
		}
		if !in.VEX && !in.EVEX {
			s.legacy(f, code[off:off+in.Len], next)
		}
		off += in.Len
	}
}

// legacy records what a non-VEX instruction tells about control and data
// flow: calls, jumps and address references, memory reads and writes, and
// CPUID itself.
func (s *scan) legacy(f *fnInfo, b []byte, next uint64) {
	in, err := x86asm.Decode(b, 64)
	if err != nil {
		return
	}
	if in.Op == x86asm.CPUID {
		f.cpuid = true
		return
	}
	for i, a := range in.Args {
		switch a := a.(type) {
		case nil:
			return
		case x86asm.Rel:
			if in.Op == x86asm.CALL || in.Op == x86asm.JMP || in.Op == x86asm.LEA {
				s.ref(f, uint64(int64(next)+int64(a)))
			}
		case x86asm.Mem:
			var addr uint64
			switch {
			case a.Base == x86asm.RIP && a.Index == 0:
				addr = uint64(int64(next) + a.Disp)
			case a.Base == 0 && a.Index == 0 && a.Segment == 0:
				addr = uint64(a.Disp) // absolute, in non-PIE code
			default:
				continue
			}
			if in.Op == x86asm.LEA {
				s.ref(f, addr)
				f.reads = append(f.reads, addr)
			} else if i == 0 && writesFirstArg(in.Op) {
				f.writes = append(f.writes, addr)
			} else {
				f.reads = append(f.reads, addr)
			}
		}
	}
}

// writesFirstArg: instructions that store to their first operand.
func writesFirstArg(op x86asm.Op) bool {
	switch op {
	case x86asm.MOV, x86asm.XCHG, x86asm.MOVQ, x86asm.MOVD, x86asm.OR, x86asm.AND:
		return true
	}
	return strings.HasPrefix(op.String(), "SET")
}

func (s *scan) ref(f *fnInfo, addr uint64) {
	if j, ok := s.byAddr[addr]; ok && s.info[j] != f {
		f.refs[j] = true
	}
}

// featureVar says whether a data symbol holds CPU-feature bits that code
// tests before taking an extension's path.
func featureVar(name string) bool {
	switch name {
	case "internal/cpu.X86", "golang.org/x/sys/cpu.X86", "vendor/golang.org/x/sys/cpu.X86",
		"__cpu_model", "__cpu_features2", "_dl_x86_cpu_features", "_rtld_global_ro",
		"_dl_x86_feature_1", "_dl_hwcap", "_dl_hwcap2":
		return true
	}
	return strings.HasPrefix(name, "runtime.x86Has") || strings.HasPrefix(name, "runtime.support") ||
		strings.HasSuffix(name, "/cpu.X86") || strings.HasSuffix(name, "klauspost/cpuid/v2.CPU")
}

// maxDerivedSize: a variable derived from feature bits is a bool or a small
// word (crypto/sha256.useAVX2).
const maxDerivedSize = 8

// guards finds the functions that test CPU features: those executing CPUID,
// reading a known feature variable, or reading a variable that such a
// function set (a package's `useAVX2 = cpu.X86.HasAVX2`).
func (s *scan) guards() []bool {
	flag := map[int]bool{}
	for i, o := range s.objs {
		if featureVar(o.Name) {
			flag[i] = true
		}
	}
	reads := func(f *fnInfo) bool {
		for _, a := range f.reads {
			if o, ok := s.objIndex(a); ok && flag[o] {
				return true
			}
		}
		return false
	}
	// Derived variables, one level: enough for init-time assignments.
	for _, f := range s.info {
		if !reads(f) {
			continue
		}
		for _, a := range f.writes {
			if o, ok := s.objIndex(a); ok && s.objs[o].End-s.objs[o].Start <= maxDerivedSize {
				flag[o] = true
			}
		}
	}
	out := make([]bool, len(s.info))
	for i, f := range s.info {
		out[i] = f.cpuid || reads(f)
	}
	return out
}

func (s *scan) objIndex(addr uint64) (int, bool) {
	i := sort.Search(len(s.objs), func(i int) bool { return s.objs[i].Start > addr }) - 1
	if i >= 0 && s.objs[i].Contains(addr) {
		return i, true
	}
	return 0, false
}

// dispatched finds the functions reached only through guards: the largest
// set holding every guard, and every other function all of whose callers
// (and address takers) are in the set. A function nothing in the code
// refers to is an entry point, or reached through data (interfaces,
// function tables) by code we cannot follow: it counts as unguarded.
func (s *scan) dispatched(guard []bool) []bool {
	callers := make([][]int, len(s.info))
	for i, f := range s.info {
		for j := range f.refs {
			callers[j] = append(callers[j], i)
		}
	}
	// Aliases (two symbols at one address, as glibc's memcpy and memmove
	// variants are) share their callers: references name only one.
	for i, f := range s.info {
		if j, ok := s.byAddr[f.sym.Start]; ok && j != i {
			callers[i] = append(callers[i], callers[j]...)
		}
	}
	in := make([]bool, len(s.info))
	for i := range in {
		in[i] = guard[i] || len(callers[i]) > 0
	}
	for changed := true; changed; {
		changed = false
		for i := range in {
			if !in[i] || guard[i] {
				continue
			}
			for _, c := range callers[i] {
				if !in[c] {
					in[i], changed = false, true
					break
				}
			}
		}
	}
	return in
}

// classify turns per-function counts into the report's uses.
func (s *scan) classify() {
	knownGuards := len(s.objs) > 0
	guard := s.guards()
	disp := s.dispatched(guard)
	s.guard, s.disp = guard, disp
	type acc struct {
		use                   Use
		unFns, guardFn, stdFn []string
	}
	byExt := map[string]*acc{}
	get := func(ext string) *acc {
		a, ok := byExt[ext]
		if !ok {
			a = &acc{use: Use{Extension: ext}}
			byExt[ext] = a
		}
		return a
	}
	for i, f := range s.info {
		for ext, n := range f.uses {
			if f2 := cpuid.Lookup(ext); f2 != nil && f2.Level == 1 {
				continue
			}
			a := get(ext)
			switch {
			case disp[i]:
				a.use.Guarded += n
				a.guardFn = append(a.guardFn, f.sym.Name)
			case f.std:
				a.use.Unguarded += n
				a.use.GoStd += n
				a.stdFn = append(a.stdFn, f.sym.Name)
			default:
				a.use.Unguarded += n
				a.unFns = append(a.unFns, f.sym.Name)
			}
		}
	}
	levelSet := map[string]bool{}
	for _, n := range cpuid.LevelFeatures(s.r.Level) {
		if f := cpuid.Lookup(n); f.Level >= 2 {
			levelSet[n] = true
			get(n)
		}
	}
	for ext, a := range byExt {
		u := &a.use
		sort.Strings(a.unFns)
		sort.Strings(a.guardFn)
		sort.Strings(a.stdFn)
		u.Functions = firstN(append(append(a.unFns, a.guardFn...), a.stdFn...), maxFunctions)
		switch {
		case levelSet[ext]:
			u.Required, u.Why = true, "declared: "+s.r.LevelFrom
		case len(a.unFns) > 0 && !knownGuards && s.r.Language == "go":
			u.Why = "beyond GOAMD64, which the Go toolchain only uses behind run-time checks (no symbol table to confirm)"
		case len(a.unFns) > 0:
			u.Required = true
			u.Why = "used where no CPU-feature check guards it: " + strings.Join(firstN(a.unFns, 2), ", ")
		case u.GoStd == 0:
			u.Why = "only behind CPU-feature checks: " + strings.Join(firstN(a.guardFn, 2), ", ")
		default:
			u.Why = fmt.Sprintf("behind CPU-feature checks (%d), or in Go standard library code the toolchain dispatches at run time (%d: %s)",
				u.Guarded, u.GoStd, strings.Join(firstN(a.stdFn, 2), ", "))
		}
		s.r.Uses = append(s.r.Uses, *u)
	}
	sort.Slice(s.r.Uses, func(i, j int) bool { return s.r.Uses[i].Extension < s.r.Uses[j].Extension })
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
