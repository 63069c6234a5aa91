package main

import (
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
