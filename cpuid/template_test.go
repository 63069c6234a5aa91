package cpuid

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltinsValidateAndRoundTrip(t *testing.T) {
	for _, name := range append(BuiltinNames(), HostName) {
		tp, err := Builtin(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := tp.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := tp.MarshalIndent()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(b)
		if err != nil {
			t.Fatalf("%s does not parse back: %v\n%s", name, err, b)
		}
		if len(back.CPUID) != len(tp.CPUID) || back.Name != name {
			t.Fatalf("%s changed in a round trip", name)
		}
	}
}

// Every prerequisite a feature names exists, so hiding can follow it.
func TestFeatureTableIsConsistent(t *testing.T) {
	seen := map[string]bool{}
	bits := map[[4]uint32]string{}
	for _, f := range features {
		if seen[f.Name] {
			t.Errorf("feature %s listed twice", f.Name)
		}
		seen[f.Name] = true
		k := [4]uint32{f.Leaf, f.Subleaf, uint32(f.Reg), uint32(f.Bit)}
		if other, dup := bits[k]; dup {
			t.Errorf("%s and %s share a bit", f.Name, other)
		}
		bits[k] = f.Name
		for _, n := range f.Needs {
			if Lookup(n) == nil {
				t.Errorf("%s needs unknown feature %s", f.Name, n)
			}
		}
	}
	if f := Lookup("PNI"); f == nil || f.Name != "sse3" {
		t.Errorf("alias lookup: %v", f)
	}
}

func TestBadTemplatesNameTheEntry(t *testing.T) {
	x32 := strings.Repeat("x", 32)
	cases := []struct {
		name, json string
		want       []string
	}{
		{"malformed", "{\n  \"name\": \"a\",\n  \"cpuid\": [\n    {\"leaf\": 7,, }\n  ]\n}", []string{"line 4 column", "invalid character"}},
		{"short bitmap", `{"cpuid":[{"leaf":"0x1","subleaf":0,"register":"ecx","bitmap":"` + x32 + `"},{"leaf":"0x7","subleaf":0,"register":"ebx","bitmap":"` + x32[1:] + `"}]}`,
			[]string{"cpuid[1] (leaf 0x7 subleaf 0 ebx)", "has 31 characters, want 32"}},
		{"bad character", `{"cpuid":[{"leaf":"0x7","subleaf":0,"register":"ebx","bitmap":"` + x32[:30] + `2x"}]}`,
			[]string{"cpuid[0]", "character 31 (bit 1)", `'2'`}},
		{"bad register", `{"cpuid":[{"leaf":"0x7","subleaf":0,"register":"esi","bitmap":"` + x32 + `"}]}`,
			[]string{"cpuid[0]", `register "esi": want eax, ebx, ecx or edx`}},
		{"bad leaf", `{"cpuid":[{"leaf":"0x12345678","subleaf":0,"register":"eax","bitmap":"` + x32 + `"}]}`,
			[]string{"cpuid[0]", "in no CPUID range"}},
		{"duplicate", `{"cpuid":[{"leaf":1,"register":"ecx","bitmap":"` + x32 + `"},{"leaf":"0x1","register":"ECX","bitmap":"` + x32 + `"}]}`,
			[]string{"cpuid[1]", "the same register as cpuid[0]"}},
		{"msr bitmap", `{"msrs":[{"index":"0x10a","bitmap":"` + x32 + `"}]}`,
			[]string{"msrs[0] (index 0x10a)", "has 32 characters, want 64"}},
		{"unknown field", `{"cpuid_modifiers":[]}`, []string{`unknown field "cpuid_modifiers"`}},
		{"leaf not a number", `{"cpuid":[{"leaf":"seven","register":"eax","bitmap":"` + x32 + `"}]}`, []string{`"seven" is not a 32-bit number`}},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.json))
		if !errors.Is(err, ErrInvalidTemplate) {
			t.Errorf("%s: error %v, want ErrInvalidTemplate", c.name, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.name, err, w)
			}
		}
	}
}

func TestLoadNamesAndFiles(t *testing.T) {
	if _, err := Load("x86-64-v5"); !errors.Is(err, ErrUnknownTemplate) || !strings.Contains(err.Error(), "x86-64-v2, c3, x86-64-v3, t2, x86-64-v4") {
		t.Fatalf("unknown name: %v", err)
	}
	if _, err := Load("nope.json"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file: %v", err)
	}
	p := filepath.Join(t.TempDir(), "no-avx2.json")
	os.WriteFile(p, []byte(`{"cpuid":[{"leaf":"0x7","subleaf":0,"register":"ebx","bitmap":"xxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx"}]}`), 0o644)
	tp, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if tp.Name != "no-avx2" {
		t.Fatalf("name %q, want the file's", tp.Name)
	}
	host := loadHost(t, "intel-icelake.json")
	out, err := tp.Apply(host)
	if err != nil {
		t.Fatal(err)
	}
	if out.Has(Lookup("avx2")) || !out.Has(Lookup("avx")) {
		t.Fatal("avx2 not hidden, or avx hidden with it")
	}
	// AVX-512 extends AVX2 here: hiding AVX2 hides it, and its state.
	if out.Has(Lookup("avx512f")) || out.Has(Lookup("avx512vl")) {
		t.Fatal("avx512 left on without avx2")
	}
	user, _ := Normalize(out, 0, 1).XCR0()
	if user != xcompLegacy|xcompAVX|xcompPKRU {
		t.Fatalf("xcr0 %#x", user)
	}
}

// A VM config may name a template by string or give one inline.
func TestTemplateJSONInConfig(t *testing.T) {
	var tp Template
	if err := tp.UnmarshalJSON([]byte(`"c3"`)); err != nil || tp.Name != NameC3 || len(tp.CPUID) == 0 {
		t.Fatalf("by name: %v %+v", err, tp)
	}
	if err := tp.UnmarshalJSON([]byte(`"v9"`)); !errors.Is(err, ErrUnknownTemplate) {
		t.Fatalf("bad name: %v", err)
	}
	if err := tp.UnmarshalJSON([]byte(`{"name":"z","cpuid":[{"leaf":1,"register":"ecx","bitmap":"0"}]}`)); !errors.Is(err, ErrInvalidTemplate) {
		t.Fatalf("bad inline: %v", err)
	}
}

func TestMSRModifiers(t *testing.T) {
	m := MSRModifier{Index: 0x10a, Bitmap: strings.Repeat("x", 60) + "10x0"}
	if got := m.Apply(0xffff_0000_0000_0003); got != 0xffff_0000_0000_000a {
		t.Fatalf("apply: %#x", got)
	}
	tp := &Template{Name: "arch", MSRs: []MSRModifier{m}}
	err := tp.CheckMSRs([]uint32{0x10, 0x1a0})
	if err == nil || !strings.Contains(err.Error(), "IA32_ARCH_CAPABILITIES (0x10a)") {
		t.Fatalf("missing MSR: %v", err)
	}
	if err := tp.CheckMSRs([]uint32{0x10a}); err != nil {
		t.Fatal(err)
	}
}
