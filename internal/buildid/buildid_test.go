package buildid

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A Go binary's ID is stable across rebuilds of the same inputs and
// changes with them.
func TestGoBinary(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	build := func(body, out string) string {
		os.WriteFile(src, []byte("package main\nfunc main() { "+body+" }\n"), 0o644)
		cmd := exec.Command("go", "build", "-o", out, src)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, b)
		}
		return out
	}
	a := build("println(1)", filepath.Join(dir, "a"))
	b := build("println(2)", filepath.Join(dir, "b"))
	idA, err := File(a)
	if err != nil {
		t.Fatal(err)
	}
	a2 := build("println(1)", filepath.Join(dir, "a2"))
	if id, _ := File(a2); id != idA || strings.TrimSpace(idA) == "" {
		t.Fatalf("the same program built twice: build IDs %q and %q", idA, id)
	}
	idB, _ := File(b)
	if idA == idB {
		t.Fatalf("two different programs share build ID %q", idA)
	}
}

func TestNotELF(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x")
	os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
	if _, err := File(p); err == nil {
		t.Fatal("a shell script has a build ID")
	}
}
