package main

import (
	"encoding/json"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/testtasks"
)

const iceLake = "../../cpuid/testdata/hosts/intel-icelake.json"

func TestCPUCommands(t *testing.T) {
	out, _, code := kindling(t, "cpu", "show", "--host-dump", iceLake)
	if code != 0 || !strings.Contains(out, "x86-64-v4  yes") || !strings.Contains(out, "avx512vl") {
		t.Fatalf("show (%d):\n%s", code, out)
	}
	out, _, code = kindling(t, "cpu", "show", "--raw", "--host-dump", iceLake)
	if code != 0 || !strings.Contains(out, "0x00000007  0        00000002  f1bf27eb") {
		t.Fatalf("show --raw (%d):\n%s", code, out)
	}
	out, _, code = kindling(t, "cpu", "show", "--template", "c3", "--host-dump", iceLake)
	if code != 0 || !strings.Contains(out, `"name": "c3"`) || strings.Contains(out, " avx2 ") {
		t.Fatalf("show --template (%d):\n%s", code, out)
	}
	out, _, code = kindling(t, "cpu", "diff", "c3", "x86-64-v3", "--host-dump", iceLake)
	for _, want := range []string{"avx2         -    yes", "aes          yes  -"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("diff (%d) lacks %q:\n%s", code, want, out)
		}
	}

	dir := t.TempDir()
	bin, err := testtasks.Build(dir, testtasks.GoHello)
	if err != nil {
		t.Fatal(err)
	}
	out, _, code = kindling(t, "cpu", "needs", bin, "--host-dump", iceLake)
	if code != 0 || !regexp.MustCompile(`avx2\s+optional`).MatchString(out) || !strings.Contains(out, "template: x86-64-v2") {
		t.Fatalf("needs (%d):\n%s", code, out)
	}
	// The Zen 3 host has no AVX-512: a task that requires it is refused.
	if _, err := osexec.LookPath("gcc"); err == nil {
		avx512, err := testtasks.Build(dir, testtasks.CAVX512)
		if err != nil {
			t.Fatal(err)
		}
		out, _, code = kindling(t, "cpu", "needs", avx512, "--host-dump", "../../cpuid/testdata/hosts/amd-milan.json")
		if code != 1 || !regexp.MustCompile(`avx512f\s+required`).MatchString(out) ||
			!strings.Contains(out, "refused: no CPU template fits: the task requires avx512f") {
			t.Fatalf("needs avx512 on Milan (%d):\n%s", code, out)
		}
	}
}

func TestCPUBadInput(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.json")
	os.WriteFile(short, []byte(`{"cpuid":[{"leaf":"0x7","subleaf":0,"register":"ebx","bitmap":"xx0"}]}`), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"cpu", "diff", "x86-64-v9", "c3", "--host-dump", iceLake}, 2, `unknown CPU template "x86-64-v9"`},
		{[]string{"cpu", "diff", short, "c3", "--host-dump", iceLake}, 2, "cpuid[0] (leaf 0x7 subleaf 0 ebx): bitmap \"xx0\" has 3 characters, want 32"},
		{[]string{"cpu", "needs", "/etc/hostname", "--host-dump", iceLake}, 2, "not an ELF file"},
		{[]string{"cpu", "needs", "--host-dump", iceLake}, 2, "cpu needs takes one BINARY"},
		{[]string{"cpu", "frob"}, 1, `unknown cpu command "frob"`},
	} {
		_, errOut, code := kindling(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errOut, c.code, c.want)
		}
	}
}

// hashTask hashes with crypto/sha256 for a second, profiling itself with
// runtime/pprof into the file its argument names. Built with -B
// gobuildid, its binary has a GNU build ID, which runtime/pprof puts in
// the profile: the profile passes the check against the binary.
const hashTask = `package main

import (
	"crypto/sha256"
	"os"
	"runtime/pprof"
	"time"
)

func main() {
	f, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	pprof.StartCPUProfile(f)
	buf := make([]byte, 64<<10)
	for start := time.Now(); time.Since(start) < time.Second; {
		sum := sha256.Sum256(buf)
		buf[0] ^= sum[0]
	}
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		panic(err)
	}
}
`

func TestCPUNeedsProfile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "hash")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module example.com/hashtask\n\ngo 1.26\n"), 0o644)
	os.WriteFile(filepath.Join(src, "main.go"), []byte(hashTask), 0o644)
	bin := filepath.Join(dir, "hash-bin")
	build := osexec.Command("go", "build", "-trimpath", "-ldflags=-B gobuildid", "-o", bin, ".")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	prof := filepath.Join(dir, "cpu.pprof")
	if out, err := osexec.Command(bin, prof).CombinedOutput(); err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}

	out, errOut, code := kindling(t, "cpu", "needs", bin, "--profile", prof, "--host-dump", iceLake)
	if code != 0 || !regexp.MustCompile(`(?m)^sha\s+\d+\.\d%\s+wanted\s+crypto/internal/fips140/sha256\.block`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^avx2\s+\d+\.\d%\s+wanted`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^avx512f\s+\d+\.\d%\s+-`).MatchString(out) ||
		!strings.Contains(out, "template x86-64-v2 hides wanted") {
		t.Fatalf("needs --profile (%d):\n%s%s", code, out, errOut)
	}

	out, _, code = kindling(t, "cpu", "needs", bin, "--profile", prof, "--no-select", "--json")
	var j struct {
		Profile struct {
			Samples int64 `json:"samples"`
		} `json:"profile"`
		Hints []struct {
			Extension string  `json:"extension"`
			Fraction  float64 `json:"fraction"`
			Wanted    bool    `json:"wanted"`
		} `json:"hints"`
	}
	if err := json.Unmarshal([]byte(out), &j); code != 0 || err != nil || j.Profile.Samples == 0 {
		t.Fatalf("needs --profile --json (%d, %v):\n%s", code, err, out)
	}
	wanted := map[string]bool{}
	for _, h := range j.Hints {
		wanted[h.Extension] = h.Wanted
	}
	if !wanted["sha"] || !wanted["avx2"] || wanted["avx512f"] {
		t.Fatalf("hints %+v", j.Hints)
	}

	// A profile of another build, and bytes that are no profile, are
	// refused.
	hello, err := testtasks.Build(dir, testtasks.GoHello)
	if err != nil {
		t.Fatal(err)
	}
	_, errOut, code = kindling(t, "cpu", "needs", hello, "--profile", prof, "--no-select")
	if code != 2 || !strings.Contains(errOut, "is not a profile of "+hello+": wrong build: profile of build ") {
		t.Fatalf("other build (%d): %s", code, errOut)
	}
	_, errOut, code = kindling(t, "cpu", "needs", bin, "--profile", bin, "--no-select")
	if code != 2 || !strings.Contains(errOut, "corrupt profile") {
		t.Fatalf("not a profile (%d): %s", code, errOut)
	}
}
