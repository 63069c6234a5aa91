package jail

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// buildDir holds the binaries the tests build once: the jailer and the
// probe, and kindling-vmm for the VMM tests.
var (
	buildDir  string
	buildOnce sync.Once
	buildErr  error
	built     = map[string]string{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// requireRoot skips a test that needs namespaces, mounts and mknod.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: jails need root (namespaces, mounts, mknod)")
	}
}

// binary builds the package at pkg (relative to the module) statically,
// once per test run, and returns its path.
func binary(t testing.TB, pkg string) string {
	t.Helper()
	buildOnce.Do(func() { buildDir, buildErr = os.MkdirTemp("", "kindling-jail-test-") })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if p, ok := built[pkg]; ok {
		return p
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	// The jailed uid must be able to execute it through the bind.
	if err := os.Chmod(out, 0o755); err != nil {
		t.Fatal(err)
	}
	built[pkg] = out
	return out
}

func jailerBin(t testing.TB) string {
	return binary(t, "github.com/kindlingvm/kindling/cmd/kindling-jailer")
}
func probe(t testing.TB) string {
	return binary(t, "github.com/kindlingvm/kindling/vmm/jail/testdata/probe")
}

// jailDir makes a fresh jail directory that Clean removes after the test.
func jailDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "jail")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Clean(dir); err != nil {
			t.Errorf("clean: %v", err)
		}
	})
	return dir
}

// probeSpec is a jail running the probe with args.
func probeSpec(t *testing.T, id string, args ...string) Spec {
	id = "t-" + id
	return Spec{
		ID:       id,
		Dir:      jailDir(t),
		UID:      UniqueID(id),
		GID:      UniqueID(id),
		ReadOnly: []Bind{{Source: probe(t), Target: "/probe"}},
		Argv:     append([]string{"/probe"}, args...),
	}
}

// jailRun is a started jail.
type jailRun struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	started        time.Time
}

// start starts s's jail, with extra passed as descriptors 3 and up.
func start(t *testing.T, s Spec, extra ...*os.File) *jailRun {
	t.Helper()
	cmd, err := Command(jailerBin(t), s)
	if err != nil {
		t.Fatal(err)
	}
	r := &jailRun{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &r.stdout, &r.stderr
	cmd.ExtraFiles = extra
	r.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-r.done
	})
	return r
}

func (r *jailRun) wait(t *testing.T) *os.ProcessState {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the jail did not exit\nstderr: %s", &r.stderr)
	}
	return r.cmd.ProcessState
}

func (r *jailRun) startedSince() time.Duration { return time.Since(r.started) }

// waitFile waits for path to exist, or the jail to end.
func (r *jailRun) waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-r.done:
			t.Fatalf("the jail exited (%v) before %s appeared\nstderr: %s", r.cmd.ProcessState, path, &r.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear\nstderr: %s", path, &r.stderr)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
