package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/testdaemon"
	"github.com/kindlingvm/kindling/rootfs"
)

// TestKindlingdStage runs stage 9 against binaries built here and an
// image of examples/hello with a placeholder kernel (the process backend
// never boots it), then checks that a failure names its step.
func TestKindlingdStage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kindlingd and the CLI and runs them: not in -short")
	}
	bin := t.TempDir()
	for pkg, out := range map[string]string{"./cmd/kindlingd": "kindlingd", "./cmd/kindling": "kindling", "./cmd/kindling-init": "kindling-init", "./examples/hello": "hello"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, out), pkg)
		cmd.Dir = testdaemon.ModuleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, o)
		}
	}
	img, _, _, err := testdaemon.ProcessImage(t.TempDir(), rootfs.ImageSpec{Init: filepath.Join(bin, "kindling-init"), Task: filepath.Join(bin, "hello")})
	if err != nil {
		t.Fatal(err)
	}

	out := captureStdout(t, func() {
		if err := kindlingdStage(bin, img); err != nil {
			t.Fatal(err)
		}
	})
	for _, w := range []string{
		"backend    process: ", "In plain words: kindlingd chose the process backend", "registered hello version 1",
		`{"greeting":"Hello, Kindling!","request_id":"demo-cold","cold":true}`, "prewarmed hello version 1: 1 instance started",
		`"request_id":"demo-warm"`, "total ms (CLI wall clock)", "kindlingd exited (exit status 0)",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("the stage's output lacks %q:\n%s", w, out)
		}
	}
	for _, row := range []string{"demo-cold cold ", "demo-warm warm "} {
		found := false
		for _, l := range strings.Split(out, "\n") {
			found = found || strings.HasPrefix(strings.Join(strings.Fields(l), " "), row)
		}
		if !found {
			t.Errorf("no table row %q:\n%s", row, out)
		}
	}

	// No image: the CLI refuses it, and the error says at which step.
	captureStdout(t, func() { err = kindlingdStage(bin, t.TempDir()) })
	if err == nil || !strings.HasPrefix(err.Error(), "register: kindling function register hello --image ") {
		t.Fatalf("a missing image: %v", err)
	}
}

// captureStdout runs f with os.Stdout going to a file, and returns what
// f wrote.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	tmp, err := os.CreateTemp(t.TempDir(), "stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	saved := os.Stdout
	os.Stdout = tmp
	defer func() { os.Stdout = saved }()
	f()
	b, _ := os.ReadFile(tmp.Name())
	return string(b)
}
