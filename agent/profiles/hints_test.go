package profiles

import (
	"strings"
	"testing"

	"github.com/google/pprof/profile"

	"github.com/kindlingvm/kindling/cpuid/isa"
)

// hintsOf profiles testdata task name and reads hints from it against
// the task binary's own dispatch analysis.
func hintsOf(t *testing.T, name string) ([]Hint, *profile.Profile, *isa.Dispatch) {
	t.Helper()
	bin, data := task(t, name)
	r, err := isa.File(bin)
	if err != nil {
		t.Fatal(err)
	}
	p, err := profile.ParseData(data)
	if err != nil {
		t.Fatal(err)
	}
	d := r.Dispatch()
	hs := Hints(p, d)
	for _, h := range hs {
		if h.Fraction > 0 {
			t.Logf("%s: %-12s %5.1f%% wanted=%-5v %s", name, h.Extension, 100*h.Fraction, h.Wanted, strings.Join(h.Functions, ", "))
		}
	}
	if len(hs) != len(d.Sets) {
		t.Errorf("%d hints for %d optional extensions", len(hs), len(d.Sets))
	}
	return hs, p, d
}

func hint(hs []Hint, ext string) Hint {
	for _, h := range hs {
		if h.Extension == ext {
			return h
		}
	}
	return Hint{Extension: ext}
}

func hasFunction(h Hint, part string) bool {
	for _, f := range h.Functions {
		if strings.Contains(f, part) {
			return true
		}
	}
	return false
}

// Hashing with crypto/sha256 spends its time under sha256's block
// dispatcher, which chooses SHA-NI, else AVX2 (with BMI2), else generic
// code: SHA and AVX2 come out wanted whichever path this host's CPU
// takes.
func TestHintsSHA256(t *testing.T) {
	hs, _, _ := hintsOf(t, taskSHA256)
	for _, ext := range []string{"sha", "avx2", "bmi2"} {
		h := hint(hs, ext)
		if !h.Wanted || h.Fraction < 0.5 || !hasFunction(h, "sha256.block") {
			t.Errorf("%s: %+v, want wanted, most of the CPU, in sha256's block functions", ext, h)
		}
	}
	if h := hint(hs, "avx512f"); h.Wanted {
		t.Errorf("avx512f wanted: %+v", h)
	}
}

// bytes.IndexByte runs internal/bytealg's indexbytebody, which tests for
// AVX2 itself.
func TestHintsIndexByte(t *testing.T) {
	hs, _, _ := hintsOf(t, taskIndexByte)
	h := hint(hs, "avx2")
	if !h.Wanted || h.Fraction < 0.5 || !hasFunction(h, "indexbytebody") {
		t.Errorf("avx2: %+v, want wanted, most of the CPU, in indexbytebody", h)
	}
	if h := hint(hs, "sha"); h.Wanted || h.Fraction != 0 {
		t.Errorf("sha: %+v, want none", h)
	}
}

// An integer loop wants nothing.
func TestHintsSpin(t *testing.T) {
	hs, _, _ := hintsOf(t, taskSpin)
	for _, h := range hs {
		if h.Wanted {
			t.Errorf("%s wanted: %+v", h.Extension, h)
		}
	}
}

// A profile without symbols (addresses only, as a sampler that does not
// symbolize would send) gives the same hints: frames in the task binary
// are placed by address.
func TestHintsUnsymbolized(t *testing.T) {
	want, p, d := hintsOf(t, taskSHA256)
	for _, l := range p.Location {
		l.Line = nil
	}
	p.Function = nil
	got := Hints(p, d)
	for _, ext := range []string{"sha", "avx2"} {
		g, w := hint(got, ext), hint(want, ext)
		if g.Wanted != w.Wanted || g.Fraction < w.Fraction-0.05 {
			t.Errorf("%s unsymbolized %+v, symbolized %+v", ext, g, w)
		}
	}
}

func TestHintsEmpty(t *testing.T) {
	if hs := Hints(synthetic(1, testBuild, 10), &isa.Dispatch{}); hs != nil {
		t.Errorf("no dispatch: %+v", hs)
	}
	if hs := Hints(nil, nil); hs != nil {
		t.Errorf("nil: %+v", hs)
	}
}

// With SHA-NI and AVX2 hidden (GODEBUG turns off what internal/cpu
// reports, as a CPU template that hides them would), the generic code
// runs instead, under the same dispatcher: the profile still says they
// are wanted, which is why dispatchers count.
func TestHintsSHA256Hidden(t *testing.T) {
	bin, data := task(t, taskSHA256, "GODEBUG=cpu.sha=off,cpu.avx2=off")
	r, err := isa.File(bin)
	if err != nil {
		t.Fatal(err)
	}
	p, err := profile.ParseData(data)
	if err != nil {
		t.Fatal(err)
	}
	hs := Hints(p, r.Dispatch())
	for _, ext := range []string{"sha", "avx2"} {
		h := hint(hs, ext)
		t.Logf("hidden: %s %.1f%% %v", ext, 100*h.Fraction, h.Functions)
		if !h.Wanted || h.Fraction < 0.5 || hasFunction(h, "blockSHANI") || hasFunction(h, "blockAVX2") {
			t.Errorf("%s: %+v, want wanted through the dispatcher alone", ext, h)
		}
	}
	// The fallback ran: its own frames carry the time.
	var generic bool
	for _, l := range p.Location {
		for _, ln := range l.Line {
			generic = generic || strings.HasSuffix(ln.Function.Name, "sha256.blockGeneric")
		}
	}
	if !generic {
		t.Error("no sha256.blockGeneric in the profile: GODEBUG did not hide the fast paths")
	}
}
