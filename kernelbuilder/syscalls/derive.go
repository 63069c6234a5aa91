package syscalls

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Derive reads a kernel source tree and works out, for every x86-64 system
// call, which Kconfig options must be on for it to exist. A syscall is
// optional only if kernel/sys_ni.c names it with COND_SYSCALL; its options
// are then the conditions under which the file defining it is built: the
// obj-$(CONFIG_...) lines of its Makefile and of every directory above it,
// plus the #ifdef CONFIG_... blocks around the SYSCALL_DEFINE.
func Derive(src string) (*Table, error) {
	version, err := kernelVersion(src)
	if err != nil {
		return nil, err
	}
	tbl, err := readSyscallTable(filepath.Join(src, "arch/x86/entry/syscalls/syscall_64.tbl"))
	if err != nil {
		return nil, err
	}
	cond, err := readCondSyscalls(filepath.Join(src, "kernel/sys_ni.c"))
	if err != nil {
		return nil, err
	}
	defs, kc, err := scanTree(src)
	if err != nil {
		return nil, err
	}
	mk := &makefiles{src: src, dirs: map[string]*makeIndex{}}
	t := &Table{Version: version}
	for _, e := range tbl {
		s := Syscall{Nr: e.nr, Name: e.name}
		entry := strings.TrimPrefix(e.entry, "sys_")
		if !cond[entry] {
			t.Syscalls = append(t.Syscalls, s)
			continue
		}
		s.Optional = true
		best := -1
		var bestOpts []string
		for _, d := range defs[entry] {
			opts, ok := mk.fileConditions(d.file)
			if !ok {
				// Not built on its own: kernel/sched/membarrier.c is
				// #included by build_utility.c under #ifdef CONFIG_MEMBARRIER.
				opts, ok = mk.includerConditions(d.file)
			}
			if !ok {
				continue
			}
			opts = union(opts, d.ifdefs)
			if best < 0 || len(opts) < len(bestOpts) {
				best, bestOpts = 1, opts
				s.Source = d.file
			}
		}
		if best < 0 {
			// Named by COND_SYSCALL but never built on x86: always ENOSYS.
			s.Missing = true
		}
		s.Options = kc.settable(bestOpts)
		t.Syscalls = append(t.Syscalls, s)
	}
	return t, nil
}

func kernelVersion(src string) (string, error) {
	data, err := os.ReadFile(filepath.Join(src, "Makefile"))
	if err != nil {
		return "", fmt.Errorf("kernel source %s: %w", src, err)
	}
	get := func(k string) string {
		m := regexp.MustCompile(`(?m)^` + k + ` = (\S*)`).FindSubmatch(data)
		if m == nil {
			return ""
		}
		return string(m[1])
	}
	v := get("VERSION") + "." + get("PATCHLEVEL") + "." + get("SUBLEVEL") + get("EXTRAVERSION")
	if get("VERSION") == "" {
		return "", fmt.Errorf("kernel source %s: no VERSION in Makefile", src)
	}
	return v, nil
}

type tblEntry struct {
	nr          int
	name, entry string
}

func readSyscallTable(p string) ([]tblEntry, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("syscall table: %w", err)
	}
	defer f.Close()
	var out []tblEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if fields[1] != "common" && fields[1] != "64" {
			continue // x32
		}
		nr, err := strconv.Atoi(fields[0])
		if err != nil {
			return nil, fmt.Errorf("%s: bad number %q", p, fields[0])
		}
		out = append(out, tblEntry{nr, fields[2], fields[3]})
	}
	return out, sc.Err()
}

