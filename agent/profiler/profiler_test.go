package profiler

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/kindlingvm/kindling/internal/buildid"
)

// testFrequency is higher than the default so a one-second run gives
// enough samples to judge.
const testFrequency = 499

// buildHog builds testdata/cpuhog into dir with extra go build flags.
func buildHog(t testing.TB, dir string, flags ...string) string {
	t.Helper()
	out := filepath.Join(dir, "cpuhog")
	args := append([]string{"build", "-buildvcs=false", "-o", out}, flags...)
	cmd := exec.Command("go", append(args, "./testdata/cpuhog")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cpuhog: %v\n%s", err, b)
	}
	return out
}

// runHog runs the hog under the sampler to completion and collects once.
func runHog(t *testing.T, bin string, opts Options, args ...string) (*profile.Profile, Stats, *os.ProcessState) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	s, err := Start(cmd, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cpuhog: %v\n%s", err, stderr.Bytes())
	}
	if !cmd.ProcessState.Success() || stdout.Len() == 0 {
		t.Fatalf("cpuhog did not finish its work: %v, stdout %q", cmd.ProcessState, stdout.Bytes())
	}
	p, stats, err := s.Collect()
	if err != nil {
		t.Fatal(err)
	}
	if p == nil {
		t.Fatalf("no profile (stats %+v)", stats)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return p, stats, cmd.ProcessState
}

