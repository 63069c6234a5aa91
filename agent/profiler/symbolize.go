package profiler

import (
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/kindlingvm/kindling/internal/buildid"
	"github.com/kindlingvm/kindling/internal/elfsym"
)

// symbolCacheMax bounds the per-address cache of source frames: a task
// runs through far fewer distinct sampled addresses than this in the life
// of one function instance, and past it the cache starts over.
const symbolCacheMax = 1 << 16

// srcFrame is one source-level frame of an address.
type srcFrame struct {
	origin // function name (Go's symbol name) and the line of its declaration
	file   string
	line   int64
}

// elfImage is the task executable, open for reading symbols and code. Its
// symbol tables are read on first use, and its methods are called only
// with Sampler.collectMu held.
type elfImage struct {
	path    string // absolute
	f       *os.File
	ef      *elf.File
	buildID string
	id      fileID
	loads   []elf.ProgHeader // PT_LOAD, for file offset to address

	loaded bool
	dw     *dwarfTable  // nil without DWARF (linked with -w, or stripped)
	gt     *gosym.Table // nil unless DWARF is absent: Go's own table, kept by strip
	starts []int32      // gt.Funcs' declaration lines, where the table has them
	syms   []elfsym.Sym // the ELF symbol table: the last resort, names only
	source string       // which of the three answered for the binary, for tests
	cache  map[uint64][]srcFrame
	slots  map[uint64]int // retSlot's answers
}

// openBinary opens path and reads its ELF headers and build ID.
func openBinary(path string) (*elfImage, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("task binary %s: %w", path, err)
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("open task binary %s for symbols: %w (Options.Binary must name a readable copy of the executable)", abs, err)
	}
	b := &elfImage{path: abs, f: f, cache: make(map[uint64][]srcFrame), slots: make(map[uint64]int)}
	if err := b.init(); err != nil {
		f.Close()
		return nil, fmt.Errorf("task binary %s: %w", abs, err)
	}
	return b, nil
}

func (b *elfImage) init() error {
	st, err := b.f.Stat()
	if err != nil {
		return err
	}
	b.id = statID(st)
	if b.ef, err = elf.NewFile(b.f); err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	for _, p := range b.ef.Progs {
		if p.Type == elf.PT_LOAD {
			b.loads = append(b.loads, p.ProgHeader)
		}
	}
	if len(b.loads) == 0 {
		return errors.New("no loadable segments")
	}
	b.buildID, err = buildid.ELF(b.ef)
	if err != nil && !errors.Is(err, buildid.ErrNone) {
		return fmt.Errorf("build ID: %w", err)
	}
	return nil
}

func (b *elfImage) close() error { return b.f.Close() }

// textMapping is the executable segment as a mapping would show it: what
// Mapping[0] says for a non-PIE binary before any record has placed it.
func (b *elfImage) textMapping() (start, limit, offset uint64) {
	page := uint64(os.Getpagesize())
	for _, p := range b.loads {
		if p.Flags&elf.PF_X != 0 {
			return p.Vaddr &^ (page - 1), p.Vaddr + p.Memsz, p.Off &^ (page - 1)
		}
	}
	return 0, 0, 0
}

// vaddr converts an address in a mapping of the binary into the address
// the ELF file gives it (they differ for a PIE binary).
func (b *elfImage) vaddr(m *mapping, addr uint64) (uint64, bool) {
	off := addr - m.start + m.offset
	for _, p := range b.loads {
		if off >= p.Off && off < p.Off+p.Filesz {
			return p.Vaddr + (off - p.Off), true
		}
	}
	return 0, false
}

// code reads up to n bytes of the file at ELF address va.
func (b *elfImage) code(va uint64, n int) []byte {
	for _, p := range b.loads {
		if va >= p.Vaddr && va < p.Vaddr+p.Filesz {
			n = int(min(uint64(n), p.Vaddr+p.Filesz-va))
			buf := make([]byte, n)
			k, _ := b.f.ReadAt(buf, int64(p.Off+(va-p.Vaddr)))
			return buf[:k]
		}
	}
	return nil
}

// load reads the symbol tables once: DWARF if present, else .gopclntab,
// else the ELF symbol table.
func (b *elfImage) load() {
	if b.loaded {
		return
	}
	b.loaded = true
	if d, err := b.ef.DWARF(); err == nil {
		b.dw = newDwarfTable(d)
		b.source = "dwarf"
		return
	}
	if tab, err := elfsym.GoTable(b.ef); err == nil {
		b.gt = tab
		if starts := goStartLines(b.ef); len(starts) == len(tab.Funcs) {
			b.starts = starts
		}
		b.source = "gopclntab"
		return
	}
	b.syms, _ = elfsym.Funcs(b.ef)
	b.source = "symtab"
}

// frames returns the source frames at ELF address va, innermost first;
// nil if nothing names it.
func (b *elfImage) frames(va uint64) []srcFrame {
	if fr, ok := b.cache[va]; ok {
		return fr
	}
	b.load()
	var fr []srcFrame
	switch {
	case b.dw != nil:
		fr = b.dw.frames(va)
	case b.gt != nil:
		// No inlining information here (debug/gosym does not read
		// Go's inline tree): the frame is the outermost function, with
		// the line of the innermost code.
		if file, line, fn := b.gt.PCToLine(va); fn != nil {
			fr = []srcFrame{{origin: origin{name: fn.Name, startLine: b.goStartLine(fn)}, file: file, line: int64(line)}}
		}
	default:
		if s, ok := elfsym.At(b.syms, va); ok {
			fr = []srcFrame{{origin: origin{name: s.Name}}}
		}
	}
	if len(b.cache) >= symbolCacheMax {
		clear(b.cache)
	}
	b.cache[va] = fr
	return fr
}

// goStartLine returns fn's declaration line from .gopclntab or, in a
// table too old to have it, the line of its first instruction.
func (b *elfImage) goStartLine(fn *gosym.Func) int64 {
	if b.starts != nil {
		i := sort.Search(len(b.gt.Funcs), func(i int) bool { return b.gt.Funcs[i].Entry >= fn.Entry })
		if i < len(b.starts) && b.gt.Funcs[i].Entry == fn.Entry {
			return int64(b.starts[i])
		}
	}
	_, line, _ := b.gt.PCToLine(fn.Entry)
	return int64(line)
}

// entry returns the first address of the function holding va.
func (b *elfImage) entry(va uint64) (uint64, bool) {
	b.load()
	switch {
	case b.dw != nil:
		return b.dw.entry(va)
	case b.gt != nil:
		if fn := b.gt.PCToFunc(va); fn != nil {
			return fn.Entry, true
		}
	default:
		if s, ok := elfsym.At(b.syms, va); ok {
			return s.Start, true
		}
	}
	return 0, false
}
