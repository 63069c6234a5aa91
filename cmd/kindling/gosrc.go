package main

// Building a Go task from its source for an image (image build
// --task-src): one reproducible go build command, shown before it runs,
// and optionally profile-guided (go build -pgo).

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// goBuildEnv is the environment go build runs in, whatever the caller's:
// a static linux/amd64 binary for the baseline x86-64 (the image's CPU
// template is then chosen from what the binary needs), and no GOFLAGS
// to add flags this command does not show.
var goBuildEnv = []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1", "GOFLAGS="}

// goTask is a Go task to build from source.
type goTask struct {
	// Dir is the directory of its main package, in a module of its own
	// (Dir or a parent has its go.mod) or in this one.
	Dir string
	// PGO is the CPU profile to build with; "" is -pgo=off, so that a
	// default.pgo in Dir is not picked up unasked.
	PGO string
}

// goArgs are go build's arguments, to write the binary at out: no paths
// of this machine in the binary (-trimpath), no version-control stamp
// (-buildvcs=false: a dirty tree would change it), and the profile.
func (t goTask) goArgs(out string) []string {
	pgo := "off"
	if t.PGO != "" {
		pgo = t.PGO
	}
	return []string{"build", "-trimpath", "-buildvcs=false", "-pgo=" + pgo, "-o", out, "."}
}

// commandLine is the build as a shell line one can run again.
func (t goTask) commandLine(out string) string {
	words := []string{"cd", shellQuote(t.Dir), "&&"}
	words = append(words, goBuildEnv...)
	words = append(words, "go")
	for _, a := range t.goArgs(out) {
		words = append(words, shellQuote(a))
	}
	return strings.Join(words, " ")
}

// errNoGo is the error for a machine without a Go toolchain on PATH.
var errNoGo = errors.New("no go toolchain on PATH: install Go (https://go.dev/dl/) and put its bin directory on PATH, or build the task yourself and give it with --task BINARY")

// build compiles the task to out, printing the command on log first.
func (t goTask) build(out string, log io.Writer) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("image build --task-src: %w (%v)", errNoGo, err)
	}
	if err := t.checkMain(goBin); err != nil {
		return err
	}
	fmt.Fprintf(log, "image: %s\n", t.commandLine(out))
	if flags := t.extraGoFlags(goBin, out); flags != "" {
		fmt.Fprintf(log, "image: note: go env GOFLAGS is %q (set with go env -w, which GOFLAGS= does not override): it applies to this build too\n", flags)
	}
	cmd := exec.Command(goBin, t.goArgs(out)...)
	cmd.Dir = t.Dir
	cmd.Env = append(os.Environ(), goBuildEnv...)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		hint := ""
		if t.PGO != "" {
			hint = fmt.Sprintf("\n(it was given the profile %s: if the profile is what go build rejects, build with --pgo off)", t.PGO)
		}
		return fmt.Errorf("image build: go build in %s: %w\n%s%s", t.Dir, err, strings.TrimSpace(output.String()), hint)
	}
	_, err = log.Write(output.Bytes())
	return err
}

// srcError is a --task-src that names no main package: bad input rather
// than a failed build.
type srcError struct{ msg string }

func (e *srcError) Error() string { return e.msg }

func srcErrorf(format string, args ...any) error {
	return &srcError{fmt.Sprintf("image build --task-src "+format, args...)}
}

// checkMain makes sure Dir holds a main package, so that a wrong
// directory is named as such rather than as a go build failure.
func (t goTask) checkMain(goBin string) error {
	st, err := os.Stat(t.Dir)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return srcErrorf("%s: %v", t.Dir, err)
	}
	if !st.IsDir() {
		return srcErrorf("%s: not a directory; give the directory of the task's package main", t.Dir)
	}
	cmd := exec.Command(goBin, "list", "-f", "{{.Name}}", ".")
	cmd.Dir = t.Dir
	cmd.Env = append(os.Environ(), goBuildEnv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	name, err := cmd.Output()
	if err != nil {
		return srcErrorf("%s: go list: %v\n%s", t.Dir, err, strings.TrimSpace(stderr.String()))
	}
	if n := strings.TrimSpace(string(name)); n != "main" {
		return srcErrorf("%s: package %s is not a main package; give the directory of the task's package main", t.Dir, n)
	}
	return nil
}

