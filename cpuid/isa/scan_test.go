package isa

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/internal/testtasks"
)

// built caches the test tasks across tests of one run.
var built sync.Map

func task(t *testing.T, name string) string {
	t.Helper()
	if p, ok := built.Load(name); ok {
		return p.(string)
	}
	if strings.HasPrefix(name, "c-") {
		if _, err := exec.LookPath("gcc"); err != nil {
			t.Skipf("no gcc to build %s: %v", name, err)
		}
	}
	dir, err := os.MkdirTemp("", "isa-task")
	if err != nil {
		t.Fatal(err)
	}
	p, err := testtasks.Build(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	built.Store(name, p)
	return p
}

func TestMain(m *testing.M) {
	code := m.Run()
	built.Range(func(_, p any) bool {
		os.RemoveAll(filepath.Dir(p.(string)))
		return true
	})
	os.Exit(code)
}

func analyse(t *testing.T, name string) *Report {
	t.Helper()
	r, err := File(task(t, name))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range r.Uses {
		t.Logf("%s: %-16s required=%-5v unguarded %-5d guarded %-5d %s", name, u.Extension, u.Required, u.Unguarded, u.Guarded, u.Why)
	}
	t.Logf("%s: level %d (%s), %d instructions, %d bytes undecoded, notes %q", name, r.Level, r.LevelFrom, r.Instructions, r.Undecoded, r.Notes)
	return r
}

func use(r *Report, ext string) (Use, bool) {
	for _, u := range r.Uses {
		if u.Extension == ext {
			return u, true
		}
	}
	return Use{}, false
}

func beyond(level int) []string {
	var out []string
	for _, n := range cpuid.LevelFeatures(level) {
		if cpuid.Lookup(n).Level >= 2 {
			out = append(out, n)
		}
	}
	return out
}

// A Go binary built for v1 requires nothing beyond the baseline: Go
// promises it runs on any x86-64, so every newer instruction in it (the
// runtime's AVX2 memmove, its AVX-512 paths, crypto's AES-NI) sits behind a
// run-time check, and the analysis must find each one guarded.
func TestGoV1RequiresOnlyTheBaseline(t *testing.T) {
	r := analyse(t, testtasks.GoHTTP)
	if r.Level != 1 || r.LevelFrom != "GOAMD64=v1" {
		t.Fatalf("level %d from %q", r.Level, r.LevelFrom)
	}
	if req := r.Required(); len(req) != 0 {
		t.Fatalf("required %v; a GOAMD64=v1 binary requires nothing", req)
	}
	for _, ext := range []string{"avx", "avx2", "aes", "pclmulqdq", "sse4_1", "popcnt"} {
		u, ok := use(r, ext)
		if !ok || u.Required || u.Guarded == 0 {
			t.Errorf("%s: %+v, want optional with guarded uses", ext, u)
		}
	}
	if u, ok := use(r, "avx512f"); ok && (u.Required || u.Guarded == 0) {
		t.Errorf("avx512f: %+v, want optional", u)
	}
}

// GOAMD64=v3 makes the v3 extensions required, whether or not an
// instruction of each appears.
func TestGoV3RequiresLevel3(t *testing.T) {
	r := analyse(t, testtasks.GoHTTPV3)
	if r.Level != 3 || r.LevelFrom != "GOAMD64=v3" {
		t.Fatalf("level %d from %q", r.Level, r.LevelFrom)
	}
	req := r.Required()
	for _, ext := range beyond(3) {
		if !slices.Contains(req, ext) {
			t.Errorf("%s not required; required %v", ext, req)
		}
	}
	for _, ext := range req {
		if f := cpuid.Lookup(ext); f == nil || f.Level == 0 || f.Level > 3 {
			t.Errorf("%s required beyond the declared level", ext)
		}
	}
	// The compiler used them: BMI2 shifts and the like appear unguarded.
	if u, _ := use(r, "bmi2"); u.Unguarded == 0 {
		t.Errorf("no unguarded BMI2 in a v3 Go binary: %+v", u)
	}
}

// gcc -mavx2 vectorises main with AVX2 and checks nothing first.
func TestCAVX2IsRequired(t *testing.T) {
	r := analyse(t, testtasks.CAVX2)
	for _, ext := range []string{"avx", "avx2"} {
		u, ok := use(r, ext)
		if !ok || !u.Required || u.Unguarded == 0 || !slices.Contains(u.Functions, "main") {
			t.Errorf("%s: %+v, want required, used in main", ext, u)
		}
	}
	if _, ok := use(r, "avx512f"); ok {
		t.Error("avx512f found in an -mavx2 build")
	}
}

func TestCAVX512IsRequired(t *testing.T) {
	r := analyse(t, testtasks.CAVX512)
	u, ok := use(r, "avx512f")
	if !ok || !u.Required || u.Unguarded == 0 {
		t.Fatalf("avx512f: %+v, want required", u)
	}
}

// AVX2 behind __builtin_cpu_supports is optional.
func TestCDispatchIsOptional(t *testing.T) {
	r := analyse(t, testtasks.CDispatch)
	u, ok := use(r, "avx2")
	if !ok || u.Required || u.Guarded == 0 || u.Unguarded != 0 {
		t.Fatalf("avx2: %+v, want optional: only behind __builtin_cpu_supports", u)
	}
	if len(r.Required()) != 0 {
		t.Fatalf("required %v", r.Required())
	}
}

// gcc -march=x86-64-v3 -mneeded records the level in a GNU property note.
func TestCLevelNote(t *testing.T) {
	r := analyse(t, testtasks.CLevelV3)
	if r.Level != 3 || !strings.Contains(r.LevelFrom, "GNU_PROPERTY_X86_ISA_1_NEEDED") {
		t.Fatalf("level %d from %q", r.Level, r.LevelFrom)
	}
	for _, ext := range beyond(3) {
		if !slices.Contains(r.Required(), ext) {
			t.Errorf("%s not required", ext)
		}
	}
}

// A stripped Go binary keeps its function table but loses the feature
// variables: extensions past GOAMD64 are still reported optional, and a
// note says why.
func TestStrippedGo(t *testing.T) {
	r := analyse(t, testtasks.GoHelloBare)
	if len(r.Required()) != 0 {
		t.Fatalf("required %v", r.Required())
	}
	if len(r.Notes) == 0 || !strings.Contains(r.Notes[0], "no symbol table") {
		t.Fatalf("notes %q", r.Notes)
	}
}

func TestBadBinaries(t *testing.T) {
	dir := t.TempDir()
	txt := filepath.Join(dir, "script.sh")
	os.WriteFile(txt, []byte("#!/bin/sh\necho hi\n"), 0o755)
	if _, err := File(txt); !errors.Is(err, ErrNotELF) {
		t.Errorf("script: %v", err)
	}
	if _, err := File(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing: %v", err)
	}
	arm := filepath.Join(dir, "arm")
	cmd := exec.Command("go", "build", "-o", arm, "github.com/kindlingvm/kindling/internal/testtasks/gohello")
	cmd.Env = append(os.Environ(), "GOARCH=arm64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := File(arm); !errors.Is(err, ErrNotX86_64) || !strings.Contains(err.Error(), "GOARCH=amd64") {
		t.Errorf("arm64: %v", err)
	}
}
