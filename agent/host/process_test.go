package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/syncbuf"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/rootfs"
)

// testImage builds kindling-init and the aws-lambda-go test task into an
// image (uncompressed, with a stand-in kernel: nothing boots it).
func testImage(t *testing.T, dir string) (string, *rootfs.Manifest) {
	t.Helper()
	initBin := filepath.Join(dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", initBin, "github.com/kindlingvm/kindling/cmd/kindling-init").CombinedOutput(); err != nil {
		t.Fatalf("build kindling-init: %v\n%s", err, out)
	}
	task, err := testtasks.Build(dir, testtasks.GoLambda)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("never booted"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "image")
	m, err := rootfs.BuildImage(rootfs.ImageSpec{Init: initBin, Task: task, Kernel: kernel, Codec: rootfs.CodecNone}, img)
	if err != nil {
		t.Fatal(err)
	}
	return img, m
}

// processFixture is what the process backend's tests share: one image,
// one image cache.
type processFixture struct {
	img   string
	m     *rootfs.Manifest
	cache string
	state string
	n     int
}

func (f *processFixture) backend(opts ProcessOptions) *ProcessBackend {
	opts.ImageCache = f.cache
	return NewProcessBackend(opts)
}

func (f *processFixture) spec(t *testing.T) Spec {
	t.Helper()
	f.n++
	id := fmt.Sprintf("sb-%d", f.n)
	dir := filepath.Join(f.state, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return Spec{ID: id, Dir: dir, Image: f.img, Manifest: f.m, Function: "fn", Env: []string{"GREETING=hello"}, MemoryMiB: 128, VCPUs: 1}
}

func (f *processFixture) boot(t *testing.T, b *ProcessBackend) (*processSandbox, Spec) {
	t.Helper()
	spec := f.spec(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := b.Boot(ctx, spec)
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	t.Cleanup(func() { sb.Stop(context.Background()) })
	return sb.(*processSandbox), spec
}

func invoke(t *testing.T, sb Sandbox, id, payload string, timeout time.Duration) (guest.Frame, []string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var lines []string
	f, err := sb.Invoke(ctx, id, []byte(payload), timeout, func(f guest.Frame) {
		mu.Lock()
		lines = append(lines, f.Stream+": "+string(f.Body))
		mu.Unlock()
	})
	mu.Lock()
	defer mu.Unlock()
	return f, lines, err
}

func mustRespond(t *testing.T, sb Sandbox, id, payload, want string) {
	t.Helper()
	f, _, err := invoke(t, sb, id, payload, 10*time.Second)
	if err != nil || f.Type != guest.TypeResponse || !strings.Contains(string(f.Body), want) {
		t.Fatalf("invoke %s: %v %s %s %s; want a response containing %s", id, err, f.Type, f.ErrorType, f.Body, want)
	}
}

// TestProcessBackend runs the process backend for real: kindling-init
// and an aws-lambda-go task as jailed host processes.
func TestProcessBackend(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the process backend's namespaces need root")
	}
	dir := t.TempDir()
	img, m := testImage(t, dir)
	f := &processFixture{img: img, m: m, cache: filepath.Join(dir, "cache"), state: filepath.Join(dir, "state")}

	t.Run("invocations", func(t *testing.T) {
		t.Setenv("KINDLINGD_SECRET", "must-not-leak")
		logs := &syncbuf.Buffer{}
		b := f.backend(ProcessOptions{Logger: slog.New(slog.NewTextHandler(logs, nil))})
		sb, spec := f.boot(t, b)
		rec := sb.Record()
		if rec.ID != spec.ID || rec.Backend != BackendProcess || rec.Dir != spec.Dir || rec.Channel != filepath.Join(spec.Dir, "agent.sock") || rec.APISock != "" {
			t.Errorf("record %+v", rec)
		}
		if st, err := procStartTime(rec.PID); err != nil || st != rec.StartTime {
			t.Errorf("start time %d %v, recorded %d", st, err, rec.StartTime)
		}
		checkJail(t, rec.PID, spec)

		// A response, with the task's output passed to the callback. The
		// agent does not order a task's output before its result (a line
		// may still be in the task's pipe when the result goes), so a
		// line may miss its invocation; not every time.
		var got [][]string
		for i := 0; i < 5; i++ {
			fr, lines, err := invoke(t, sb, fmt.Sprintf("inv-echo-%d", i), `{"op":"echo","text":"hi"}`, 10*time.Second)
			if err != nil || fr.Type != guest.TypeResponse || !strings.Contains(string(fr.Body), `"text":"hi"`) {
				t.Fatalf("echo: %v %s %s", err, fr.Type, fr.Body)
			}
			got = append(got, lines)
			if slicesContain(lines, "stdout: echo 2") {
				break
			}
		}
		if !slicesContain(got[len(got)-1], "stdout: echo 2") {
			t.Errorf("echo's log lines: %q", got)
		}
		// A handler error.
		fr, _, err := invoke(t, sb, "inv-error", `{"op":"error"}`, 10*time.Second)
		if err != nil || fr.Type != guest.TypeError || !strings.Contains(string(fr.Body), "handler says no") {
			t.Fatalf("error: %v %s %s", err, fr.Type, fr.Body)
		}
		// A timeout; the sandbox serves on.
		t0 := time.Now()
		fr, _, err = invoke(t, sb, "inv-timeout", `{"op":"sleep","ms":2000}`, 300*time.Millisecond)
		if err != nil || fr.Type != guest.TypeError || fr.ErrorType != "Runtime.Timeout" {
			t.Fatalf("timeout: %v %s %s %s", err, fr.Type, fr.ErrorType, fr.Body)
		}
		if d := time.Since(t0); d > 1500*time.Millisecond {
			t.Errorf("the timeout took %v", d)
		}
		mustRespond(t, sb, "inv-after-timeout", `{"op":"echo","text":"still here"}`, "still here")
		// A task that exits: the agent says so and restarts it.
		fr, _, err = invoke(t, sb, "inv-exit", `{"op":"exit"}`, 10*time.Second)
		if err != nil || fr.ErrorType != "Runtime.ExitError" {
			t.Fatalf("exit: %v %s %s", err, fr.ErrorType, fr.Body)
		}
		mustRespond(t, sb, "inv-after-exit", `{"op":"echo","text":"again"}`, "again")

		if err := sb.Snapshot(context.Background(), t.TempDir()); !errors.Is(err, ErrNoSnapshots) {
			t.Errorf("snapshot: %v", err)
		}
		if err := sb.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case <-sb.Exited():
		default:
			t.Fatal("Exited not closed after Stop")
		}
		if !strings.Contains(sb.ExitReason(), "signal 9") {
			t.Errorf("exit reason after Stop: %q", sb.ExitReason())
		}
		if err := syscall.Kill(rec.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still there after Stop: %v", rec.PID, err)
		}
		if _, err := os.Stat(spec.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("sandbox dir after Stop: %v", err)
		}
	})

	t.Run("crash", func(t *testing.T) {
		sb, _ := f.boot(t, f.backend(ProcessOptions{}))
		pid := sb.Record().PID
		go func() {
			time.Sleep(300 * time.Millisecond)
			syscall.Kill(-pid, syscall.SIGKILL)
		}()
		t0 := time.Now()
		fr, _, err := invoke(t, sb, "inv-doomed", `{"op":"sleep","ms":5000}`, 10*time.Second)
		if !errors.Is(err, ErrSandboxCrashed) {
			t.Fatalf("got %v (%s %s), want ErrSandboxCrashed", err, fr.Type, fr.Body)
		}
		want := fmt.Sprintf("sandbox %s crashed during invocation inv-doomed: killed by signal 9", sb.id)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q, want it to contain %q", err, want)
		}
		if d := time.Since(t0); d > 3*time.Second {
			t.Errorf("the crash took %v to report", d)
		}
		select {
		case <-sb.Exited():
		case <-time.After(5 * time.Second):
			t.Fatal("Exited not closed")
		}
		if r := sb.ExitReason(); r != "killed by signal 9 (killed)" {
			t.Errorf("exit reason %q", r)
		}
		if _, _, err := invoke(t, sb, "inv-late", `{"op":"echo"}`, time.Second); !errors.Is(err, ErrSandboxGone) {
			t.Errorf("invoking a dead sandbox: %v", err)
		}
	})

	t.Run("ctx-ends", func(t *testing.T) {
		sb, _ := f.boot(t, f.backend(ProcessOptions{}))
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := sb.Invoke(ctx, "inv-abandoned", []byte(`{"op":"sleep","ms":1000}`), 10*time.Second, nil)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 800*time.Millisecond {
			t.Fatalf("after %v: %v", time.Since(t0), err)
		}
		// The abandoned invocation finishes in the sandbox; asking again
		// by its ID returns its result.
		mustRespond(t, sb, "inv-abandoned", `{"op":"sleep","ms":1000}`, "slept")
	})

	t.Run("reattach", func(t *testing.T) {
		sb, _ := f.boot(t, f.backend(ProcessOptions{}))
		mustRespond(t, sb, "inv-1", `{"op":"echo","text":"before"}`, "before")
		rec := sb.Record()
		sb.detach() // kindlingd "dies"; the sandbox runs on
		if err := syscall.Kill(rec.PID, 0); err != nil {
			t.Fatalf("the sandbox died with its kindlingd: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		t0 := time.Now()
		sb2, err := f.backend(ProcessOptions{}).Reattach(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("reattached in %v", time.Since(t0))
		defer sb2.Stop(context.Background())
		if sb2.Record() != rec {
			t.Errorf("record %+v, want %+v", sb2.Record(), rec)
		}
		mustRespond(t, sb2, "inv-2", `{"op":"echo","text":"after"}`, "after")
		// A reattached sandbox is not our child: its death is seen through
		// its pidfd.
		syscall.Kill(-rec.PID, syscall.SIGKILL)
		select {
		case <-sb2.Exited():
		case <-time.After(5 * time.Second):
			t.Fatal("a reattached sandbox's death went unseen")
		}
		if r := sb2.ExitReason(); r != "exited" {
			t.Errorf("exit reason %q", r)
		}
		if err := sb2.Stop(context.Background()); err != nil {
			t.Errorf("stop after death: %v", err)
		}
	})

	t.Run("reattach-in-flight", func(t *testing.T) {
		sb, _ := f.boot(t, f.backend(ProcessOptions{}))
		rec := sb.Record()
		first := make(chan error, 1)
		t0 := time.Now()
		go func() {
			fr, _, err := invoke(t, sb, "inv-slow", `{"op":"sleep","ms":500}`, 10*time.Second)
			if err == nil {
				err = fmt.Errorf("a result (%s %s) although kindlingd let go", fr.Type, fr.Body)
			}
			first <- err
		}()
		time.Sleep(100 * time.Millisecond)
		sb.detach()
		if err := <-first; !errors.Is(err, guest.ErrAgentGone) {
			t.Fatalf("the detached invocation: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sb2, err := f.backend(ProcessOptions{}).Reattach(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		defer sb2.Stop(context.Background())
		// Asked again with a deadline the sleep cannot meet: only the
		// first run's result can be a response.
		fr, _, err := invoke(t, sb2, "inv-slow", `{"op":"sleep","ms":500}`, 100*time.Millisecond)
		if err != nil || fr.Type != guest.TypeResponse || !strings.Contains(string(fr.Body), "slept") {
			t.Fatalf("re-sent invocation: %v %s %s %s", err, fr.Type, fr.ErrorType, fr.Body)
		}
		t.Logf("first result after %v", time.Since(t0))
		mustRespond(t, sb2, "inv-next", `{"op":"echo","text":"next"}`, "next")
	})

	t.Run("reattach-gone", func(t *testing.T) {
		b := f.backend(ProcessOptions{})
		ctx := context.Background()
		dead := exec.Command("true")
		if err := dead.Run(); err != nil {
			t.Fatal(err)
		}
		self, err := procStartTime(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		sb, spec := f.boot(t, b)
		stopped := sb.Record()
		if err := sb.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		for name, rec := range map[string]Record{
			"dead pid":           {ID: "x", Backend: BackendProcess, PID: dead.Process.Pid, StartTime: 1, Dir: spec.Dir, Channel: filepath.Join(t.TempDir(), "a.sock")},
			"reused pid":         {ID: "x", Backend: BackendProcess, PID: os.Getpid(), StartTime: self + 1, Dir: spec.Dir, Channel: filepath.Join(t.TempDir(), "a.sock")},
			"stopped sandbox":    stopped,
			"no pid":             {ID: "x", Backend: BackendProcess},
			"zombie (not child)": zombieRecord(t),
		} {
			if _, err := b.Reattach(ctx, rec); !errors.Is(err, ErrSandboxGone) {
				t.Errorf("%s: %v, want ErrSandboxGone", name, err)
			}
		}
	})

	t.Run("agent-never-connects", func(t *testing.T) {
		// A live process whose agent does not come back is stopped, not
		// leaked.
		cmd := exec.Command("sleep", "30")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go cmd.Wait()
		defer cmd.Process.Kill()
		start, err := procStartTime(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		rec := Record{ID: "sb-mute", Backend: BackendProcess, PID: cmd.Process.Pid, StartTime: start, Dir: t.TempDir()}
		rec.Channel = filepath.Join(rec.Dir, "agent.sock")
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := f.backend(ProcessOptions{}).Reattach(ctx, rec); err == nil || errors.Is(err, ErrSandboxGone) {
			t.Fatalf("reattach to a mute process: %v", err)
		}
		if !waitGone(cmd.Process.Pid, start, 5*time.Second) {
			t.Error("the mute process is still running")
		}
	})

	t.Run("boot-fails", func(t *testing.T) {
		// A task that never asks for an invocation (it complains and
		// exits, again and again): Boot gives up with ctx, says what the
		// task said, and leaves no process behind.
		task := filepath.Join(t.TempDir(), "complain")
		os.WriteFile(task, []byte("#!/bin/sh\necho 'cannot find my config' >&2\nexit 2\n"), 0o755)
		img := filepath.Join(t.TempDir(), "img")
		bm, err := rootfs.BuildImage(rootfs.ImageSpec{Init: filepath.Join(dir, "kindling-init"), Task: task,
			Kernel: filepath.Join(dir, "vmlinux"), Codec: rootfs.CodecNone}, img)
		if err != nil {
			t.Fatal(err)
		}
		spec := f.spec(t)
		spec.Image, spec.Manifest = img, bm
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		b := f.backend(ProcessOptions{})
		_, err = b.Boot(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), "waiting for the task to ask for an invocation") || !strings.Contains(err.Error(), "stderr: cannot find my config") {
			t.Fatalf("boot of a failing task: %v", err)
		}
		t.Logf("boot: %v", err)
		if pids := processesIn(spec.Dir); len(pids) > 0 {
			t.Errorf("left running: %v", pids)
		}
		// A bad spec.
		if _, err := b.Boot(ctx, Spec{ID: "../x", Dir: spec.Dir, Image: img, Manifest: bm}); err == nil {
			t.Error("boot with ID ../x")
		}
	})

	t.Run("concurrent-extraction", func(t *testing.T) {
		logs := &syncbuf.Buffer{}
		cache := filepath.Join(t.TempDir(), "cache")
		b := NewProcessBackend(ProcessOptions{ImageCache: cache, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		var wg sync.WaitGroup
		dirs := make([]string, 8)
		errs := make([]error, 8)
		for i := range dirs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dirs[i], errs[i] = b.rootfs(f.img, f.m)
			}()
		}
		wg.Wait()
		for i := range dirs {
			if errs[i] != nil || dirs[i] != dirs[0] {
				t.Errorf("%d: %s %v", i, dirs[i], errs[i])
			}
		}
		if n := strings.Count(logs.String(), "image extracted"); n != 1 {
			t.Errorf("extracted %d times:\n%s", n, logs.String())
		}
		if ents, _ := os.ReadDir(cache); len(ents) != 1 {
			t.Errorf("cache holds %v", ents)
		}
	})

	t.Run("cgroup", func(t *testing.T) {
		root := cgroup2Root()
		if root == "" {
			t.Skip("skipping: no writable cgroup v2 hierarchy on this host")
		}
		parent := fmt.Sprintf("kindling-test-%d", os.Getpid())
		defer os.Remove(filepath.Join(root, parent))
		b := f.backend(ProcessOptions{CgroupParent: parent, cgroupRoot: root})
		sb, spec := f.boot(t, b)
		cg := filepath.Join(root, parent, spec.ID)
		got, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", sb.Record().PID))
		if err != nil || !strings.Contains(string(got), "0::/"+parent+"/"+spec.ID+"\n") {
			t.Fatalf("the sandbox's cgroup: %q %v; want %s", got, err, cg)
		}
		// Limits where the controllers are there to hold them.
		if b, err := os.ReadFile(filepath.Join(cg, "memory.max")); err == nil && strings.TrimSpace(string(b)) != strconv.Itoa(128<<20) {
			t.Errorf("memory.max %s", b)
		}
		if b, err := os.ReadFile(filepath.Join(cg, "pids.max")); err == nil && strings.TrimSpace(string(b)) != "256" {
			t.Errorf("pids.max %s", b)
		}
		mustRespond(t, sb, "inv-cg", `{"op":"echo","text":"jailed"}`, "jailed")
		if err := sb.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup after Stop: %v", err)
		}
	})

	t.Run("no-cgroup-warns-once", func(t *testing.T) {
		logs := &syncbuf.Buffer{}
		b := f.backend(ProcessOptions{CgroupParent: "kindling", cgroupRoot: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
		for i := 0; i < 2; i++ {
			sb, _ := f.boot(t, b)
			mustRespond(t, sb, "inv", `{"op":"echo","text":"unlimited"}`, "unlimited")
		}
		if n := strings.Count(logs.String(), "cgroup v2 is not mounted"); n != 1 {
			t.Errorf("warned %d times:\n%s", n, logs.String())
		}
	})
}

// checkJail checks what the process backend promises of a sandbox's
// process: its own session, namespaces, clean environment, output to a
// file and stdin from /dev/null.
func checkJail(t *testing.T, pid int, spec Spec) {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := bytes.Fields(stat[bytes.LastIndexByte(stat, ')')+1:])
	if sid := string(fields[3]); sid != strconv.Itoa(pid) { // field 6: session
		t.Errorf("session %s, want its own (%d)", sid, pid)
	}
	for _, ns := range []string{"mnt", "ipc", "uts", "net"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err != nil || its == mine {
			t.Errorf("%s namespace %s %v: shared with kindlingd", ns, its, err)
		}
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.Split(strings.TrimRight(string(env), "\x00"), "\x00")
	want := append(append([]string{}, sandboxBaseEnv...), spec.Env...)
	if strings.Join(vars, " ") != strings.Join(want, " ") {
		t.Errorf("environment %q, want %q", vars, want)
	}
	for fd, want := range map[int]string{0: "/dev/null", 1: filepath.Join(spec.Dir, "agent.log"), 2: filepath.Join(spec.Dir, "agent.log")} {
		if got, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); err != nil || got != want {
			t.Errorf("fd %d: %s %v, want %s", fd, got, err, want)
		}
	}
	if _, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err != nil {
		t.Fatal(err)
	}
}

// waitGone waits for the process pid started at start to end (exit, as a
// zombie or reaped).
func waitGone(pid int, start uint64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		st, s, err := procStat(pid)
		if err != nil || s != start || st == 'Z' {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// zombieRecord is a record of a process that has exited but is not yet
// reaped.
func zombieRecord(t *testing.T) Record {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Wait() })
	pid := cmd.Process.Pid
	for i := 0; i < 500; i++ {
		if st, start, err := procStat(pid); err == nil && st == 'Z' {
			return Record{ID: "z", Backend: BackendProcess, PID: pid, StartTime: start, Dir: t.TempDir(), Channel: filepath.Join(t.TempDir(), "z.sock")}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no zombie")
	return Record{}
}

// processesIn lists processes whose working directory is dir.
func processesIn(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd"); err == nil && cwd == dir {
			if st, _, err := procStat(pid); err == nil && st != 'Z' {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// cgroup2Root is a writable cgroup v2 hierarchy: /sys/fs/cgroup on a
// unified host, /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Root() string {
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC && unix.Access(p, unix.W_OK) == nil {
			return p
		}
	}
	return ""
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestParseProcStat(t *testing.T) {
	line := "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 12345 67 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
	st, start, err := parseProcStat([]byte(line))
	if err != nil || st != 'S' || start != 987654 {
		t.Fatalf("%c %d %v", st, start, err)
	}
	for _, bad := range []string{"", "1234 (x", "1234 (x) S 1 2", "1234 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 1"} {
		if _, _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if _, err := procStartTime(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func TestDescribeWait(t *testing.T) {
	for _, c := range []struct {
		cmd  string
		want string
	}{
		{"exit 3", "exited with status 3"},
		{"kill -9 $$", "killed by signal 9 (killed)"},
		{"kill -TERM $$", "killed by signal 15 (terminated)"},
		{"true", "exited with status 0"},
	} {
		cmd := exec.Command("sh", "-c", c.cmd)
		cmd.Run()
		if got := describeWait(cmd.ProcessState); got != c.want {
			t.Errorf("%s: %q, want %q", c.cmd, got, c.want)
		}
	}
	if describeWait(nil) != "exited" {
		t.Error("nil state")
	}
}

func TestListenAgentChecksPaths(t *testing.T) {
	dir := t.TempDir()
	if _, err := listenAgent(filepath.Join(dir, strings.Repeat("x", 120))); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("long path: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := listenAgent(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a regular file: %v", err)
	}
	// A stale socket is replaced.
	sock := filepath.Join(dir, "s.sock")
	ln, err := listenAgent(sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	ln, err = listenAgent(sock)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	ln.Close()
}