func readCondSyscalls(p string) (map[string]bool, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("sys_ni.c: %w", err)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^COND_SYSCALL\((\w+)\);`).FindAllSubmatch(data, -1) {
		out[string(m[1])] = true
	}
	return out, nil
}

type definition struct {
	file   string // relative to the source root
	ifdefs []string
}

var (
	defineRe = regexp.MustCompile(`^\s*SYSCALL_DEFINE\d\((\w+)`)
	ifRe     = regexp.MustCompile(`^\s*#\s*(ifdef|ifndef|if|elif|else|endif)\b(.*)`)
	cfgRe    = regexp.MustCompile(`(?:defined\s*\(?\s*|IS_ENABLED\(|IS_BUILTIN\()?(CONFIG_\w+)`)
)

// skipDir says which top-level trees can hold no x86-64 system call.
func skipDir(rel string) bool {
	switch rel {
	case "Documentation", "tools", "samples", "scripts", "usr", "include", "LICENSES", "rust":
		return true
	}
	return strings.HasPrefix(rel, "arch/") && rel != "arch/x86" && strings.Count(rel, "/") == 1
}

// scanTree reads the source tree once: SYSCALL_DEFINEs from the .c files
// and the prompts and selects of every Kconfig file.
func scanTree(src string) (map[string][]definition, *kconfig, error) {
	defs := map[string][]definition{}
	kc := &kconfig{prompt: map[string]bool{}, selectedBy: map[string][]string{}}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			if skipDir(filepath.ToSlash(rel)) {
				return filepath.SkipDir
			}
			return nil
		}
		isC, isKconfig := strings.HasSuffix(p, ".c"), strings.HasPrefix(d.Name(), "Kconfig")
		if !isC && !isKconfig {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if isKconfig {
			kc.parse(data)
			return nil
		}
		if !bytes.Contains(data, []byte("SYSCALL_DEFINE")) {
			return nil
		}
		for name, ifdefs := range scanDefinitions(data) {
			defs[name] = append(defs[name], definition{filepath.ToSlash(rel), ifdefs})
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read kernel source %s: %w", src, err)
	}
	return defs, kc, nil
}

// scanDefinitions finds SYSCALL_DEFINEn(name ...) in a C file with the
// CONFIG_ options its enclosing #if blocks require. Only positive tests
// count (#ifdef, defined(), IS_ENABLED() joined by &&); #ifndef, #else and
// || add no requirement.
func scanDefinitions(data []byte) map[string][]string {
	out := map[string][]string{}
	walkConditions(data, func(line string, req []string) bool {
		if m := defineRe.FindStringSubmatch(line); m != nil {
			if _, seen := out[m[1]]; !seen {
				out[m[1]] = req
			}
		}
		return true
	})
	return out
}

// conditionsAt is the #if requirement at the first line matching re.
func conditionsAt(data []byte, re *regexp.Regexp) (req []string, found bool) {
	walkConditions(data, func(line string, r []string) bool {
		if re.MatchString(line) {
			req, found = r, true
			return false
		}
		return true
	})
	return req, found
}

// walkConditions calls fn for each non-directive line with the CONFIG_
// options the enclosing #if blocks require, until fn returns false.
func walkConditions(data []byte, fn func(line string, req []string) bool) {
	var stack [][]string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := ifRe.FindStringSubmatch(line); m != nil {
			switch m[1] {
			case "ifdef", "if":
				stack = append(stack, positiveConfigs(m[1], m[2]))
			case "ifndef":
				stack = append(stack, nil)
			case "elif", "else":
				if len(stack) > 0 {
					stack[len(stack)-1] = nil
					if m[1] == "elif" {
						stack[len(stack)-1] = positiveConfigs("if", m[2])
					}
				}
			case "endif":
				if len(stack) > 0 {
					stack = stack[:len(stack)-1]
				}
			}
			continue
		}
		var req []string
		for _, s := range stack {
			req = union(req, s)
		}
		if !fn(line, req) {
			return
		}
	}
}

func positiveConfigs(kind, expr string) []string {
	expr = strings.TrimSpace(expr)
	if i := strings.Index(expr, "/*"); i >= 0 {
		expr = expr[:i]
	}
	if kind == "ifdef" {
		if strings.HasPrefix(expr, "CONFIG_") {
			return []string{strings.Fields(expr)[0]}
		}
		return nil
	}
	if strings.Contains(expr, "||") || strings.Contains(expr, "!") {
		return nil
	}
	var out []string
	for _, m := range cfgRe.FindAllStringSubmatch(expr, -1) {
		out = union(out, []string{m[1]})
	}
	return out
}

// makeEntry is one object on the right of an `<prefix>-<cond> += ...` line.
type makeEntry struct {
	prefix string   // obj, lib, or a composite/variable name
	conds  []string // CONFIG_ options this line and its ifdef blocks need
	// overridden: a later `prefix-$(CONFIG_X) :=` replaces this list
	// whenever X is on (mm/Makefile's nommu.o), so it is not the one built.
	overridden bool
}

