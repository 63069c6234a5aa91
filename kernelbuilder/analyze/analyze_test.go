package analyze_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/kernelbuilder/analyze"
)

// built caches each test task for the whole run: several tests read one.
type built struct {
	once sync.Once
	path string
	err  error
}

var (
	buildMu  sync.Mutex
	buildDir string
	builds   = map[string]*built{}
)

func task(t *testing.T, name string) string {
	t.Helper()
	if name[0] == 'c' {
		if _, err := exec.LookPath("gcc"); err != nil {
			t.Skipf("skipping: no gcc to build %s (make setup installs build-essential)", name)
		}
	}
	buildMu.Lock()
	if buildDir == "" {
		d, err := os.MkdirTemp("", "kindling-analyze-")
		if err != nil {
			buildMu.Unlock()
			t.Fatal(err)
		}
		buildDir = d
	}
	b := builds[name]
	if b == nil {
		b = &built{}
		builds[name] = b
	}
	dir := buildDir
	buildMu.Unlock()
	b.once.Do(func() { b.path, b.err = testtasks.Build(dir, name) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func analyse(t *testing.T, name string) *analyze.Report {
	t.Helper()
	r, err := analyze.File(task(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s\n%v", r.Summary(), r.Names())
	for _, u := range r.Unresolved {
		t.Logf("unresolved: %s", u)
	}
	return r
}

// expect checks the calls and needs that must and must not be found.
func expect(t *testing.T, r *analyze.Report, must, mustNot []string) {
	t.Helper()
	for _, s := range must {
		if strings.HasPrefix(s, "AF_") {
			if !r.HasNeed(s) {
				t.Errorf("need %s not found", s)
			}
		} else if !r.Has(s) {
			t.Errorf("syscall %s not found", s)
		}
	}
	for _, s := range mustNot {
		if strings.HasPrefix(s, "AF_") {
			if r.HasNeed(s) {
				t.Errorf("need %s found, but the task has no such socket", s)
			}
		} else if r.Has(s) {
			t.Errorf("syscall %s found, but the task never makes it", s)
		}
	}
}

// goRuntime is what any Go program's runtime may do on linux/amd64.
var goRuntime = []string{"read", "write", "mmap", "munmap", "rt_sigaction", "rt_sigprocmask", "clone", "futex",
	"sigaltstack", "gettid", "tgkill", "exit_group", "sched_getaffinity", "madvise", "openat", "close",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "eventfd2", "nanosleep", "timer_create"}

var network = []string{"socket", "bind", "listen", "accept4", "connect", "setsockopt", "AF_INET", "AF_INET6"}

func TestGoHello(t *testing.T) {
	r := analyse(t, testtasks.GoHello)
	if r.Language != "go" || !r.Static || r.GoVersion == "" {
		t.Errorf("report %+v", r)
	}
	expect(t, r, goRuntime, append(network, "timerfd_create", "AF_UNIX"))
	// Every call found names where: the runtime's raw SYSCALL sites.
	s := r.Syscalls[0]
	if len(s.Sites) == 0 || s.Sites[0].Func == "" {
		t.Errorf("%s has no site: %+v", s.Name, s)
	}
	for _, u := range r.Unresolved {
		t.Errorf("hello world has an unresolved site: %s", u)
	}
}

func TestGoHTTP(t *testing.T) {
	r := analyse(t, testtasks.GoHTTP)
	expect(t, r, append(goRuntime, network...), []string{"timerfd_create", "AF_VSOCK"})
}

func TestGoEpollThroughXSysUnix(t *testing.T) {
	r := analyse(t, testtasks.GoEpoll)
	// x/sys's EpollWait makes epoll_pwait, not epoll_wait.
	expect(t, r, append(goRuntime, "timerfd_create", "timerfd_settime", "eventfd2", "socket", "AF_VSOCK"),
		[]string{"epoll_wait", "bind", "listen", "accept4", "AF_INET", "AF_INET6", "AF_UNIX"})
	found := false
	for _, s := range r.Syscalls {
		if s.Name == "timerfd_create" {
			for _, site := range s.Sites {
				found = found || strings.Contains(site.Func, "golang.org/x/sys/unix")
			}
		}
	}
	if !found {
		t.Error("timerfd_create is not attributed to golang.org/x/sys/unix")
	}
	if !strings.Contains(strings.Join(r.Modules, " "), "golang.org/x/sys@") {
		t.Errorf("build info modules %v lack golang.org/x/sys", r.Modules)
	}
}

// A stripped Go binary keeps .gopclntab: the same set, and a note.
func TestGoStripped(t *testing.T) {
	full, bare := analyse(t, testtasks.GoHello), analyse(t, testtasks.GoHelloBare)
	if !bare.Stripped || bare.Conservative || len(bare.Notes) == 0 || len(bare.Unresolved) != 0 {
		t.Errorf("stripped report: stripped=%v conservative=%v notes=%v unresolved=%v", bare.Stripped, bare.Conservative, bare.Notes, bare.Unresolved)
	}
	if a, b := strings.Join(full.Names(), " "), strings.Join(bare.Names(), " "); a != b {
		t.Errorf("stripped binary gives another set:\n%s\n%s", a, b)
	}
}

func TestCNoStdlibExact(t *testing.T) {
	r := analyse(t, testtasks.CNoStdlib)
	if got := strings.Join(r.Names(), " "); got != "write exit" {
		t.Errorf("syscalls %q, want exactly \"write exit\"", got)
	}
	if len(r.Unresolved) != 0 || !r.Static || r.Language != "c" {
		t.Errorf("report %+v", r)
	}
}

func TestCStaticGlibc(t *testing.T) {
	r := analyse(t, testtasks.CStatic)
	expect(t, r, []string{"write", "exit_group", "brk", "arch_prctl"}, append(network, "epoll_create1", "AF_UNIX"))
	if len(r.Notes) == 0 {
		t.Error("a static glibc binary must say its set is a superset")
	}
}

func TestCDynamicSockets(t *testing.T) {
	r := analyse(t, testtasks.CSockets)
	expect(t, r, []string{"socket", "bind", "listen", "accept", "connect", "recvfrom", "sendto", "write", "close",
		"mmap", "openat", "AF_INET", "AF_UNIX"}, []string{"epoll_create1", "AF_INET6", "AF_VSOCK"})
	libs := strings.Join(r.Libraries, " ")
	if !strings.Contains(libs, "libc.so") || !strings.Contains(libs, "ld-linux") {
		t.Errorf("libraries %q", libs)
	}
	for _, n := range r.Needs {
		if n.Name == "AF_INET" && !strings.Contains(n.Sites[0].Via, "socket()") {
			t.Errorf("AF_INET found via %q, want the call to socket()", n.Sites[0].Via)
		}
	}
}

func TestStrippedC(t *testing.T) {
	dir := t.TempDir()
	src := task(t, testtasks.CSockets)
	bare := filepath.Join(dir, "bare")
	if out, err := exec.Command("strip", "-o", bare, src).CombinedOutput(); err != nil {
		t.Skipf("skipping: strip: %v %s", err, out)
	}
	full := analyse(t, testtasks.CSockets)
	r, err := analyze.File(bare)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Stripped || len(r.Notes) == 0 {
		t.Errorf("stripped=%v notes=%v", r.Stripped, r.Notes)
	}
	a, b := full.Names(), r.Names()
	sort.Strings(a)
	sort.Strings(b)
	if strings.Join(a, " ") != strings.Join(b, " ") {
		t.Errorf("stripped C binary gives another set:\n%v\n%v", a, b)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "task.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755)
	if _, err := analyze.File(script); !errors.Is(err, analyze.ErrNotELF) || !strings.Contains(err.Error(), "#!/b") {
		t.Errorf("script: %v", err)
	}
	if _, err := analyze.File(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	for _, arch := range []string{"386", "arm64"} {
		out := filepath.Join(dir, "hello-"+arch)
		cmd := exec.Command("go", "build", "-o", out, "github.com/kindlingvm/kindling/internal/testtasks/gohello")
		cmd.Env = append(os.Environ(), "GOARCH="+arch, "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v %s", arch, err, o)
		}
		_, err := analyze.File(out)
		if !errors.Is(err, analyze.ErrNotX86_64) || !strings.Contains(err.Error(), "GOARCH=amd64") {
			t.Errorf("%s binary: %v", arch, err)
		}
	}
	obj := filepath.Join(dir, "x.o")
	if _, err := exec.LookPath("gcc"); err == nil {
		os.WriteFile(filepath.Join(dir, "x.c"), []byte("int f(void){return 1;}\n"), 0o644)
		if o, err := exec.Command("gcc", "-c", "-o", obj, filepath.Join(dir, "x.c")).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, o)
		}
		if _, err := analyze.File(obj); !errors.Is(err, analyze.ErrNotExecutable) {
			t.Errorf("object file: %v", err)
		}
	}
}
