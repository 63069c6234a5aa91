// Package testdaemon runs a real kindlingd for tests, benchmarks and the
// demo: it builds kindlingd, kindling-init and the aws-lambda-go test task,
// packs them into an image, starts kindlingd as a process and dials its
// socket.
package testdaemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/syncbuf"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/rootfs"
)

// Binaries are what a test daemon runs.
type Binaries struct {
	Dir       string
	Kindlingd string
	Init      string
	VMM       string
	Task      string
	// Image is an image of the aws-lambda-go test task (a placeholder
	// kernel: the process backend never boots it).
	Image       string
	ManifestSHA string
}

// Build builds everything into dir.
func Build(dir string) (*Binaries, error) {
	b := &Binaries{Dir: dir, Kindlingd: filepath.Join(dir, "kindlingd"), Init: filepath.Join(dir, "kindling-init"), VMM: filepath.Join(dir, "kindling-vmm")}
	// kindling-vmm and kindling-jailer beside kindlingd: the microVM
	// backend looks for them there.
	for pkg, out := range map[string]string{"./cmd/kindlingd": b.Kindlingd, "./cmd/kindling-init": b.Init, "./cmd/kindling-vmm": b.VMM,
		"./cmd/kindling-jailer": filepath.Join(dir, "kindling-jailer")} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = ModuleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %v\n%s", pkg, err, o)
		}
	}
	task, err := testtasks.Build(dir, testtasks.GoLambda)
	if err != nil {
		return nil, err
	}
	b.Task = task
	if b.Image, b.ManifestSHA, _, err = ProcessImage(dir, rootfs.ImageSpec{Init: b.Init, Task: b.Task}); err != nil {
		return nil, err
	}
	return b, nil
}

// ProcessImage builds spec into dir/image for the process backend, which
// boots no kernel: a placeholder stands in for one (dir/placeholder-kernel),
// uncompressed. It returns the image, its manifest's digest and the
// manifest.
func ProcessImage(dir string, spec rootfs.ImageSpec) (img, sha string, m *rootfs.Manifest, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", nil, err
	}
	spec.Kernel = filepath.Join(dir, "placeholder-kernel")
	if err := os.WriteFile(spec.Kernel, []byte("the process backend does not boot a kernel\n"), 0o644); err != nil {
		return "", "", nil, err
	}
	spec.Codec = rootfs.CodecNone
	img = filepath.Join(dir, "image")
	if m, err = rootfs.BuildImage(spec, img); err != nil {
		return "", "", nil, err
	}
	sha, err = ManifestSHA(img)
	return img, sha, m, err
}

// ManifestSHA is the digest of an image's manifest.json.
func ManifestSHA(image string) (string, error) { return rootfs.ManifestDigest(image) }

// ModuleRoot is the repository's root, found from this source tree.
func ModuleRoot() string {
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return dir
}

// Daemon is a running kindlingd.
type Daemon struct {
	Cmd      *exec.Cmd
	StateDir string
	Socket   string
	Conn     *grpc.ClientConn
	API      api.KindlingClient
	// Log is kindlingd's stderr.
	Log    *syncbuf.Buffer
	exited chan struct{}
	err    error
}

// Start runs kindlingd with the process backend on stateDir (its socket
// inside it) plus args, and waits until its health service says SERVING.
func Start(b *Binaries, stateDir string, log io.Writer, args ...string) (*Daemon, error) {
	d := &Daemon{StateDir: stateDir, Socket: filepath.Join(stateDir, "kindlingd.sock"), Log: &syncbuf.Buffer{}, exited: make(chan struct{})}
	args = append([]string{"--state-dir", stateDir, "--socket", d.Socket, "--backend", "process"}, args...)
	d.Cmd = exec.Command(b.Kindlingd, args...)
	d.Cmd.Stderr = d.Log
	if log != nil {
		d.Cmd.Stderr = io.MultiWriter(d.Log, log)
	}
	if err := d.Cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.err = d.Cmd.Wait(); close(d.exited) }()
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		d.Kill()
		return nil, err
	}
	d.Conn, d.API = conn, api.NewKindlingClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.exited:
			return nil, fmt.Errorf("kindlingd exited before serving: %v\n%s", d.err, d.Log)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.Status == healthpb.HealthCheckResponse_SERVING {
			return d, nil
		}
		if time.Now().After(deadline) {
			d.Kill()
			return nil, fmt.Errorf("kindlingd not serving after 30s: %v\n%s", err, d.Log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Exited is closed when kindlingd has exited.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// Kill SIGKILLs kindlingd (its sandboxes live on).
func (d *Daemon) Kill() {
	d.Cmd.Process.Kill()
	<-d.exited
	if d.Conn != nil {
		d.Conn.Close()
	}
}

// Terminate sends SIGTERM and waits for kindlingd to exit, returning its
// exit status.
func (d *Daemon) Terminate(timeout time.Duration) (int, error) {
	d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(timeout):
		d.Kill()
		return -1, errors.New("kindlingd did not exit after SIGTERM")
	}
	if d.Conn != nil {
		d.Conn.Close()
	}
	return d.Cmd.ProcessState.ExitCode(), nil
}

// KillSandboxes SIGKILLs the sandboxes kindlingd left running under
// stateDir (they outlive it by design): every process whose command line
// mentions stateDir, and every jailed kindling-vmm of one of its instances,
// whose command line names only paths inside its jail but carries
// "--id INSTANCE".
func KillSandboxes(stateDir string) int {
	var ids []string
	sandboxes, _ := os.ReadDir(filepath.Join(stateDir, "sandboxes"))
	for _, e := range sandboxes {
		ids = append(ids, "\x00--id\x00"+e.Name()+"\x00")
	}
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmdline := string(b)
		mine := strings.Contains(cmdline, stateDir)
		for _, id := range ids {
			mine = mine || strings.Contains(cmdline, id)
		}
		if mine && syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// Invoke runs a synchronous invocation and returns its result and the
// log lines ("stream: line") streamed before it.
func (d *Daemon) Invoke(ctx context.Context, req *api.InvokeRequest) (*api.Invocation, []string, error) {
	st, err := d.API.Invoke(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	var logs []string
	for {
		ev, err := st.Recv()
		if err != nil {
			return nil, logs, err
		}
		if l := ev.GetLog(); l != nil {
			logs = append(logs, l.Stream+": "+l.Line)
		}
		if r := ev.GetResult(); r != nil {
			return r, logs, nil
		}
	}
}
