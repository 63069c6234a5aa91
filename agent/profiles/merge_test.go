package profiles

import (
	"bytes"
	"slices"
	"testing"

	"github.com/google/pprof/profile"
)

// permutations calls f with every order of ps.
func permutations(ps []*profile.Profile, f func([]*profile.Profile)) {
	var rec func(k int)
	rec = func(k int) {
		if k == len(ps) {
			f(slices.Clone(ps))
			return
		}
		for i := k; i < len(ps); i++ {
			ps[k], ps[i] = ps[i], ps[k]
			rec(k + 1)
			ps[k], ps[i] = ps[i], ps[k]
		}
	}
	rec(0)
}

func mergeBytes(t *testing.T, ps ...*profile.Profile) []byte {
	t.Helper()
	m, err := Merge(ps...)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CheckValid(); err != nil {
		t.Fatal(err)
	}
	return encode(t, m)
}

// Any order of the same profiles merges to the same bytes, and so does
// merging again.
func TestMergeIsDeterministic(t *testing.T) {
	ps := []*profile.Profile{synthetic(1, testBuild, 200), synthetic(2, testBuild, 300), synthetic(3, testBuild, 10)}
	// Two inputs that tie on every summary number and differ only in
	// content: the sort falls through to their bytes.
	a, b := synthetic(5, testBuild, 40), synthetic(5, testBuild, 40)
	b.Sample[0].Location = b.Sample[0].Location[:1]
	ps = append(ps, a, b)
	want := mergeBytes(t, ps...)
	n := 0
	permutations(ps, func(order []*profile.Profile) {
		n++
		if got := mergeBytes(t, order...); !bytes.Equal(got, want) {
			t.Fatalf("order %d: %d bytes, differ from the first order's %d", n, len(got), len(want))
		}
	})
	if again := mergeBytes(t, ps...); !bytes.Equal(again, want) {
		t.Fatal("merging twice gave different bytes")
	}
	// Without the sorting, profile.Merge alone does depend on the order:
	// the test would catch a Merge that left it out.
	m1, _ := profile.Merge(ps)
	m2, _ := profile.Merge([]*profile.Profile{ps[1], ps[0], ps[2], ps[3], ps[4]})
	if bytes.Equal(encode(t, m1), encode(t, m2)) {
		t.Fatal("profile.Merge is order-independent on these inputs: the test proves nothing")
	}
	t.Logf("%d orders, %d bytes each", n, len(want))
}

// Merging a merged profile with more is merging them all at once, in
// whatever grouping, as the Store does one profile at a time.
func TestMergeAssociates(t *testing.T) {
	a, b, c, d := synthetic(11, testBuild, 100), synthetic(12, testBuild, 100), synthetic(13, testBuild, 100), synthetic(14, testBuild, 5)
	all := mergeBytes(t, a, b, c, d)
	step := func(ps ...*profile.Profile) *profile.Profile {
		m, err := Merge(ps...)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for i, got := range [][]byte{
		mergeBytes(t, step(step(step(a), b), c), d),
		mergeBytes(t, step(d, c), step(b, a)),
		mergeBytes(t, step(step(c, a), d), b),
	} {
		if !bytes.Equal(got, all) {
			t.Errorf("grouping %d differs", i)
		}
	}
}

// The merge keeps every sample's value, and the headers follow their
// documented rules.
func TestMergeSums(t *testing.T) {
	a, b := synthetic(21, testBuild, 100), synthetic(22, testBuild, 70)
	a.Comments, b.Comments = []string{"z", "a"}, []string{"a", "m"}
	b.TimeNanos = 0
	b.Period = a.Period * 2
	m, err := Merge(b, a)
	if err != nil {
		t.Fatal(err)
	}
	sa, ca := Totals(a)
	sb, cb := Totals(b)
	if s, c := Totals(m); s != sa+sb || c != ca+cb {
		t.Errorf("totals %d %d, want %d %d", s, c, sa+sb, ca+cb)
	}
	if m.TimeNanos != a.TimeNanos || m.DurationNanos != a.DurationNanos+b.DurationNanos || m.Period != b.Period {
		t.Errorf("time %d duration %d period %d", m.TimeNanos, m.DurationNanos, m.Period)
	}
	if !slices.Equal(m.Comments, []string{"a", "m", "z"}) {
		t.Errorf("comments %q", m.Comments)
	}
	if m.Mapping[0].BuildID != testBuild || m.Mapping[0].File != "/task" {
		t.Errorf("mapping[0] %+v, want the task's", m.Mapping[0])
	}
	for i, s := range m.Sample {
		for j, l := range s.Location {
			if l.ID == 0 || m.Location[l.ID-1] != l {
				t.Fatalf("sample %d location %d: ID %d not its index", i, j, l.ID)
			}
		}
	}
}

// A real profile, split in two as two uploads of one task would be,
// merges back the same in either order, with every sample kept.
func TestMergeRuntimeProfile(t *testing.T) {
	_, data := task(t, taskIndexByte)
	p, err := profile.ParseData(data)
	if err != nil {
		t.Fatal(err)
	}
	a, b := p.Copy(), p.Copy()
	a.Sample, b.Sample = a.Sample[:len(a.Sample)/2], b.Sample[len(b.Sample)/2:]
	ab, ba := mergeBytes(t, a, b), mergeBytes(t, b, a)
	if !bytes.Equal(ab, ba) {
		t.Fatal("order changed the merge")
	}
	m, err := Merge(a, b)
	if err != nil {
		t.Fatal(err)
	}
	s, c := Totals(m)
	ws, wc := Totals(p)
	if s != ws || c != wc {
		t.Fatalf("totals %d %d, want %d %d", s, c, ws, wc)
	}
	if _, err := Merge(); err == nil {
		t.Error("merged nothing")
	}
	if _, err := Merge(p, nil); err == nil {
		t.Error("merged nil")
	}
}
