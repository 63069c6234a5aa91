package profiles

import (
	"cmp"
	"slices"
	"sort"

	"github.com/google/pprof/profile"

	"github.com/kindlingvm/kindling/cpuid/isa"
)

// WantedFraction is the share of a profile's CPU time in an extension's
// dispatched code (isa.Dispatch) at which the extension is wanted: worth
// exposing to the task rather than hiding it behind a narrower CPU
// template. A fast path runs k times faster than its fallback (measured
// with Go 1.26 on the development host: sha256 on SHA-NI 7.3x the generic
// code and 3.8x the AVX2 code; bytes.IndexByte on AVX2 3.4x SSE2). With
// a fraction f measured while the extension was exposed, hiding it costs
// f*(k-1) more CPU: 12% or more at 5% for k >= 3.4. Measured while it
// was hidden, exposing it saves f*(1-1/k): 3.5% or more at 5%. Below 5%
// the gain is small, and a short profile's few samples say little about
// it (at 100 Hz, one sample of a one-second profile is 1%).
const WantedFraction = 0.05

// maxHintFunctions bounds Hint.Functions: enough to see where, not a
// listing.
const maxHintFunctions = 4

// Hint is what a CPU profile says about one optional extension.
type Hint struct {
	Extension string `json:"extension"`
	// Fraction of the profile's CPU time in samples whose stack has a
	// frame in the extension's dispatched code (its fast paths, or the
	// dispatchers that choose them and call the fallback otherwise).
	Fraction float64 `json:"fraction"`
	// Wanted: Fraction is at least WantedFraction.
	Wanted bool `json:"wanted"`
	// Functions are the hottest few of that code, hottest first, by the
	// CPU time of the samples they are on the stack of.
	Functions []string `json:"functions,omitempty"`
}

// Hints reads, for each optional extension of a binary, how much of a
// profile of it is in that extension's dispatched code: one Hint per
// extension in d, the largest Fraction first. A sample counts once per
// extension however many of its frames are in the extension's code.
// Frames are matched by function name (any of a location's lines, so
// inlined dispatchers count), or for an unsymbolized frame in the main
// binary's mapping, by address.
func Hints(p *profile.Profile, d *isa.Dispatch) []Hint {
	if p == nil || d == nil || len(d.Sets) == 0 {
		return nil
	}
	m := newMatcher(d)
	vi := valueIndex(p)
	hot := make([]map[string]int64, len(d.Sets)) // per extension, per function
	for i := range hot {
		hot[i] = map[string]int64{}
	}
	inExt := make([]int64, len(d.Sets))
	var total int64
	for _, s := range p.Sample {
		if vi >= len(s.Value) {
			continue
		}
		v := s.Value[vi]
		total += v
		seen := map[int]bool{}
		seenFn := map[fnRef]bool{}
		for _, l := range s.Location {
			for _, r := range m.match(p, l) {
				if !seen[r.ext] {
					seen[r.ext] = true
					inExt[r.ext] += v
				}
				if !seenFn[r] {
					seenFn[r] = true
					hot[r.ext][r.name] += v
				}
			}
		}
	}
	out := make([]Hint, len(d.Sets))
	for i, set := range d.Sets {
		h := Hint{Extension: set.Extension}
		if total > 0 {
			h.Fraction = float64(inExt[i]) / float64(total)
		}
		h.Wanted = inExt[i] > 0 && h.Fraction >= WantedFraction
		h.Functions = hottest(hot[i], maxHintFunctions)
		out[i] = h
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Fraction > out[j].Fraction })
	return out
}

// valueIndex is the sample value holding CPU time: "cpu", else the
// first.
func valueIndex(p *profile.Profile) int {
	for i, t := range p.SampleType {
		if t != nil && t.Type == periodType.Type {
			return i
		}
	}
	return 0
}

func hottest(fns map[string]int64, n int) []string {
	names := make([]string, 0, len(fns))
	for f := range fns {
		names = append(names, f)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(fns[b], fns[a]), cmp.Compare(a, b))
	})
	return names[:min(n, len(names))]
}

// fnRef is one function of one extension's set.
type fnRef struct {
	ext  int
	name string
}

// matcher finds the dispatch functions a profile location is in.
type matcher struct {
	d      *isa.Dispatch
	byName map[string][]fnRef
	// funcs are every set's functions by address, for unsymbolized
	// frames.
	funcs []addrFn
	memo  map[*profile.Location][]fnRef
}

type addrFn struct {
	start, end uint64
	ref        fnRef
}

func newMatcher(d *isa.Dispatch) *matcher {
	m := &matcher{d: d, byName: map[string][]fnRef{}, memo: map[*profile.Location][]fnRef{}}
	for i, set := range d.Sets {
		for _, f := range set.Functions() {
			r := fnRef{ext: i, name: f.Name}
			m.byName[f.Name] = append(m.byName[f.Name], r)
			if f.End > f.Start {
				m.funcs = append(m.funcs, addrFn{f.Start, f.End, r})
			}
		}
	}
	slices.SortFunc(m.funcs, func(a, b addrFn) int { return cmp.Compare(a.start, b.start) })
	return m
}

func (m *matcher) match(p *profile.Profile, l *profile.Location) []fnRef {
	if r, ok := m.memo[l]; ok {
		return r
	}
	var out []fnRef
	if len(l.Line) > 0 {
		for _, ln := range l.Line {
			if ln.Function != nil {
				out = append(out, m.byName[ln.Function.Name]...)
			}
		}
	} else if l.Mapping != nil && len(p.Mapping) > 0 && l.Mapping == p.Mapping[0] && l.Address >= l.Mapping.Start {
		// Unsymbolized, in the task binary: its file offset places it.
		if va, ok := m.d.Addr(l.Address - l.Mapping.Start + l.Mapping.Offset); ok {
			// Sets share functions: every entry starting at or before va
			// whose range holds it.
			i := sort.Search(len(m.funcs), func(i int) bool { return m.funcs[i].start > va })
			for j := i - 1; j >= 0 && m.funcs[j].start >= m.funcs[i-1].start; j-- {
				if va < m.funcs[j].end {
					out = append(out, m.funcs[j].ref)
				}
			}
		}
	}
	m.memo[l] = out
	return out
}
