package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/kindlingvm/kindling/internal/buildid"
	"github.com/kindlingvm/kindling/internal/testtasks/gocpu/drive"
	"github.com/kindlingvm/kindling/internal/testtasks/gocpu/work"
)

// gocpuSrc is the gocpu task's source directory (tests run in
// cmd/kindling).
func gocpuSrc() string {
	dir, err := filepath.Abs(filepath.Join("..", "..", "internal", "testtasks", "gocpu"))
	if err != nil {
		panic(err)
	}
	return dir
}

// workProfile profiles gocpu's handler in this process for d
// (runtime/pprof at its 100 Hz) and writes the profile to path: what
// kindlingd would give for a version that ran that long, without
// kindlingd or a sampler. The handler runs as in the task, through
// aws-lambda-go's decoding and encoding; only the Runtime API client's
// HTTP is missing.
func workProfile(t testing.TB, path string, d time.Duration) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Skipf("cannot profile in this process (%v): run without -cpuprofile", err)
	}
	event := work.Event(1, work.DefaultOrders)
	h := lambda.NewHandler(work.Handle)
	for start := time.Now(); time.Since(start) < d; {
		if _, err := h.Invoke(context.Background(), event); err != nil {
			pprof.StopCPUProfile()
			t.Fatal(err)
		}
	}
	pprof.StopCPUProfile()
}

func TestGoTaskCommandLine(t *testing.T) {
	for _, c := range []struct {
		task goTask
		want string
	}{
		{goTask{Dir: "/src/hello"}, "cd /src/hello && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOAMD64=v1 GOFLAGS= go build -trimpath -buildvcs=false -pgo=off -o /tmp/b/hello ."},
		{goTask{Dir: "/src/my task", PGO: "/img/default.pgo"}, "cd '/src/my task' && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOAMD64=v1 GOFLAGS= go build -trimpath -buildvcs=false -pgo=/img/default.pgo -o /tmp/b/hello ."},
	} {
		if got := c.task.commandLine("/tmp/b/hello"); got != c.want {
			t.Errorf("%+v:\n got %s\nwant %s", c.task, got, c.want)
		}
	}
	if got := shellQuote("it's"); got != `'it'\''s'` {
		t.Errorf("shellQuote: %s", got)
	}
}

// TestGoTaskBuildsGocpuWithAndWithoutPGO builds the gocpu task from its
// source as image build --task-src does: twice without a profile (the
// same binary), and with a profile of its work (another binary, whose
// build information names the profile).
func TestGoTaskBuildsGocpuWithAndWithoutPGO(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the standard library with a profile, a minute on a slow machine (-short)")
	}
	dir := t.TempDir()
	prof := filepath.Join(dir, "default.pgo")
	workProfile(t, prof, 2*time.Second)
	_, samples, err := readPGOProfile(prof)
	if err != nil || samples == 0 {
		t.Fatalf("profile of the work: %d samples, %v", samples, err)
	}
	var log bytes.Buffer
	build := func(name, pgo string) (id string, settings map[string]string) {
		t.Helper()
		bin := filepath.Join(dir, name)
		start := time.Now()
		if err := (goTask{Dir: gocpuSrc(), PGO: pgo}).build(bin, &log); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s built in %v", name, time.Since(start).Round(time.Millisecond))
		id, err := buildid.File(bin)
		if err != nil {
			t.Fatal(err)
		}
		bi, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		settings = map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		return id, settings
	}
	plain, plainSettings := build("plain", "")
	again, _ := build("again", "")
	guided, guidedSettings := build("guided", prof)
	if plain != again {
		t.Errorf("two builds without a profile differ: %s and %s", plain, again)
	}
	if plain == guided {
		t.Errorf("the profile-guided build has the plain one's build ID %s", plain)
	}
	if v, ok := plainSettings["-pgo"]; ok {
		t.Errorf("plain build records -pgo=%s", v)
	}
	if guidedSettings["-pgo"] != "default.pgo" || guidedSettings["-trimpath"] != "true" || guidedSettings["CGO_ENABLED"] != "0" {
		t.Errorf("guided build settings %v; want -pgo=default.pgo, -trimpath, CGO_ENABLED=0", guidedSettings)
	}
	if !strings.Contains(log.String(), "go build -trimpath -buildvcs=false -pgo="+prof+" -o ") {
		t.Errorf("the command shown:\n%s", log.String())
	}
}

func TestGoTaskErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	for _, c := range []struct {
		dir, want string
	}{
		{filepath.Join(dir, "nope"), "no such file"},
		{file, "not a directory"},
		{filepath.Join(gocpuSrc(), "work"), "package work is not a main package"},
		{dir, "go list"},
	} {
		err := goTask{Dir: c.dir}.build(filepath.Join(dir, "out"), &bytes.Buffer{})
		var se *srcError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want a --task-src error saying %q", c.dir, err, c.want)
		}
		t.Log(err)
	}
	// GOFLAGS from a go env file survives GOFLAGS=: the build says so.
	env := filepath.Join(dir, "go.env")
	os.WriteFile(env, []byte("GOFLAGS=-tags=kindlingtest\n"), 0o644)
	t.Setenv("GOENV", env)
	var log bytes.Buffer
	if err := (goTask{Dir: gocpuSrc()}).build(filepath.Join(dir, "out"), &log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), `go env GOFLAGS is "-tags=kindlingtest"`) {
		t.Errorf("the build did not name the go env file's GOFLAGS:\n%s", log.String())
	}
	os.WriteFile(env, []byte("GOFLAGS=-trimpath -buildvcs=false\n"), 0o644) // what the command has anyway
	log.Reset()
	if err := (goTask{Dir: gocpuSrc()}).build(filepath.Join(dir, "out"), &log); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(log.String(), "note:") {
		t.Errorf("a note about GOFLAGS the command has anyway:\n%s", log.String())
	}

	t.Setenv("PATH", dir)
	err := goTask{Dir: gocpuSrc()}.build(filepath.Join(dir, "out"), &bytes.Buffer{})
	if !errors.Is(err, errNoGo) {
		t.Errorf("without go on PATH: %v", err)
	}
	t.Log(err)
}