type makeIndex struct {
	objs map[string][]*makeEntry // "file.o", "dir/", "$var"
}

type makefiles struct {
	src  string
	dirs map[string]*makeIndex
}

var (
	assignRe = regexp.MustCompile(`^([A-Za-z0-9_.-]+?)-(y|objs|\$\((CONFIG_\w+)\)|\$\(subst m,y,\$\((CONFIG_\w+)\)\))\s*(\+=|:=|=)\s*(.*)$`)
	varRefRe = regexp.MustCompile(`^\$\(([A-Za-z0-9_.-]+?)-(y|objs)\)$`)
	mkIfRe   = regexp.MustCompile(`^(ifdef|ifndef|ifeq|ifneq|else|endif)\b\s*(.*)$`)
)

func (m *makefiles) index(dir string) *makeIndex {
	if ix, ok := m.dirs[dir]; ok {
		return ix
	}
	ix := &makeIndex{objs: map[string][]*makeEntry{}}
	m.dirs[dir] = ix
	for _, name := range []string{"Kbuild", "Makefile"} {
		data, err := os.ReadFile(filepath.Join(m.src, dir, name))
		if err != nil {
			continue
		}
		ix.parse(data)
	}
	return ix
}

func (ix *makeIndex) parse(data []byte) {
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var stack [][]string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.Index(line, "#"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		if mm := mkIfRe.FindStringSubmatch(line); mm != nil {
			switch mm[1] {
			case "ifdef":
				var c []string
				if strings.HasPrefix(mm[2], "CONFIG_") {
					c = []string{mm[2]}
				}
				stack = append(stack, c)
			case "ifeq", "ifneq":
				stack = append(stack, makeCondition(mm[1], mm[2]))
			case "ifndef":
				stack = append(stack, nil)
			case "else":
				if len(stack) > 0 {
					stack[len(stack)-1] = nil
				}
			case "endif":
				if len(stack) > 0 {
					stack = stack[:len(stack)-1]
				}
			}
			continue
		}
		a := assignRe.FindStringSubmatch(line)
		if a == nil {
			continue
		}
		prefix := a[1]
		var conds []string
		for _, s := range stack {
			conds = union(conds, s)
		}
		cfg := a[3]
		if cfg == "" {
			cfg = a[4]
		}
		if cfg != "" {
			conds = union(conds, []string{cfg})
		}
		if a[5] == ":=" && cfg != "" {
			// prefix-$(CONFIG_X) := replaces what prefix-y := set.
			for _, es := range ix.objs {
				for _, e := range es {
					if e.prefix == prefix && len(e.conds) == len(conds)-1 {
						e.overridden = true
					}
				}
			}
		}
		for _, obj := range strings.Fields(a[6]) {
			key := obj
			if v := varRefRe.FindStringSubmatch(obj); v != nil {
				key = "$" + v[1]
			}
			ix.objs[key] = append(ix.objs[key], &makeEntry{prefix: prefix, conds: conds})
		}
	}
}

// makeCondition reads `ifeq ($(CONFIG_X),y)` and `ifneq ($(CONFIG_X),)`.
func makeCondition(kind, expr string) []string {
	m := regexp.MustCompile(`^\(\$\((CONFIG_\w+)\),\s*(\w*)\)$`).FindStringSubmatch(strings.TrimSpace(expr))
	if m == nil {
		return nil
	}
	if (kind == "ifeq" && m[2] == "y") || (kind == "ifneq" && m[2] == "") {
		return []string{m[1]}
	}
	return nil
}

// fileConditions says what must be on for file (a .c path relative to the
// source root) to be built; ok is false if no Makefile builds it.
func (m *makefiles) fileConditions(file string) ([]string, bool) {
	dir, base := path.Split(file)
	dir = strings.TrimSuffix(dir, "/")
	obj := strings.TrimSuffix(base, ".c") + ".o"
	return m.objConditions(dir, obj, 0)
}

