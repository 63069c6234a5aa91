package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/agent/guestnet"
	"github.com/kindlingvm/kindling/internal/testnet"
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

// guestNetwork does nothing without kindling.net=, refuses a bad one, and
// configures the Ethernet interface (a veth standing in for virtio-net's
// eth0, in a scratch namespace; its peer in another) with the
// resolv.conf.
func TestGuestNetwork(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	resolv := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	if err := guestNetwork(log, "console=ttyS0 quiet\n", resolv); err != nil {
		t.Errorf("no kindling.net=: %v", err)
	}
	if err := guestNetwork(log, "kindling.net=172.16.0.2/30", resolv); err == nil || !strings.Contains(err.Error(), "gw=") {
		t.Errorf("no gateway: %v", err)
	}
	ns, host := testnet.New(t), testnet.New(t)
	var hostFd int
	if err := host.Do(func() (err error) {
		hostFd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(hostFd)
	c := guestnet.Default(netip.MustParseAddr("192.0.2.53"))
	err := ns.Do(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "host0", PeerNamespace: netlink.NsFd(hostFd)}); err != nil {
			return err
		}
		if err := guestNetwork(log, "console=ttyS0 "+c.CmdlineArg()+"\n", resolv); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, unix.AF_INET)
		if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != guestnet.Addr.String() || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("eth0: %v %v, flags %v", addrs, err, l.Attrs().Flags)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(resolv); err != nil || !strings.Contains(string(b), "nameserver 192.0.2.53\n") {
		t.Errorf("resolv.conf: %q %v", b, err)
	}
}
