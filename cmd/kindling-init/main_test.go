package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/testtasks"
)

func TestDialerParsesChannels(t *testing.T) {
	for _, ok := range []string{"vsock:2:1024", "unix:/run/x.sock"} {
		if _, err := dialer(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "vsock:2", "vsock:x:1", "unix:", "tcp:1.2.3.4:5"} {
		if _, err := dialer(bad); err == nil || !strings.Contains(err.Error(), "vsock:CID:PORT or unix:PATH") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestRandPoolInfoLayout(t *testing.T) {
	b := randPoolInfo([]byte("0123456789abcdef"))
	if binary.NativeEndian.Uint32(b) != 128 || binary.NativeEndian.Uint32(b[4:]) != 16 || string(b[8:]) != "0123456789abcdef" {
		t.Fatalf("%v", b)
	}
}

// kindling-init as a host process: it connects to the host's socket, the
// host says hello and invokes, and after the connection drops (as after a
// snapshot restore) it reconnects to the same, still warm, task.
func TestInitServesAndReconnects(t *testing.T) {
	dir := t.TempDir()
	initBin := filepath.Join(dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", initBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	task, err := testtasks.Build(dir, testtasks.GoLambda)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "host.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(initBin, "--task", task, "--channel", "unix:"+sock, "--runtime-addr", "127.0.0.1:0")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for round := 0; round < 2; round++ {
		ln.(*net.UnixListener).SetDeadline(time.Now().Add(30 * time.Second))
		conn, err := ln.Accept()
		if err != nil {
			t.Fatalf("round %d: kindling-init did not connect: %v", round, err)
		}
		c := guest.NewClient(conn)
		if err := c.Hello([]byte("seed")); err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			select {
			case <-c.Ready:
			case <-time.After(30 * time.Second):
				t.Fatal("the task never asked for an invocation")
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		f, err := c.Invoke(ctx, "id-"+string(rune('a'+round)), []byte(`{"op":"echo","text":"hi"}`), 10*time.Second)
		cancel()
		if err != nil || f.Type != guest.TypeResponse || !strings.Contains(string(f.Body), `"hi"`) {
			t.Fatalf("round %d: %v %s %s", round, err, f.Type, f.Body)
		}
		conn.Close()
	}
}

// With --sandbox, kindling-init runs as kindlingd's process backend runs
// it: in a network namespace of its own, whose loopback it must bring up
// for the Runtime API.
func TestSandboxBringsLoopbackUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: a new network namespace needs root")
	}
	dir := t.TempDir()
	initBin := filepath.Join(dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", initBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	task, err := testtasks.Build(dir, testtasks.GoLambda)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "host.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(initBin, "--sandbox", "--task", task, "--channel", "unix:"+sock, "--runtime-addr", "127.0.0.1:0")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatalf("kindling-init did not connect: %v", err)
	}
	defer conn.Close()
	c := guest.NewClient(conn)
	if err := c.Hello([]byte("seed")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Ready:
	case <-time.After(30 * time.Second):
		t.Fatal("the task never asked for an invocation")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := c.Invoke(ctx, "id-sandbox", []byte(`{"op":"echo","text":"namespaced"}`), 10*time.Second)
	if err != nil || f.Type != guest.TypeResponse || !strings.Contains(string(f.Body), "namespaced") {
		t.Fatalf("%v %s %s", err, f.Type, f.Body)
	}
	mine, _ := os.Readlink("/proc/self/ns/net")
	if its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)); its == mine {
		t.Fatal("kindling-init shares the test's network namespace")
	}
	// A loopback already up (the host's) is fine too.
	if err := loopbackUp(); err != nil {
		t.Errorf("loopback already up: %v", err)
	}
}