// extraGoFlags is GOFLAGS as go sees it in this build's environment,
// when it has a flag the command line does not: GOFLAGS= empties only
// the environment's, not one set in the user's go env file.
func (t goTask) extraGoFlags(goBin, out string) string {
	cmd := exec.Command(goBin, "env", "GOFLAGS")
	cmd.Dir = t.Dir
	cmd.Env = append(os.Environ(), goBuildEnv...)
	b, err := cmd.Output()
	if err != nil {
		return ""
	}
	flags := strings.TrimSpace(string(b))
	for _, f := range strings.Fields(flags) {
		if !slices.Contains(t.goArgs(out), f) {
			return flags
		}
	}
	return ""
}

// maxProfileBytes bounds a profile read for --pgo (gzipped or not): far
// above a merged profile of a real task, far below what would hurt.
const maxProfileBytes = 256 << 20

// readPGOProfile reads and parses a CPU profile for go build -pgo,
// returning its bytes and how many samples it holds.
func readPGOProfile(path string) ([]byte, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxProfileBytes+1))
	if err != nil {
		return nil, 0, err
	}
	if len(data) > maxProfileBytes {
		return nil, 0, fmt.Errorf("%s: over %d MiB, which no CPU profile is", path, maxProfileBytes>>20)
	}
	n, err := profileSamples(data)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	return data, n, nil
}

// profileSamples checks that data is a pprof CPU profile (gzipped or not)
// and counts its samples.
func profileSamples(data []byte) (int, error) {
	p, err := profile.ParseData(data)
	if err != nil {
		return 0, fmt.Errorf("not a pprof profile: %w", err)
	}
	if len(p.SampleType) == 0 {
		return 0, errors.New("not a pprof profile: no sample types")
	}
	return len(p.Sample), nil
}

// profileFit is how much of a profile's CPU is in a binary's own code:
// samples with a frame in a function outside the standard library that
// the binary has. go build -pgo takes any profile, another program's
// too, and only then does nothing with it; this is how to tell.
func profileFit(data []byte, bin string) (own, total int64, err error) {
	p, err := profile.ParseData(data)
	if err != nil {
		return 0, 0, err
	}
	ef, err := elf.Open(bin)
	if err != nil {
		return 0, 0, err
	}
	defer ef.Close()
	syms, err := ef.Symbols()
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", bin, err)
	}
	funcs := map[string]bool{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && !standardLibrary(s.Name) {
			funcs[s.Name] = true
		}
	}
	delete(funcs, "main.main") // every program has it, at the bottom of its stacks
	for _, s := range p.Sample {
		if len(s.Value) == 0 {
			continue
		}
		total += s.Value[0]
	frames:
		for _, loc := range s.Location {
			for _, l := range loc.Line {
				if l.Function != nil && funcs[l.Function.Name] {
					own += s.Value[0]
					break frames
				}
			}
		}
	}
	return own, total, nil
}

// reportProfileFit says how much of the profile's CPU is in the task's
// own code, and warns when none is.
func reportProfileFit(w io.Writer, profilePath, bin string) {
	data, err := os.ReadFile(profilePath)
	if err != nil {
		fmt.Fprintf(w, "image: cannot check the profile against the task: %v\n", err)
		return
	}
	own, total, err := profileFit(data, bin)
	switch {
	case err != nil:
		fmt.Fprintf(w, "image: cannot check the profile against the task: %v\n", err)
	case total == 0:
	case own == 0:
		fmt.Fprintf(w, "image: warning: none of the profile's %d samples is in the task's own code (outside the standard library): is it another program's? go build took it, to little effect\n", total)
	default:
		fmt.Fprintf(w, "image: %.0f%% of the profile's samples are in the task's own code\n", 100*float64(own)/float64(total))
	}
}

// standardLibrary reports whether a Go function name is in the standard
// library (the first element of its import path has no dot, as in
// encoding/json or runtime), or is no Go function name at all.
func standardLibrary(name string) bool {
	name, _, _ = strings.Cut(name, "[") // a generic instance's type arguments
	slash := strings.LastIndex(name, "/")
	dot := strings.Index(name[slash+1:], ".")
	if dot < 0 {
		return true
	}
	pkg := name[:slash+1+dot]
	if pkg == "main" {
		return false
	}
	first, _, _ := strings.Cut(pkg, "/")
	return !strings.Contains(first, ".")
}

// shellSafe are words that need no quoting in a shell.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// taskBinaryName names a task built from dir: its directory's name, so
// that the kernel plan and analysis reports say which task they are for.
func taskBinaryName(dir string) string {
	n := filepath.Base(dir)
	if !shellSafe.MatchString(n) || n == "." || n == "/" {
		return "task"
	}
	return n
}
