package cpuid

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/expected from the current code")

func loadHost(t *testing.T, name string) Table {
	t.Helper()
	d, err := LoadDump(filepath.Join("testdata", "hosts", name))
	if err != nil {
		t.Fatal(err)
	}
	return d.Entries
}

func hostFiles(t *testing.T) []string {
	m, err := filepath.Glob(filepath.Join("testdata", "hosts", "*.json"))
	if err != nil || len(m) < 4 {
		t.Fatalf("recorded hosts: %v %v", m, err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

// expectedTable renders what each template comes to on a host: the table
// the golden files in testdata/expected hold.
func expectedTable(host Table) string {
	var b strings.Builder
	for _, s := range Statuses(host) {
		if !s.Offered {
			fmt.Fprintf(&b, "%s: not offered, lacks %s\n", s.Name, strings.Join(s.Missing, " "))
			continue
		}
		tp, _ := Builtin(s.Name)
		out, _ := tp.Apply(host)
		var isa []string
		for _, f := range Normalize(out, 0, 1).Features() {
			if Lookup(f).Kind == ISA && Lookup(f).Level != 1 {
				isa = append(isa, f)
			}
		}
		fmt.Fprintf(&b, "%s: xcr0 %s, xsave %d bytes, %d extensions: %s\n", s.Name, s.XCR0, s.XSaveSize, s.Extensions, strings.Join(isa, " "))
	}
	return b.String()
}

// Templates applied to recorded hosts of several generations give the
// tables in testdata/expected (regenerate with -update, then read the
// diff).
func TestTemplatesOnRecordedHosts(t *testing.T) {
	for _, h := range hostFiles(t) {
		host := loadHost(t, h)
		got := expectedTable(host)
		path := filepath.Join("testdata", "expected", strings.TrimSuffix(h, ".json")+".txt")
		if *update {
			os.MkdirAll(filepath.Dir(path), 0o755)
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./cpuid -run TestTemplatesOnRecordedHosts -update)", err)
		}
		if got != string(want) {
			t.Errorf("%s:\n got:\n%s\nwant:\n%s", h, got, want)
		}
	}
}

// Facts about the generations, independent of the golden files.
func TestGenerationFacts(t *testing.T) {
	offered := func(host, tmpl string) bool {
		tp, _ := Builtin(tmpl)
		_, err := tp.Apply(loadHost(t, host))
		return err == nil
	}
	for _, c := range []struct {
		host string
		v4   bool
	}{{"intel-skylake.json", true}, {"intel-icelake.json", true}, {"intel-sapphirerapids.json", true},
		{"amd-milan.json", false}, {"amd-genoa.json", true}, {"amd-rome.json", false}} {
		if got := offered(c.host, NameV4); got != c.v4 {
			t.Errorf("%s: x86-64-v4 offered %v, want %v", c.host, got, c.v4)
		}
		for _, n := range []string{NameV2, NameV3, NameT2, NameC3} {
			if !offered(c.host, n) {
				t.Errorf("%s: %s not offered", c.host, n)
			}
		}
	}
	// T2 hides AMX and AVX-512 state on Sapphire Rapids.
	spr := loadHost(t, "intel-sapphirerapids.json")
	if u, _ := spr.XCR0(); u&(xcompTileCfg|xcompTileData|xcompOpmask) == 0 {
		t.Fatalf("the recorded Sapphire Rapids has no AMX/AVX-512 state: %#x", u)
	}
	t2, _ := Builtin(NameT2)
	out, _ := t2.Apply(spr)
	n := Normalize(out, 0, 2)
	u, _ := n.XCR0()
	if u != xcompLegacy|xcompAVX {
		t.Fatalf("t2 on Sapphire Rapids: xcr0 %#x, want x87|sse|avx", u)
	}
	if s := n.XSaveSize(u); s != 832 {
		t.Fatalf("t2 XSAVE area %d bytes, want 832 (576 + 256 of YMM)", s)
	}
}

// Normalisation invariants on every recorded host, template and vCPU.
func TestNormalizeInvariants(t *testing.T) {
	for _, h := range hostFiles(t) {
		host := loadHost(t, h)
		for _, name := range append(BuiltinNames(), HostName) {
			tp, _ := Builtin(name)
			base, err := tp.Apply(host)
			var ue *UnavailableError
			if errors.As(err, &ue) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int{1, 3, 8} {
				for id := 0; id < n; id++ {
					where := fmt.Sprintf("%s %s vcpu %d/%d", h, name, id, n)
					checkInvariants(t, where, Normalize(base, id, n), id, n)
				}
			}
		}
	}
}

func checkInvariants(t *testing.T, where string, c Table, id, n int) {
	t.Helper()
	e := c.Find(1, 0)
	if e == nil || e.ECX&leaf1HypervisorBit == 0 || int(e.EBX>>24) != id || int(e.EBX>>16&0xff) != n {
		t.Fatalf("%s: leaf 1 %+v", where, e)
	}
	if (n > 1) != (e.EDX&leaf1HTTBit != 0) {
		t.Fatalf("%s: HTT bit", where)
	}
	for _, leaf := range []uint32{leafTopology, leafTopologyV2} {
		if c.Find(leaf, 0) == nil {
			continue
		}
		smt, core := c.Find(leaf, 0), c.Find(leaf, 1)
		if int(smt.EDX) != id || int(core.EDX) != id || smt.EBX != 1 || int(core.EBX) != n || 1<<core.EAX < n {
			t.Fatalf("%s: topology leaf %#x: %+v %+v", where, leaf, smt, core)
		}
	}
	if e := c.Find(leafPMU, 0); e != nil && (e.EAX|e.EBX|e.ECX|e.EDX) != 0 {
		t.Fatalf("%s: PMU leaf not zero", where)
	}
	// Every feature's prerequisites are present.
	for i := range features {
		f := &features[i]
		if !c.Has(f) {
			continue
		}
		for _, need := range f.Needs {
			if !c.Has(Lookup(need)) {
				t.Fatalf("%s: %s without %s", where, f.Name, need)
			}
		}
	}
	// XSAVE: the components are those of the features left, each enabled
	// one has its subleaf, each other one reads zero, and the sizes are
	// what the enabled components need.
	user, super := c.XCR0()
	if !c.Has(Lookup("xsave")) {
		if user != 0 {
			t.Fatalf("%s: xcr0 %#x without xsave", where, user)
		}
		return
	}
	for i := range features {
		f := &features[i]
		if f.XCR0 != 0 && !c.Has(f) && user&f.XCR0 != 0 {
			t.Fatalf("%s: xcr0 %#x keeps %s's state", where, user, f.Name)
		}
	}
	want := uint32(xsaveLegacySize)
	for comp := uint32(2); comp < 32; comp++ {
		sub := c.Find(leafXSave, comp)
		if sub == nil {
			continue
		}
		on := (user|super)&(1<<comp) != 0
		if !on && (sub.EAX|sub.EBX|sub.ECX|sub.EDX) != 0 {
			t.Fatalf("%s: component %d disabled but subleaf %+v", where, comp, sub)
		}
		if on && user&(1<<comp) != 0 {
			want = max(want, uint32(sub.EAX+sub.EBX))
		}
	}
	s0 := c.Find(leafXSave, 0)
	if uint32(s0.ECX) != want || uint32(s0.EBX) != want {
		t.Fatalf("%s: leaf 0xD.0 sizes ebx %d ecx %d, want %d for xcr0 %#x", where, s0.EBX, s0.ECX, want, user)
	}
}

func TestApplyRefusals(t *testing.T) {
	milan := loadHost(t, "amd-milan.json")
	v4, _ := Builtin(NameV4)
	_, err := v4.Apply(milan)
	var ue *UnavailableError
	if !errors.As(err, &ue) || !reflect.DeepEqual(ue.Missing, []string{"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}) {
		t.Fatalf("v4 on Milan: %v", err)
	}
	// A leaf past the host's range.
	far := &Template{Name: "far", CPUID: []RegisterModifier{{Leaf: 0x30, Register: "eax", Bitmap: strings.Repeat("x", 31) + "1"}}}
	if _, err := far.Apply(milan); err == nil || !strings.Contains(err.Error(), "beyond this host's highest leaf") {
		t.Fatalf("far leaf: %v", err)
	}
	// Clearing bits in an absent leaf is harmless.
	far.CPUID[0].Bitmap = strings.Repeat("0", 32)
	if _, err := far.Apply(milan); err != nil {
		t.Fatal(err)
	}
	// Setting a non-feature register (the family/model) is allowed.
	model := &Template{Name: "model", CPUID: []RegisterModifier{{Leaf: 1, Register: "eax", Bitmap: "00000000000000000000011001010101"}}}
	out, err := model.Apply(milan)
	if err != nil || out.Find(1, 0).EAX != 0x655 {
		t.Fatalf("model: %v", err)
	}
}

func TestSelect(t *testing.T) {
	sky, milan, ice := loadHost(t, "intel-skylake.json"), loadHost(t, "amd-milan.json"), loadHost(t, "intel-icelake.json")
	for _, c := range []struct {
		host     Table
		required []string
		want     string
		refuse   string
	}{
		{sky, nil, NameV2, ""},
		{sky, []string{"sse4_2", "popcnt"}, NameV2, ""},
		{sky, []string{"aes"}, NameC3, ""},
		{sky, []string{"avx2"}, NameV3, ""},
		{sky, []string{"avx2", "aes"}, NameT2, ""},
		{sky, []string{"avx512f"}, NameV4, ""},
		{milan, []string{"avx512f"}, "", "requires avx512f, which this host's KVM does not offer"},
		{sky, []string{"sha"}, "", "requires sha, which this host"},
		{ice, []string{"sha"}, "", "every built-in template hides something"},
	} {
		ch, err := Select(c.host, c.required, []string{"avx512f"})
		if c.refuse != "" {
			if !errors.Is(err, ErrNoTemplate) || !strings.Contains(err.Error(), c.refuse) {
				t.Errorf("%v: error %v, want %q", c.required, err, c.refuse)
			}
			continue
		}
		if err != nil || ch.Template.Name != c.want {
			t.Errorf("%v: %v %v, want %s", c.required, ch, err, c.want)
			continue
		}
		if c.want != NameV4 && (len(ch.HiddenOptional) != 1 || ch.HiddenOptional[0] != "avx512f") {
			t.Errorf("%v: hidden optional %v", c.required, ch.HiddenOptional)
		}
	}
}
