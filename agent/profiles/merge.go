package profiles

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/google/pprof/profile"
)

// Merge merges checked profiles (of one build) into a new one, summing
// the samples of equal stacks. The result depends only on the set of
// inputs: any order of the same profiles gives byte-identical p.Write
// output. profile.Merge alone does not: its output lists samples,
// locations, functions and mappings in the order it meets them, and keeps
// some header fields from the first input. So Merge sorts its inputs by
// content first, and then puts the result in a canonical form: mappings
// (after the main binary's, which stays first), functions, locations and
// samples sorted by content and numbered in that order; TimeNanos the
// earliest non-zero start, DurationNanos the sum, Period the largest,
// comments sorted, and the other header strings the least non-empty one.
// The header rules commute and associate, so merging a merged profile
// with more gives what merging everything at once would, as long as the
// inputs agree on where the binary was mapped (they do for a non-PIE
// binary, as Go builds them by default).
func Merge(ps ...*profile.Profile) (*profile.Profile, error) {
	if len(ps) == 0 {
		return nil, errors.New("merge: no profiles")
	}
	for i, p := range ps {
		if p == nil {
			return nil, fmt.Errorf("merge: profile %d is nil", i)
		}
		if err := checkKind(p); err != nil {
			return nil, fmt.Errorf("merge: profile %d: %w", i, err)
		}
	}
	in := sortByContent(ps)
	m, err := profile.Merge(in)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	// profile.Merge shares the first input's value types, whose encoder
	// state a Write of either would change under its own lock only.
	for i, t := range m.SampleType {
		m.SampleType[i] = &profile.ValueType{Type: t.Type, Unit: t.Unit}
	}
	m.PeriodType = &profile.ValueType{Type: m.PeriodType.Type, Unit: m.PeriodType.Unit}
	mergeHeaders(m, in)
	canonicalize(m)
	return m, nil
}

// sortByContent orders profiles by a key of their content: cheap summary
// numbers first, their serialized bytes (computed only for ties) last, so
// that only profiles with identical bytes compare equal.
func sortByContent(ps []*profile.Profile) []*profile.Profile {
	type keyed struct {
		p       *profile.Profile
		summary []int64
		raw     []byte
	}
	ks := make([]*keyed, len(ps))
	for i, p := range ps {
		s, c := Totals(p)
		ks[i] = &keyed{p: p, summary: []int64{s, c, int64(len(p.Sample)), int64(len(p.Location)),
			int64(len(p.Function)), int64(len(p.Mapping)), p.TimeNanos, p.DurationNanos, p.Period}}
	}
	bytesOf := func(k *keyed) []byte {
		if k.raw == nil {
			var b bytes.Buffer
			// Writing to a bytes.Buffer cannot fail.
			_ = k.p.WriteUncompressed(&b)
			k.raw = b.Bytes()
		}
		return k.raw
	}
	slices.SortStableFunc(ks, func(a, b *keyed) int {
		if c := slices.Compare(a.summary, b.summary); c != 0 {
			return c
		}
		return bytes.Compare(bytesOf(a), bytesOf(b))
	})
	out := make([]*profile.Profile, len(ks))
	for i, k := range ks {
		out[i] = k.p
	}
	return out
}

// mergeHeaders sets m's header fields from its inputs by rules that do not
// depend on their order.
func mergeHeaders(m *profile.Profile, in []*profile.Profile) {
	m.TimeNanos, m.DurationNanos, m.Period = 0, 0, 0
	m.Comments = nil
	m.DefaultSampleType, m.DocURL, m.DropFrames, m.KeepFrames = "", "", "", ""
	least := func(cur *string, s string) {
		if s != "" && (*cur == "" || s < *cur) {
			*cur = s
		}
	}
	for _, p := range in {
		if p.TimeNanos != 0 && (m.TimeNanos == 0 || p.TimeNanos < m.TimeNanos) {
			m.TimeNanos = p.TimeNanos
		}
		m.DurationNanos += p.DurationNanos
		m.Period = max(m.Period, p.Period)
		m.Comments = append(m.Comments, p.Comments...)
		least(&m.DefaultSampleType, p.DefaultSampleType)
		least(&m.DocURL, p.DocURL)
		least(&m.DropFrames, p.DropFrames)
		least(&m.KeepFrames, p.KeepFrames)
	}
	slices.Sort(m.Comments)
	m.Comments = slices.Compact(m.Comments)
}

