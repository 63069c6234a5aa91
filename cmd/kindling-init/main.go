// Command kindling-init is /init in every Kindling task image: it sets up
// the guest (file systems, loopback), runs the guest agent for the task,
// and connects to the host over vsock, reconnecting whenever the
// connection drops (as it does after every snapshot restore). Run as a
// host process (--channel unix:PATH) it is the same agent without the
// guest set-up: the tests use that, and kindlingd's process sandbox
// backend runs it with --sandbox in fresh namespaces, where it only
// brings loopback up.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/u-root/u-root/pkg/libinit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/agent/guestnet"
	"github.com/kindlingvm/kindling/rootfs/taskconfig"
)

const usage = `usage: kindling-init [--task PATH] [--channel vsock:CID:PORT|unix:PATH] [--function NAME]
                     [--runtime-addr ADDR] [--sandbox]

As PID 1 in a microVM it mounts /proc, /sys, /dev and /tmp, brings up
loopback and, when the kernel command line has
kindling.net=ADDR/BITS,gw=GATEWAY[,dns=SERVER]..., the VM's Ethernet
interface with that address, a default route and /etc/resolv.conf; runs
the task with the Lambda Runtime API on 127.0.0.1:9001, and connects to
the host (default vsock:2:1024, i.e. the VMM's <uds>_1024).
On every connection the host's hello sets the clock and reseeds entropy
(as PID 1 only). If the agent stops, the VM reboots.

With --sandbox it is a host process under kindlingd's process backend, in
its own network namespace: it never acts as PID 1 (no mounts, clock,
entropy or reboot), only brings loopback up for the Runtime API, and exits
where PID 1 would reboot.
`

// DefaultPort is the host vsock port the agent connects to.
const DefaultPort = 1024

