package isa

import (
	"debug/elf"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/testtasks"
)

func names(fs []Func) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Name)
	}
	return out
}

func set(t *testing.T, r *Report, ext string) DispatchSet {
	t.Helper()
	s, ok := r.Dispatch().Set(ext)
	if !ok {
		t.Fatalf("no dispatch set for %s", ext)
	}
	t.Logf("%s: users %v; dispatchers %v", ext, names(s.Users), names(s.Dispatchers))
	return s
}

// In a Go binary, each optional extension's dispatched code is its
// guarded fast paths and the functions that test internal/cpu's bits and
// call them: crypto/sha256's block chooses SHA-NI or AVX2 code (or the
// generic one); internal/bytealg's indexbytebody tests AVX2 itself.
func TestDispatchGo(t *testing.T) {
	r := analyse(t, testtasks.GoHTTP)
	d := r.Dispatch()
	var exts []string
	for _, s := range d.Sets {
		exts = append(exts, s.Extension)
	}
	if !slices.Equal(exts, r.Optional()) {
		t.Fatalf("sets for %v, optional %v", exts, r.Optional())
	}
	const block = "crypto/internal/fips140/sha256.block"
	sha := set(t, r, "sha")
	if !slices.Contains(names(sha.Users), block+"SHANI") || !slices.Contains(names(sha.Dispatchers), block) {
		t.Errorf("sha: want %sSHANI used, dispatched by %s", block, block)
	}
	avx2 := set(t, r, "avx2")
	for _, want := range []string{"indexbytebody", block + "AVX2"} {
		if !slices.Contains(names(avx2.Users), want) {
			t.Errorf("avx2: %s not a user", want)
		}
	}
	for _, want := range []string{"indexbytebody", block} {
		if !slices.Contains(names(avx2.Dispatchers), want) {
			t.Errorf("avx2: %s not a dispatcher", want)
		}
	}
	fns := names(avx2.Functions())
	if !slices.IsSorted(fns) || len(slices.Compact(slices.Clone(fns))) != len(fns) {
		t.Errorf("Functions not sorted and unique: %v", fns)
	}
	for _, s := range d.Sets {
		for _, f := range append(s.Users, s.Dispatchers...) {
			switch {
			case f.End <= f.Start:
				t.Errorf("%s: %s has range %#x-%#x", s.Extension, f.Name, f.Start, f.End)
			case f.Name == "runtime.rt0_go" || f.Name == "runtime.asyncPreempt":
				// The first fills in the feature bits; the second saves
				// vector registers unguarded: neither is a fast path.
				t.Errorf("%s: %s in its dispatched code", s.Extension, f.Name)
			}
		}
	}
	if _, ok := d.Set("no-such-extension"); ok {
		t.Error("a set for an unknown extension")
	}
	// The report's JSON stays the summary it was.
	b, _ := json.Marshal(r)
	if strings.Contains(string(b), `"dispatchers"`) || strings.Contains(string(b), `"sets"`) {
		t.Error("dispatch sets in the report's JSON")
	}
}

// Required extensions have no dispatched code to weigh.
func TestDispatchRequired(t *testing.T) {
	r := analyse(t, testtasks.GoHTTPV3)
	if s, ok := r.Dispatch().Set("avx2"); ok {
		t.Errorf("set for required avx2: %+v", s)
	}
}

func TestDispatchC(t *testing.T) {
	r := analyse(t, testtasks.CDispatch)
	s := set(t, r, "avx2")
	if !slices.Equal(names(s.Users), []string{"sum_avx2"}) || !slices.Equal(names(s.Dispatchers), []string{"main"}) {
		t.Errorf("avx2: users %v dispatchers %v, want sum_avx2 behind main's __builtin_cpu_supports", names(s.Users), names(s.Dispatchers))
	}
}

// A stripped Go binary has no feature variables to find guards by: the
// runtime's startup, which executes CPUID, is no dispatcher.
func TestDispatchStripped(t *testing.T) {
	r := analyse(t, testtasks.GoHelloBare)
	for _, s := range r.Dispatch().Sets {
		if slices.Contains(names(s.Dispatchers), "runtime.rt0_go") {
			t.Errorf("%s: rt0_go a dispatcher", s.Extension)
		}
	}
}

// Addr places a file offset (what a profile's mapping gives for an
// unsymbolized frame) at the virtual address the functions are at.
func TestDispatchAddr(t *testing.T) {
	p := task(t, testtasks.GoHTTP)
	r, err := File(p)
	if err != nil {
		t.Fatal(err)
	}
	f := set(t, r, "avx2").Users[0]
	ef, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	var off uint64
	for _, pr := range ef.Progs {
		if pr.Type == elf.PT_LOAD && f.Start >= pr.Vaddr && f.Start < pr.Vaddr+pr.Filesz {
			off = f.Start - pr.Vaddr + pr.Off
		}
	}
	if va, ok := r.Dispatch().Addr(off + 1); !ok || va != f.Start+1 {
		t.Errorf("Addr(%#x) = %#x %v, want %#x", off+1, va, ok, f.Start+1)
	}
	if _, ok := r.Dispatch().Addr(1 << 40); ok {
		t.Error("placed an offset past the file")
	}
}