// declLines maps the hog's functions to the line of their declaration.
func declLines(t *testing.T) map[string]int64 {
	t.Helper()
	f, err := os.Open("testdata/cpuhog/main.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := make(map[string]int64)
	sc := bufio.NewScanner(f)
	for n := int64(1); sc.Scan(); n++ {
		switch line := sc.Text(); {
		case strings.HasPrefix(line, "func (m *mixer) mix("):
			out["main.(*mixer).mix"] = n
		case strings.HasPrefix(line, "func "):
			name, _, _ := strings.Cut(strings.TrimPrefix(line, "func "), "(")
			out["main."+name] = n
		}
	}
	return out
}

func leafName(s *profile.Sample) string {
	if len(s.Location) == 0 || len(s.Location[0].Line) == 0 {
		return ""
	}
	return s.Location[0].Line[0].Function.Name
}

// stackNames lists every function of a sample, inlined ones included, innermost first.
func stackNames(s *profile.Sample) []string {
	var out []string
	for _, l := range s.Location {
		for _, ln := range l.Line {
			out = append(out, ln.Function.Name)
		}
	}
	return out
}

func TestProfileCPUHog(t *testing.T) {
	dir := t.TempDir()
	bin := buildHog(t, dir)
	p, stats, ps := runHog(t, bin, Options{Frequency: testFrequency}, "-d", "1s")
	t.Logf("stats %+v, %d samples in profile, %d locations", stats, len(p.Sample), len(p.Location))

	// One sample per period of user CPU time, whatever else the machine
	// is doing; the kernel's own accounting of that time is coarser.
	want := float64(ps.UserTime()) / float64(time.Second) * testFrequency
	if got := float64(stats.Samples); got < 0.8*want || got > 1.2*want {
		t.Errorf("%d samples for %v of user CPU time at %d Hz, want about %.0f", stats.Samples, ps.UserTime(), testFrequency, want)
	}
	if stats.Lost != 0 {
		t.Errorf("lost %d records", stats.Lost)
	}
	if p.Period != int64(time.Second)/testFrequency || p.PeriodType.Type != "cpu" || p.SampleType[0].Type != "samples" || p.SampleType[1].Unit != "nanoseconds" {
		t.Errorf("period %d %v, sample types %v %v", p.Period, p.PeriodType, p.SampleType[0], p.SampleType[1])
	}
	if p.TimeNanos == 0 || p.DurationNanos < int64(900*time.Millisecond) {
		t.Errorf("time %d, duration %v", p.TimeNanos, time.Duration(p.DurationNanos))
	}

	// Mapping[0] is the binary, with the build ID the host checks.
	wantID, err := buildid.File(bin)
	if err != nil {
		t.Fatal(err)
	}
	if m := p.Mapping[0]; m.File != bin || m.BuildID != wantID || m.Start == 0 || m.Limit <= m.Start {
		t.Errorf("Mapping[0] = %+v, want file %s build ID %s", m, bin, wantID)
	}

	// The top functions by flat samples are the hog's own.
	flat := make(map[string]int64)
	threads := make(map[int64]bool)
	var total int64
	for _, s := range p.Sample {
		flat[leafName(s)] += s.Value[0]
		total += s.Value[0]
		for _, tid := range s.NumLabel["thread"] {
			threads[tid] = true
		}
	}
	var names []string
	for n := range flat {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return flat[names[i]] > flat[names[j]] })
	t.Logf("top flat: %v", func() []string {
		var top []string
		for _, n := range names[:min(6, len(names))] {
			top = append(top, n+"="+time.Duration(flat[n]*p.Period).String())
		}
		return top
	}())
	own := map[string]bool{"main.spin": true, "main.step": true, "main.(*mixer).mix": true, "main.tableHash": true}
	for _, n := range names[:2] {
		if !own[n] {
			t.Errorf("top flat function %q is not one of the hog's hot functions (top: %v)", n, names[:min(5, len(names))])
		}
	}
	for _, n := range []string{"main.spin", "main.step", "main.tableHash"} {
		if flat[n]*10 < total {
			t.Errorf("%s has %d of %d samples", n, flat[n], total)
		}
	}
	if len(threads) < 2 {
		t.Errorf("samples from %d threads, want several", len(threads))
	}

	// Callers are in the stacks: the frameless spin's too (leaf.go), and
	// step is an inlined frame inside mix.
	decl := declLines(t)
	callers := map[string][]string{
		"main.spin":      {"main.main.func2"},
		"main.step":      {"main.(*mixer).mix", "main.mixWorker", "main.main.func2"},
		"main.tableHash": {"main.main.func2"},
	}
	withCallers := make(map[string]int64)
	for _, s := range p.Sample {
		leaf := leafName(s)
		want, ok := callers[leaf]
		if !ok {
			continue
		}
		if got := strings.Join(stackNames(s), " "); strings.Contains(got, strings.Join(want, " ")) {
			withCallers[leaf] += s.Value[0]
		}
	}
	for leaf := range callers {
		if flat[leaf] > 0 && withCallers[leaf]*10 < flat[leaf]*9 {
			t.Errorf("only %d of %d samples in %s have its callers %v", withCallers[leaf], flat[leaf], leaf, callers[leaf])
		}
	}
	inlinedStep := false
	for _, l := range p.Location {
		if len(l.Line) >= 2 && l.Line[0].Function.Name == "main.step" && l.Line[1].Function.Name == "main.(*mixer).mix" {
			inlinedStep = true
		}
	}
	if !inlinedStep {
		t.Error("no location expands main.step inlined into main.(*mixer).mix")
	}

	// StartLine and Line are what the source says.
	for _, fn := range p.Function {
		if want, ok := decl[fn.Name]; ok && fn.StartLine != want {
			t.Errorf("%s: StartLine %d, want %d", fn.Name, fn.StartLine, want)
		}
	}
	for _, l := range p.Location {
		for _, ln := range l.Line {
			if own[ln.Function.Name] && (ln.Line <= ln.Function.StartLine || !strings.HasSuffix(ln.Function.Filename, "cpuhog/main.go")) {
				t.Errorf("%s at %s:%d (starts at %d)", ln.Function.Name, ln.Function.Filename, ln.Line, ln.Function.StartLine)
			}
		}
	}

	// pprof reads it and go build -pgo uses it.
	pf := filepath.Join(dir, "cpu.pprof")
	f, err := os.Create(pf)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	top, err := exec.Command("go", "tool", "pprof", "-top", pf).CombinedOutput()
	if err != nil || !bytes.Contains(top, []byte("main.spin")) {
		t.Fatalf("go tool pprof -top: %v\n%s", err, top)
	}
	start := time.Now()
	buildHog(t, dir, "-pgo="+pf)
	t.Logf("go build -pgo took %v", time.Since(start))
}