func main() {
	fs := flag.NewFlagSet("kindling-init", flag.ExitOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	task := fs.String("task", "/task", "the task `binary`")
	channel := fs.String("channel", "vsock:2:"+strconv.Itoa(DefaultPort), "how to reach the host: vsock:CID:PORT or unix:PATH")
	runtimeAddr := fs.String("runtime-addr", guest.DefaultRuntimeAddr, "Runtime API listen `address`")
	function := fs.String("function", "task", "function `name` reported to the task")
	sandbox := fs.Bool("sandbox", false, "run as a host process under kindlingd's process backend: never PID 1's duties, bring loopback up")
	fs.Parse(os.Args[1:])
	pid1 := !*sandbox && os.Getpid() == 1
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	err := run(log, pid1, *sandbox, *task, *channel, *runtimeAddr, *function)
	log.Error("kindling-init stopped", "error", err)
	if pid1 {
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	os.Exit(1)
}

func run(log *slog.Logger, pid1, sandbox bool, task, channel, runtimeAddr, function string) error {
	dial, err := dialer(channel)
	if err != nil {
		return err
	}
	var cmdline []byte
	if pid1 {
		if err := setupGuest(); err != nil {
			return err
		}
		if cmdline, err = os.ReadFile("/proc/cmdline"); err != nil {
			return fmt.Errorf("guest set-up: %w", err)
		}
		// A task that needs no network still runs without one: a
		// failure is logged, not fatal (rebooting would only repeat it).
		if err := guestNetwork(log, string(cmdline), "/etc/resolv.conf"); err != nil {
			log.Error("guest network not configured; the task has loopback only", "error", err)
		}
	}
	if sandbox {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	cfg, err := taskConfig(task, runtimeAddr, function, sandbox, log)
	if err != nil {
		return err
	}
	if pid1 {
		cfg.OnHello = hello
		cfg.SnapStart = hasArg(string(cmdline), guest.SnapStartArg)
	}
	a, err := guest.New(cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx := context.Background()
	go a.Run(ctx)
	backoff := 10 * time.Millisecond
	for {
		conn, err := dial()
		if err != nil {
			log.Debug("connect to host", "channel", channel, "error", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		err = a.Serve(ctx, conn)
		conn.Close()
		log.Info("host connection ended; reconnecting", "error", err)
	}
}

// taskConfig is the agent's configuration for the image's task: its
// arguments, environment, profiling and compile cache from the image's
// taskconfig.Config beside it (paths resolved against the image root, "/"
// in a VM, the extracted rootfs under the process backend).
//
// Under the process backend every sandbox of an image runs from one
// extracted root, so the compile cache is copied into the sandbox's own
// directory (the working directory kindlingd gives it): no sandbox writes
// what another reads.
func taskConfig(task, runtimeAddr, function string, sandbox bool, log *slog.Logger) (guest.Config, error) {
	root := filepath.Dir(task)
	tc, err := taskconfig.Read(root)
	if err != nil {
		return guest.Config{}, fmt.Errorf("task config: %w", err)
	}
	cfg := guest.Config{Task: []string{task}, RuntimeAddr: runtimeAddr, FunctionName: function, Logger: log}
	for _, a := range tc.Args {
		cfg.Task = append(cfg.Task, taskconfig.Resolve(root, a))
	}
	for _, e := range tc.Env {
		cfg.Env = append(cfg.Env, taskconfig.Resolve(root, e))
	}
	if tc.CompileCache != "" {
		cfg.CompileCache = taskconfig.Resolve(root, taskconfig.RootPlaceholder+tc.CompileCache)
		if sandbox {
			wd, err := os.Getwd()
			if err != nil {
				return cfg, fmt.Errorf("compile cache: %w", err)
			}
			own := filepath.Join(wd, "compile-cache")
			if err := os.CopyFS(own, os.DirFS(cfg.CompileCache)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return cfg, fmt.Errorf("compile cache: copy %s: %w", cfg.CompileCache, err)
			}
			cfg.CompileCache = own
		}
		if err := os.MkdirAll(cfg.CompileCache, 0o755); err != nil {
			return cfg, fmt.Errorf("compile cache: %w", err)
		}
	}
	if tc.Profiling {
		cfg.StartProfiled = startProfiled(task, log)
	}
	return cfg, nil
}

// hasArg reports whether the kernel command line has the word arg.
func hasArg(cmdline, arg string) bool {
	return slices.Contains(strings.Fields(cmdline), arg)
}

// dialer parses --channel.
func dialer(channel string) (func() (net.Conn, error), error) {
	kind, rest, _ := strings.Cut(channel, ":")
	switch kind {
	case "unix":
		if rest == "" {
			break
		}
		return func() (net.Conn, error) { return net.Dial("unix", rest) }, nil
	case "vsock":
		cidS, portS, ok := strings.Cut(rest, ":")
		cid, err1 := strconv.ParseUint(cidS, 10, 32)
		port, err2 := strconv.ParseUint(portS, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			break
		}
		return func() (net.Conn, error) { return dialVsock(uint32(cid), uint32(port)) }, nil
	}
	return nil, fmt.Errorf("--channel %q: want vsock:CID:PORT or unix:PATH", channel)
}

func dialVsock(cid, port uint32) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock connect %d:%d: %w", cid, port, err)
	}
	f := os.NewFile(uintptr(fd), "vsock")
	defer f.Close()
	return net.FileConn(f)
}

// setupGuest mounts what a task expects and brings up loopback (the
// Runtime API listens on it), with u-root's libinit.
func setupGuest() error {
	for _, c := range []libinit.Creator{
		libinit.Dir{Name: "/proc", Mode: 0o555},
		libinit.Mount{Source: "proc", Target: "/proc", FSType: "proc"},
		libinit.Dir{Name: "/sys", Mode: 0o555},
		libinit.Mount{Source: "sysfs", Target: "/sys", FSType: "sysfs"},
		libinit.Dir{Name: "/dev", Mode: 0o755},
		libinit.Mount{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs"},
		libinit.Dir{Name: "/tmp", Mode: 0o1777},
		libinit.Mount{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs"},
	} {
		if err := c.Create(); err != nil && !errors.Is(err, unix.EBUSY) && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("guest set-up: %v: %w", c, err)
		}
	}
	libinit.NetInit()
	return nil
}

// guestNetwork configures the VM's network from kindling.net= in
// cmdline, if it is there (package guestnet): a VM without it has
// loopback only. A resolv.conf that cannot be written (a read-only root)
// is logged and skipped.
func guestNetwork(log *slog.Logger, cmdline, resolvConf string) error {
	c, err := guestnet.ParseCmdline(cmdline)
	if errors.Is(err, guestnet.ErrNoConfig) {
		return nil
	}
	if err != nil {
		return err
	}
	name, err := guestnet.Apply(c)
	if err != nil {
		return err
	}
	log.Info("guest network up", "interface", name, "address", c.Addr, "gateway", c.Gateway, "dns", c.DNS)
	if err := guestnet.WriteResolvConf(c, resolvConf); err != nil {
		log.Warn("name servers not written; lookups will fail", "error", err)
	}
	return nil
}

// loopbackUp brings up lo, which a new network namespace starts with
// down: the Runtime API listens on it.
func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// hello sets the clock to the host's and mixes the host's seed into the
// kernel's entropy pool, crediting it: two VMs restored from one snapshot
// must not share random state.
func hello(f guest.Frame) error {
	if f.TimeNs > 0 {
		ts := unix.NsecToTimespec(f.TimeNs)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return fmt.Errorf("set clock: %w", err)
		}
	}
	if len(f.Body) == 0 {
		return nil
	}
	return reseed(f.Body)
}

// reseed is ioctl(RNDADDENTROPY) with struct rand_pool_info {int
// entropy_count; int buf_size; __u32 buf[];}.
func reseed(seed []byte) error {
	info := randPoolInfo(seed)
	fd, err := unix.Open("/dev/urandom", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("reseed: %w", err)
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return fmt.Errorf("reseed: RNDADDENTROPY: %w", errno)
	}
	return nil
}

func randPoolInfo(seed []byte) []byte {
	b := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(b[0:], uint32(8*len(seed))) // bits credited
	binary.NativeEndian.PutUint32(b[4:], uint32(len(seed)))
	copy(b[8:], seed)
	return b
}
