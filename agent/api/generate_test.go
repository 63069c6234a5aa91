package api

import (
	"bytes"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// generated are the files protoc writes from kindling.proto.
var generated = []string{"kindling.pb.go", "kindling_grpc.pb.go"}

// protocVersionLine is the header line where each plugin records protoc's
// version: "// \tprotoc        v3.21.12" (protoc-gen-go) and
// "// - protoc             v3.21.12" (protoc-gen-go-grpc).
var protocVersionLine = regexp.MustCompile(`(?m)^// (?:\t|- )protoc +(\S+)$`)

// TestGeneratedCodeIsCurrent runs protoc as make proto does, into a
// temporary directory, and fails if the committed code differs.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		// make setup installs it, and make test runs make setup; CI must
		// never pass without the check.
		msg := "protoc not found: install protobuf-compiler (make setup does)"
		if os.Getenv("CI") != "" || os.Getenv("KINDLING_REQUIRE_PROTOC") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	out := t.TempDir()
	// The same command line as make proto's, run in the same directory
	// (the package's: go test's working directory), but writing to out.
	cmd := exec.Command(protoc,
		"--plugin=protoc-gen-go="+goTool(t, "protoc-gen-go"), "--go_out="+out, "--go_opt=paths=source_relative",
		"--plugin=protoc-gen-go-grpc="+goTool(t, "protoc-gen-go-grpc"), "--go-grpc_out="+out, "--go-grpc_opt=paths=source_relative",
		"kindling.proto")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, b)
	}
	for _, name := range generated {
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		fresh, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(committed, fresh) {
			continue
		}
		if was, now, ok := onlyProtocVersionDiffers(committed, fresh); ok {
			t.Errorf("agent/api/%s was made by protoc %s, this host's protoc is %s; the code is otherwise the same. "+
				"The version is pinned by Debian bookworm's protobuf-compiler: install that, or to move the pin run make proto and commit the result",
				name, was, now)
			continue
		}
		line, c, f := firstDifference(committed, fresh)
		t.Errorf("agent/api/%s is stale (line %d: committed %q, kindling.proto gives %q): run make proto", name, line, c, f)
	}
}

// goTool returns the path of a tool go.mod pins, building it if need be.
// go test puts its own go command first on PATH.
func goTool(t *testing.T, name string) string {
	t.Helper()
	b, err := exec.Command("go", "tool", "-n", name).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go tool -n %s: %v\n%s", name, err, ee.Stderr)
		}
		t.Fatalf("go tool -n %s: %v", name, err)
	}
	return strings.TrimSpace(string(b))
}

// onlyProtocVersionDiffers reports whether committed and fresh differ only in
// the protoc version recorded in their headers, and the two versions.
func onlyProtocVersionDiffers(committed, fresh []byte) (was, now string, ok bool) {
	c := protocVersionLine.FindSubmatchIndex(committed)
	f := protocVersionLine.FindSubmatchIndex(fresh)
	if c == nil || f == nil {
		return "", "", false
	}
	was, now = string(committed[c[2]:c[3]]), string(fresh[f[2]:f[3]])
	if was == now {
		return "", "", false
	}
	patched := slices.Concat(fresh[:f[2]], []byte(was), fresh[f[3]:])
	return was, now, bytes.Equal(committed, patched)
}

// firstDifference returns the first line (1-based) where a and b differ,
// and that line of each ("" past the end).
func firstDifference(a, b []byte) (int, string, string) {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; ; i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y || i >= len(al) || i >= len(bl) {
			return i + 1, x, y
		}
	}
}

// TestOnePackageComment checks that doc.go holds the only package comment.
// protoc-gen-go v1.36.12 and protoc-gen-go-grpc v1.6.2 copy the comments of
// kindling.proto's syntax and package statements above the package clause
// but end them with a blank line, so they are not package comments; this
// says so if a plugin update (or a new file) changes that.
func TestOnePackageComment(t *testing.T) {
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var with []string
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil {
			with = append(with, name)
		}
	}
	if !slices.Equal(with, []string{"doc.go"}) {
		t.Errorf("package comments in %v, want only in doc.go", with)
	}
}
