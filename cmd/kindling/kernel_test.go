package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/testtasks"
)

func TestKernelExplain(t *testing.T) {
	dir := t.TempDir()
	bin, err := testtasks.Build(dir, testtasks.GoHTTP)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := kindling(t, "kernel", "explain", "--for", bin)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"# go-http: static go binary", "CONFIG_IPV6=y\n    <- socket family AF_INET6",
		"CONFIG_FUTEX=y\n    <- syscall futex", "CONFIG_VIRTIO_MMIO=y\n    <- VM essential"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
	out, errOut, code = kindling(t, "kernel", "explain", "--json", "--for", bin)
	var doc struct {
		Reports []struct {
			Syscalls []struct{ Name string }
		}
		Options map[string][]string
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Reports) != 1 || doc.Options["CONFIG_INET"] == nil {
		t.Fatalf("--json: exit %d %s\n%.400s", code, errOut, out)
	}
}

func TestKernelBadInput(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "task.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"kernel", "explain", "--for", script}, "not an ELF file"},
		{[]string{"kernel", "explain", "--for", filepath.Join(dir, "nope")}, "no such file"},
		{[]string{"kernel", "explain"}, "--for BINARY"},
		{[]string{"kernel", "build"}, "--for BINARY"},
		{[]string{"kernel", "build", "--for", script}, "not an ELF file"},
		{[]string{"image", "build", "--task", script, "-o", dir, "--init", script}, "not an ELF file"},
		{[]string{"image", "build", "--task", script, "-o", dir}, "no kindling-init next to"},
		{[]string{"image", "build", "-o", dir}, "--task and -o are required"},
		{[]string{"image", "build", "--task", filepath.Join(binDir, "kindling"), "-o", dir, "--init", filepath.Join(dir, "nope")}, "no such file"},
	} {
		_, errOut, code := kindling(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}
