package profiler

import (
	"sort"
	"time"

	"github.com/google/pprof/profile"
)

// builder turns aggregated stacks into a pprof profile, making each
// mapping, location and function once.
type builder struct {
	p     *profile.Profile
	bin   *elfImage
	maps  map[mapKey]*profile.Mapping
	locs  map[locKey]*profile.Location
	funcs map[funcKey]*profile.Function
}

type mapKey struct {
	file                 string
	start, limit, offset uint64
}

type locKey struct {
	m    *profile.Mapping
	addr uint64
}

type funcKey struct {
	name, file string
	start      int64
}

// build makes the profile of stacks, sampled between since and now. The
// caller holds collectMu (the symbol tables).
func (s *Sampler) build(stacks map[string]*stack, since, now time.Time) *profile.Profile {
	b := &builder{
		p: &profile.Profile{
			SampleType: []*profile.ValueType{
				{Type: "samples", Unit: "count"},
				{Type: "cpu", Unit: "nanoseconds"},
			},
			PeriodType:    &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
			Period:        int64(s.periodNs),
			TimeNanos:     since.UnixNano(),
			DurationNanos: now.Sub(since).Nanoseconds(),
		},
		bin:   s.bin,
		maps:  make(map[mapKey]*profile.Mapping),
		locs:  make(map[locKey]*profile.Location),
		funcs: make(map[funcKey]*profile.Function),
	}

	// Mapping[0] is the task binary: where execve placed it, or for a
	// non-PIE binary equally where its ELF headers say.
	tm := s.taskMap
	if tm.limit == 0 {
		tm.start, tm.limit, tm.offset = s.bin.textMapping()
	}
	b.mapping(&mapping{start: tm.start, limit: tm.limit, offset: tm.offset, task: true})

	keys := make([]string, 0, len(stacks))
	for k := range stacks {
		keys = append(keys, k)
	}
	sort.Strings(keys) // the same samples make the same profile
	for _, k := range keys {
		st := stacks[k]
		frames := st.frames
		if caller, ok := s.leafCaller(st); ok {
			frames = append([]frame{frames[0], caller}, frames[1:]...)
		}
		sample := &profile.Sample{
			Value: []int64{st.count, st.cpuNs},
			NumLabel: map[string][]int64{
				"pid":    {int64(st.pid)},
				"thread": {int64(st.tid)},
			},
		}
		for i, f := range frames {
			sample.Location = append(sample.Location, b.location(f, i > 0))
		}
		b.p.Sample = append(b.p.Sample, sample)
	}
	return b.p
}

// leafCaller recovers the caller a frame-pointer walk skips when the leaf
// had no frame at the sampled instruction (see leaf.go).
func (s *Sampler) leafCaller(st *stack) (frame, bool) {
	leaf := st.frames[0]
	if leaf.m == nil || !leaf.m.task || st.top == [2]frame{} {
		return frame{}, false
	}
	va, ok := s.bin.vaddr(leaf.m, leaf.addr)
	if !ok {
		return frame{}, false
	}
	slot := s.bin.retSlot(va)
	if slot < 0 || st.top[slot].m == nil {
		return frame{}, false
	}
	ret := st.top[slot]
	retVA, ok1 := s.bin.vaddr(ret.m, ret.addr)
	entry, ok2 := s.bin.entry(va)
	if !ok1 || !ok2 || !s.bin.callsTo(retVA, entry) {
		return frame{}, false
	}
	return ret, true
}

func (b *builder) mapping(m *mapping) *profile.Mapping {
	if m == nil {
		return nil
	}
	k := mapKey{file: m.file, start: m.start, limit: m.limit, offset: m.offset}
	if m.task {
		k.file = b.bin.path
	}
	if pm, ok := b.maps[k]; ok {
		return pm
	}
	pm := &profile.Mapping{
		ID:     uint64(len(b.p.Mapping) + 1),
		Start:  m.start,
		Limit:  m.limit,
		Offset: m.offset,
		File:   k.file,
	}
	if m.task {
		b.bin.load()
		pm.BuildID = b.bin.buildID
		pm.HasFunctions = true
		pm.HasFilenames = b.bin.source != "symtab"
		pm.HasLineNumbers = pm.HasFilenames
		pm.HasInlineFrames = b.bin.source == "dwarf"
	}
	b.maps[k] = pm
	b.p.Mapping = append(b.p.Mapping, pm)
	return pm
}

// location returns the Location of f. A return address (every frame but
// the first) is recorded and looked up at addr-1, inside the call
// instruction, so that it names the line of the call, and so that one
// address never stands for both a sampled instruction and a return.
func (b *builder) location(f frame, isReturn bool) *profile.Location {
	addr := f.addr
	if isReturn && addr > 0 {
		addr--
	}
	pm := b.mapping(f.m)
	k := locKey{m: pm, addr: addr}
	if loc, ok := b.locs[k]; ok {
		return loc
	}
	loc := &profile.Location{ID: uint64(len(b.p.Location) + 1), Mapping: pm, Address: addr}
	if f.m != nil && f.m.task {
		if va, ok := b.bin.vaddr(f.m, addr); ok {
			for _, fr := range b.bin.frames(va) {
				if fr.name == "" {
					break
				}
				loc.Line = append(loc.Line, profile.Line{Function: b.function(fr), Line: fr.line})
			}
		}
	}
	b.locs[k] = loc
	b.p.Location = append(b.p.Location, loc)
	return loc
}

func (b *builder) function(fr srcFrame) *profile.Function {
	k := funcKey{name: fr.name, file: fr.file, start: fr.startLine}
	if fn, ok := b.funcs[k]; ok {
		return fn
	}
	fn := &profile.Function{
		ID:         uint64(len(b.p.Function) + 1),
		Name:       fr.name,
		SystemName: fr.name,
		Filename:   fr.file,
		StartLine:  fr.startLine,
	}
	b.funcs[k] = fn
	b.p.Function = append(b.p.Function, fn)
	return fn
}
