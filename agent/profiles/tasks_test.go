package profiles

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Test tasks: the kinds of work of testdata/busy, a small Go program that
// profiles itself with runtime/pprof, whose CPU profiles have the sample
// and period types the guest sampler's have. It is built with -B
// gobuildid, so the binary has a GNU build ID, which runtime/pprof puts
// in the profile's mapping and internal/buildid reads: its profiles pass
// Check against it.
const (
	taskSHA256    = "sha256sum" // crypto/sha256
	taskIndexByte = "indexbyte" // bytes.IndexByte
	taskSpin      = "spin"      // an integer loop
)

// taskRun is how long a task profiles itself: at 100 Hz, some 100
// samples.
const taskRun = time.Second

type taskResult struct {
	bin     string
	profile []byte
}

var (
	taskMu   sync.Mutex
	taskDir  string
	taskBin  string                    // testdata/busy, once built
	taskDone = map[string]taskResult{} // by name and environment
)

func TestMain(m *testing.M) {
	code := m.Run()
	if taskDir != "" {
		os.RemoveAll(taskDir)
	}
	os.Exit(code)
}

// task runs testdata/busy's work name once per test binary run (and
// environment: env is added to the run's), and returns the binary and the
// CPU profile it wrote.
func task(t *testing.T, name string, env ...string) (bin string, profile []byte) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs a profiled program")
	}
	taskMu.Lock()
	defer taskMu.Unlock()
	run := strings.Join(append([]string{name}, env...), " ")
	if r, ok := taskDone[run]; ok {
		return r.bin, r.profile
	}
	if taskDir == "" {
		dir, err := os.MkdirTemp("", "profiles-task")
		if err != nil {
			t.Fatal(err)
		}
		taskDir = dir
	}
	if taskBin == "" {
		bin := filepath.Join(taskDir, "busy")
		if err := build("busy", bin); err != nil {
			t.Fatal(err)
		}
		taskBin = bin
	}
	bin = taskBin
	prof := filepath.Join(taskDir, fmt.Sprintf("%s.%d.pprof", name, len(taskDone)))
	cmd := exec.Command(bin, name, prof, taskRun.String())
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run %s: %v\n%s", run, err, out)
	}
	data, err := os.ReadFile(prof)
	if err != nil {
		t.Fatal(err)
	}
	taskDone[run] = taskResult{bin, data}
	return bin, data
}

func build(name, bin string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-B gobuildid", "-o", bin, "./testdata/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", name, err, out)
	}
	return nil
}