// canonicalize sorts a merged profile's tables by content and renumbers
// them. profile.Merge has already made each entry unique by the same
// content, so the orders are total.
func canonicalize(p *profile.Profile) {
	// The first mapping is the main binary's, by pprof's convention.
	if len(p.Mapping) > 1 {
		slices.SortFunc(p.Mapping[1:], func(a, b *profile.Mapping) int {
			return cmp.Or(strings.Compare(a.BuildID, b.BuildID), strings.Compare(a.File, b.File),
				cmp.Compare(a.Start, b.Start), cmp.Compare(a.Limit, b.Limit), cmp.Compare(a.Offset, b.Offset),
				cmpBools(a.HasFunctions, b.HasFunctions), cmpBools(a.HasFilenames, b.HasFilenames),
				cmpBools(a.HasLineNumbers, b.HasLineNumbers), cmpBools(a.HasInlineFrames, b.HasInlineFrames))
		})
	}
	for i, m := range p.Mapping {
		m.ID = uint64(i + 1)
	}
	slices.SortFunc(p.Function, func(a, b *profile.Function) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.SystemName, b.SystemName),
			strings.Compare(a.Filename, b.Filename), cmp.Compare(a.StartLine, b.StartLine))
	})
	for i, f := range p.Function {
		f.ID = uint64(i + 1)
	}
	slices.SortFunc(p.Location, func(a, b *profile.Location) int {
		if c := cmp.Or(cmp.Compare(mappingID(a.Mapping), mappingID(b.Mapping)), cmp.Compare(a.Address, b.Address),
			cmpBools(a.IsFolded, b.IsFolded)); c != 0 {
			return c
		}
		return slices.CompareFunc(a.Line, b.Line, func(x, y profile.Line) int {
			return cmp.Or(cmp.Compare(functionID(x.Function), functionID(y.Function)), cmp.Compare(x.Line, y.Line), cmp.Compare(x.Column, y.Column))
		})
	})
	for i, l := range p.Location {
		l.ID = uint64(i + 1)
	}
	keys := make(map[*profile.Sample]string, len(p.Sample))
	for _, s := range p.Sample {
		keys[s] = sampleKey(s)
	}
	sort.Slice(p.Sample, func(i, j int) bool { return keys[p.Sample[i]] < keys[p.Sample[j]] })
}

// sampleKey encodes what makes a sample distinct: its stack (location
// IDs, already canonical) and its labels.
func sampleKey(s *profile.Sample) string {
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(s.Location)))
	for _, l := range s.Location {
		b = binary.BigEndian.AppendUint64(b, l.ID)
	}
	str := func(v string) {
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	for _, k := range sortedKeys(s.Label) {
		str(k)
		b = binary.AppendUvarint(b, uint64(len(s.Label[k])))
		for _, v := range s.Label[k] {
			str(v)
		}
	}
	b = append(b, 0xff) // string and numeric labels apart
	for _, k := range sortedKeys(s.NumLabel) {
		str(k)
		b = binary.AppendUvarint(b, uint64(len(s.NumLabel[k])))
		for _, v := range s.NumLabel[k] {
			b = binary.BigEndian.AppendUint64(b, uint64(v))
		}
		for _, u := range s.NumUnit[k] {
			str(u)
		}
	}
	return string(b)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func mappingID(m *profile.Mapping) uint64 {
	if m == nil {
		return 0
	}
	return m.ID
}

func functionID(f *profile.Function) uint64 {
	if f == nil {
		return 0
	}
	return f.ID
}

func cmpBools(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