func TestReadPGOProfile(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pgo")
	os.WriteFile(garbage, []byte("not a profile\n"), 0o644)
	empty := filepath.Join(dir, "empty.pgo")
	os.WriteFile(empty, nil, 0o644)
	for path, want := range map[string]string{
		filepath.Join(dir, "nope"): "no such file",
		garbage:                    "not a pprof profile",
		empty:                      "not a pprof profile",
	} {
		if _, _, err := readPGOProfile(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", filepath.Base(path), err, want)
		}
	}
}

// BenchmarkPGOGain measures what building gocpu with a profile of its
// work saves: the plain and the profile-guided binary, built as image
// build --task-src builds them, each driven directly (drive.Run: no
// kindlingd, no VM) with the same event, back to back in alternating
// order, one round per b.N. The profile is 20 s of the work in this
// process (some 2,000 samples: fewer leave the small hot calls out of
// it). It reports each binary's median CPU per invocation, the median of
// the rounds' savings, and the saving between the two binaries' best
// rounds (a busy machine only ever adds CPU time, so the minimum is the
// steadier figure where others share the machine):
//
//	go test ./cmd/kindling -run '^$' -bench PGOGain -benchtime 20x
func BenchmarkPGOGain(b *testing.B) {
	const warm, measured = 5, 60
	dir := b.TempDir()
	prof := filepath.Join(dir, "default.pgo")
	workProfile(b, prof, 20*time.Second)
	plain, guided := filepath.Join(dir, "plain"), filepath.Join(dir, "guided")
	for bin, pgo := range map[string]string{plain: "", guided: prof} {
		if err := (goTask{Dir: gocpuSrc(), PGO: pgo}).build(bin, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
	event := work.Event(1, work.DefaultOrders)
	run := func(bin string) time.Duration {
		r, err := drive.Run(context.Background(), bin, event, warm, measured)
		if err != nil {
			b.Fatal(err)
		}
		return r.PerInvocation()
	}
	var plainCPU, guidedCPU, saved []float64
	for i := 0; b.Loop(); i++ {
		var p, g time.Duration
		if i%2 == 0 {
			p, g = run(plain), run(guided)
		} else {
			g, p = run(guided), run(plain)
		}
		plainCPU, guidedCPU = append(plainCPU, float64(p)), append(guidedCPU, float64(g))
		saved = append(saved, 100*(1-float64(g)/float64(p)))
		b.Logf("round %d: plain %v, pgo %v CPU per invocation (%.1f%% less)", i, p, g, saved[len(saved)-1])
	}
	b.ReportMetric(median(plainCPU), "plain-cpu-ns/inv")
	b.ReportMetric(median(guidedCPU), "pgo-cpu-ns/inv")
	b.ReportMetric(median(saved), "%less-cpu-median")
	b.ReportMetric(100*(1-slices.Min(guidedCPU)/slices.Min(plainCPU)), "%less-cpu-best")
}

func median(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestProfileFit tells a profile of the task from another program's,
// which go build -pgo takes all the same.
func TestProfileFit(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "cpu.pprof")
	workProfile(t, prof, 500*time.Millisecond)
	data, err := os.ReadFile(prof)
	if err != nil {
		t.Fatal(err)
	}
	gocpu := filepath.Join(dir, "gocpu")
	if err := (goTask{Dir: gocpuSrc()}).build(gocpu, io.Discard); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	os.MkdirAll(filepath.Join(dir, "src"), 0o755)
	os.WriteFile(filepath.Join(dir, "src", "go.mod"), []byte("module example.com/other\n\ngo 1.24\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "src", "main.go"), []byte("package main\n\nfunc main() { println(work()) }\n\nfunc work() int { return 42 }\n"), 0o644)
	if err := (goTask{Dir: filepath.Join(dir, "src")}).build(other, io.Discard); err != nil {
		t.Fatal(err)
	}
	own, total, err := profileFit(data, gocpu)
	if err != nil || total == 0 || own*2 < total {
		t.Errorf("gocpu: %d of %d samples in its own code, %v; want most", own, total, err)
	}
	if own, _, err := profileFit(data, other); err != nil || own != 0 {
		t.Errorf("another program: %d samples in its own code, %v; want none", own, err)
	}
	var log bytes.Buffer
	reportProfileFit(&log, prof, other)
	if !strings.Contains(log.String(), "is it another program's?") {
		t.Errorf("report: %s", log.String())
	}
	for name, std := range map[string]bool{
		"runtime.mallocgc": true, "encoding/json.(*decodeState).object": true, "vendor/golang.org/x/net/http2.F": true,
		"main.handle": false, "github.com/x/y.(*T).M": false, "slices.SortFunc[go.shape.[]github.com/x/y.T]": true, "gcWriteBarrier": true,
	} {
		if standardLibrary(name) != std {
			t.Errorf("standardLibrary(%q) = %v", name, !std)
		}
	}
}