func (m *makefiles) objConditions(dir, obj string, depth int) ([]string, bool) {
	if depth > 8 {
		return nil, false
	}
	ix := m.index(dir)
	var best []string
	found := false
	for _, e := range ix.objs[obj] {
		if e.overridden {
			continue
		}
		conds := e.conds
		switch e.prefix {
		case "obj", "lib", "core", "drivers":
			up, ok := m.dirConditions(dir, depth+1)
			if !ok {
				continue
			}
			conds = union(conds, up)
		default:
			// A composite object (foo-y += bar.o) or a variable used
			// elsewhere as $(foo-y).
			up, ok := m.objConditions(dir, e.prefix+".o", depth+1)
			if !ok {
				up, ok = m.objConditions(dir, "$"+e.prefix, depth+1)
			}
			if !ok {
				continue
			}
			conds = union(conds, up)
		}
		if !found || len(conds) < len(best) {
			best, found = conds, true
		}
	}
	return best, found
}

// dirConditions says what must be on for dir's Makefile to be used. A
// directory no parent names (the root, arch/x86 from the root Makefile)
// is unconditional.
func (m *makefiles) dirConditions(dir string, depth int) ([]string, bool) {
	if dir == "" || dir == "." {
		return nil, true
	}
	parent, base := path.Split(dir)
	parent = strings.TrimSuffix(parent, "/")
	ix := m.index(parent)
	if len(ix.objs[base+"/"]) == 0 {
		if parent == "" || parent == "arch" {
			return nil, true
		}
		return nil, false
	}
	return m.objConditions(parent, base+"/", depth)
}

// includerConditions handles a .c file that another .c file in the same
// directory #includes: the includer's build conditions plus the #ifdefs
// around the #include.
func (m *makefiles) includerConditions(file string) ([]string, bool) {
	dir, base := path.Split(file)
	entries, err := os.ReadDir(filepath.Join(m.src, dir))
	if err != nil {
		return nil, false
	}
	inc := regexp.MustCompile(`^\s*#\s*include\s+"` + regexp.QuoteMeta(base) + `"`)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".c") || e.Name() == base {
			continue
		}
		data, err := os.ReadFile(filepath.Join(m.src, dir, e.Name()))
		if err != nil || !bytes.Contains(data, []byte(base)) {
			continue
		}
		ifdefs, found := conditionsAt(data, inc)
		if !found {
			continue
		}
		opts, ok := m.fileConditions(dir + e.Name())
		if ok {
			return union(opts, ifdefs), true
		}
	}
	return nil, false
}

func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, s := range b {
		dup := false
		for _, t := range out {
			if s == t {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// kconfig knows which symbols a .config can set (they have a prompt) and
// which symbols select the others.
type kconfig struct {
	prompt     map[string]bool
	selectedBy map[string][]string
}

var (
	kcEntryRe  = regexp.MustCompile(`^\s*(?:menu)?config\s+(\w+)\s*$`)
	kcPromptRe = regexp.MustCompile(`^\s*(?:bool|tristate|string|int|hex|prompt)\s+"`)
	kcSelectRe = regexp.MustCompile(`^\s*select\s+(\w+)`)
)

// parse adds one Kconfig file's entries.
func (kc *kconfig) parse(data []byte) {
	cur := ""
	for _, line := range strings.Split(string(data), "\n") {
		if m := kcEntryRe.FindStringSubmatch(line); m != nil {
			cur = "CONFIG_" + m[1]
			continue
		}
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "menu ") || strings.HasPrefix(t, "choice") || strings.HasPrefix(t, "endmenu") || strings.HasPrefix(t, "if ") || strings.HasPrefix(t, "endif") || strings.HasPrefix(t, "source ") {
			cur = ""
			continue
		}
		if cur == "" {
			continue
		}
		if kcPromptRe.MatchString(line) {
			kc.prompt[cur] = true
		}
		if m := kcSelectRe.FindStringSubmatch(line); m != nil {
			kc.selectedBy["CONFIG_"+m[1]] = union(kc.selectedBy["CONFIG_"+m[1]], []string{cur})
		}
	}
}

// settable turns a list of required symbols into ones a .config can set:
// a symbol without a prompt is replaced by a symbol with one that selects
// it (BPF by BPF_SYSCALL), or dropped if nothing selects it, since then
// the architecture fixes its value (MMU, 64BIT, X86_64 on x86-64).
func (kc *kconfig) settable(opts []string) []string {
	var out []string
	for _, o := range opts {
		if kc.prompt[o] {
			out = union(out, []string{o})
			continue
		}
		for _, sel := range kc.selectedBy[o] {
			if kc.prompt[sel] {
				out = union(out, []string{sel})
				break
			}
		}
	}
	return out
}
