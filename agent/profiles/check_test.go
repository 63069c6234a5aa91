package profiles

import (
	"bytes"
	"compress/gzip"
	"errors"
	"runtime/pprof"
	"strings"
	"testing"

	"github.com/google/pprof/profile"

	"github.com/kindlingvm/kindling/internal/buildid"
)

// A profile runtime/pprof wrote in a task built with a GNU build ID
// passes Check against the build ID internal/buildid reads from the
// binary: the two agree on what a build is.
func TestCheckRuntimeProfile(t *testing.T) {
	bin, data := task(t, taskSHA256)
	id, err := buildid.File(bin)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Check(data, Expect{BuildID: id})
	if err != nil {
		t.Fatal(err)
	}
	samples, cpu := Totals(p)
	t.Logf("build %s: %d samples, %d ns CPU, %d mappings", id, samples, cpu, len(p.Mapping))
	if samples == 0 || cpu == 0 || p.Mapping[0].BuildID != id {
		t.Fatalf("samples %d cpu %d mapping[0] %+v", samples, cpu, p.Mapping[0])
	}
}

func TestCheckRefuses(t *testing.T) {
	valid := encode(t, synthetic(1, testBuild, 50))
	gz := func(b []byte) []byte {
		var out bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&out, gzip.BestCompression)
		zw.Write(b)
		zw.Close()
		return out.Bytes()
	}
	mutate := func(f func(p *profile.Profile)) []byte {
		p := synthetic(1, testBuild, 50)
		f(p)
		return encode(t, p)
	}
	var heap bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&heap, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		data   []byte
		expect string
		want   error
		msg    string
	}{
		{"empty", nil, testBuild, ErrCorrupt, "empty"},
		{"text", []byte("this is not a profile, it is a sentence about one\n"), testBuild, ErrCorrupt, "not a pprof protobuf"},
		{"truncated", valid[:len(valid)/2], testBuild, ErrCorrupt, "gzip"},
		{"bad gzip header", []byte{0x1f, 0x8b, 0, 0}, testBuild, ErrCorrupt, "gzip"},
		{"too large", make([]byte, maxCompressed+1), testBuild, ErrCorrupt, "more than the 16 MiB"},
		{"gzip bomb", gz(make([]byte, maxUncompressed+1)), testBuild, ErrCorrupt, "decompresses to more than 32 MiB"},
		{"duplicate IDs", mutate(func(p *profile.Profile) { p.Function[1].ID = p.Function[0].ID }), testBuild, ErrCorrupt, "multiple functions with same id"},
		{"heap profile", heap.Bytes(), testBuild, ErrForeign, "sample types [alloc_objects/count"},
		{"wall period", mutate(func(p *profile.Profile) { p.PeriodType = &profile.ValueType{Type: "wall", Unit: "nanoseconds"} }), testBuild, ErrForeign, "period type [wall/nanoseconds], want [cpu/nanoseconds]"},
		{"no mapping", mutate(func(p *profile.Profile) {
			p.Mapping = nil
			for _, l := range p.Location {
				l.Mapping = nil
			}
		}), testBuild, ErrForeign, "no mappings"},
		{"no samples", mutate(func(p *profile.Profile) { p.Sample = nil }), testBuild, ErrForeign, "no samples"},
		{"negative", mutate(func(p *profile.Profile) { p.Sample[3].Value[1] = -5 }), testBuild, ErrForeign, "negative sample value -5"},
		{"huge", mutate(func(p *profile.Profile) { p.Sample[3].Value[1] = 1 << 62 }), testBuild, ErrForeign, "cpu add up to more than"},
		{"other build", valid, "0123abcd", ErrOtherBuild, "profile of build " + testBuild + ", this version's task is build 0123abcd"},
		{"no build ID in profile", mutate(func(p *profile.Profile) { p.Mapping[0].BuildID = "" }), testBuild, ErrOtherBuild, "profile of build (none), this version's task is build " + testBuild},
		{"nothing to check against", valid, "", ErrOtherBuild, "no build ID to check"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Check(c.data, Expect{BuildID: c.expect})
			if p != nil || !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, %v; want %v with %q", p != nil, err, c.want, c.msg)
			}
			for _, other := range []error{ErrCorrupt, ErrForeign, ErrOtherBuild} {
				if other != c.want && errors.Is(err, other) {
					t.Errorf("%v is also %v", err, other)
				}
			}
		})
	}
	// An uncompressed protobuf is a profile too.
	var raw bytes.Buffer
	synthetic(1, testBuild, 50).WriteUncompressed(&raw)
	if _, err := Check(raw.Bytes(), Expect{BuildID: testBuild}); err != nil {
		t.Errorf("uncompressed: %v", err)
	}
	if _, err := Check(valid, Expect{BuildID: testBuild}); err != nil {
		t.Errorf("valid: %v", err)
	}
}

// FuzzCheck: whatever the bytes, Check returns a profile or an error of
// its own kinds, and never panics.
func FuzzCheck(f *testing.F) {
	f.Add(encode(f, synthetic(1, testBuild, 20)))
	var raw bytes.Buffer
	synthetic(2, testBuild, 20).WriteUncompressed(&raw)
	f.Add(raw.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Check(data, Expect{BuildID: testBuild})
		switch {
		case err == nil:
			if p == nil || p.CheckValid() != nil {
				t.Fatal("accepted an invalid profile")
			}
			if _, err := Merge(p, p); err != nil {
				t.Fatalf("accepted a profile Merge refuses: %v", err)
			}
		case !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrForeign) && !errors.Is(err, ErrOtherBuild):
			t.Fatalf("error of no kind: %v", err)
		}
	})
}
