package profiles

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/pprof/profile"
)

const testBuild = "4c23eb981511dbe1a3645a121b77634884f8b681"

// synthetic makes a CPU profile of build id: n samples on stacks drawn
// from a fixed set of functions and locations (so that profiles made with
// different seeds share them, as profiles of one binary do), with its
// tables listed and numbered in an order drawn from seed too.
func synthetic(seed uint64, id string, n int) *profile.Profile {
	r := rand.New(rand.NewPCG(seed, 1))
	p := &profile.Profile{
		SampleType:    []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType:    &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:        10_000_000,
		TimeNanos:     1_700_000_000_000_000_000 + r.Int64N(1e12),
		DurationNanos: 1e9 + r.Int64N(1e9),
		Mapping: []*profile.Mapping{
			{Start: 0x400000, Limit: 0x800000, File: "/task", BuildID: id, HasFunctions: true},
			{Start: 0x7fff0000, Limit: 0x7fff2000, File: "[vdso]"},
		},
	}
	if seed%3 == 0 {
		p.Comments = []string{fmt.Sprintf("comment %d", seed%2)}
	}
	const nFuncs, nLocs = 12, 30
	for i := range nFuncs {
		p.Function = append(p.Function, &profile.Function{Name: fmt.Sprintf("main.f%d", i), Filename: "main.go", StartLine: int64(10 * i)})
	}
	for i := range nLocs {
		l := &profile.Location{Mapping: p.Mapping[0], Address: 0x401000 + uint64(i)*0x20,
			Line: []profile.Line{{Function: p.Function[i%nFuncs], Line: int64(10*(i%nFuncs) + i)}}}
		if i%7 == 0 { // an inlined call
			l.Line = append(l.Line, profile.Line{Function: p.Function[(i+1)%nFuncs], Line: int64(i)})
		}
		if i == nLocs-1 {
			l.Mapping, l.Address, l.Line = p.Mapping[1], 0x7fff0100, nil
		}
		p.Location = append(p.Location, l)
	}
	for range n {
		s := &profile.Sample{}
		for range 1 + r.IntN(5) {
			s.Location = append(s.Location, p.Location[r.IntN(nLocs)])
		}
		k := 1 + r.Int64N(3)
		s.Value = []int64{k, k * p.Period}
		if r.IntN(4) == 0 {
			s.Label = map[string][]string{"phase": {[]string{"init", "serve"}[r.IntN(2)]}}
		}
		p.Sample = append(p.Sample, s)
	}
	// List and number the tables in an order of this seed's own.
	r.Shuffle(len(p.Function), func(i, j int) { p.Function[i], p.Function[j] = p.Function[j], p.Function[i] })
	r.Shuffle(len(p.Location), func(i, j int) { p.Location[i], p.Location[j] = p.Location[j], p.Location[i] })
	r.Shuffle(len(p.Sample), func(i, j int) { p.Sample[i], p.Sample[j] = p.Sample[j], p.Sample[i] })
	base := 1 + r.Uint64N(100)
	for i, f := range p.Function {
		f.ID = base + uint64(i)*3
	}
	for i, l := range p.Location {
		l.ID = base + uint64(len(p.Location)-i)
	}
	for i, m := range p.Mapping {
		m.ID = uint64(i + 1)
	}
	return p
}

// encode is p as Check reads it: gzipped protobuf.
func encode(t testing.TB, p *profile.Profile) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
