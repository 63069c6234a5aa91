// Command kindling-vmm is the per-VM monitor process: it creates one microVM
// from a JSON config and serves its control API on a Unix socket until the
// VM stops, then exits (0 when the guest or host ended it on purpose).
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api"
	"github.com/kindlingvm/kindling/vmm/seccomp"
)

const usage = `usage: kindling-vmm --config FILE --api-sock PATH [--net TAP[,mac=MAC]]... [--start] [--id NAME] [--seccomp]
       kindling-vmm --restore DIR --api-sock PATH [--console C] [--disk F]... [--vsock-path P] [--net TAP]... [--prefetch] [--start] [--seccomp]

Runs one microVM. The VM is created from the JSON config (kernel, initrd,
cmdline, memory_mib, vcpus, disks, vsock, network_interfaces, console), or
restored from a snapshot directory (its memory mapped copy-on-write, so
many VMs can share it), and waits for PUT /vm/start on the API socket,
unless --start is given. The process exits when the VM
stops and a client has read its exit reason (or --linger has passed):
status 0 for a guest reset or power-off or a host stop, 1 for a guest
crash or VMM error, 2 for bad flags or config. With --seccomp, a system
call outside the VMM's allow-list kills the process with SIGSYS.

A network interface is a virtio-net device on a tap that must exist
already in this process's network namespace, persistent and owned by its
uid (ip tuntap add dev TAP mode tap user UID); the VMM attaches to it
and never creates or configures it. Its guest MAC defaults to
06:00:ac:10:N:02 for interface N. --net adds one after the config's; with
--restore it moves the snapshot's next interface to another tap.

API (HTTP/1.1 + JSON; try curl --unix-socket PATH http://vmm/vm):
  GET /vm[?wait=stopped]   state and exit reason
  PUT /vm/start | /vm/pause | /vm/resume | /vm/stop
  PUT /vm/snapshot    {"dir": "/path", "kind": "full"|"diff"}   (VM paused)
  PUT /vm/workingset  {"dir": "/path"}   (record the pages touched since the restore)
  GET /metrics
`

func main() {
	fs := flag.NewFlagSet("kindling-vmm", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	cfgPath := fs.String("config", "", "VM config `file` (JSON)")
	restore := fs.String("restore", "", "restore the snapshot in `dir` instead of booting from a config")
	console := fs.String("console", "", "with --restore: where the console goes (stdout, none or a file), overriding the snapshot's")
	prefetch := fs.Bool("prefetch", false, "with --restore: populate the snapshot's recorded working set before the VM runs")
	var disks diskList
	fs.Var(&disks, "disk", "with --restore: host `path` of the snapshot's next disk (repeat once per disk, in order; FILE:ro for read-only)")
	vsockPath := fs.String("vsock-path", "", "with --restore: Unix socket `path` for the snapshot's vsock device, overriding its own")
	var nets netList
	fs.Var(&nets, "net", "virtio-net device on the existing tap `TAP[,mac=MAC]` (repeatable): with --config, added after the config's network_interfaces; with --restore, the tap for the snapshot's next interface (repeat once per interface, in order)")
	sock := fs.String("api-sock", "", "control socket `path`")
	start := fs.Bool("start", false, "boot at once instead of waiting for PUT /vm/start")
	id := fs.String("id", "", "VM `name` used in logs")
	verbose := fs.Bool("v", false, "log at debug level")
	linger := fs.Duration("linger", api.DefaultLinger, "after the VM stops, keep the API up this long for a client to read the exit reason")
	filter := fs.Bool("seccomp", false, "once the VM is built, confine this process to the VMM's system-call allow-list (others kill it with SIGSYS)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if (*cfgPath == "") == (*restore == "") || *sock == "" {
		fmt.Fprintln(os.Stderr, "kindling-vmm: --api-sock and one of --config or --restore are required (see --help)")
		os.Exit(2)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	create := func() (*vmm.Machine, error) {
		if *restore != "" {
			return vmm.Restore(*restore, vmm.RestoreOverrides{Console: *console, Prefetch: *prefetch, Disks: disks, VsockPath: *vsockPath, Net: nets},
				vmm.Options{Logger: log, ID: *id})
		}
		cfg, err := vmm.LoadConfig(*cfgPath)
		if err != nil {
			return nil, err
		}
		cfg.Net = append(cfg.Net, nets...)
		return vmm.New(*cfg, vmm.Options{Logger: log, ID: *id})
	}
	os.Exit(run(create, *sock, *start, *filter, *linger, log))
}

// diskList collects repeated --disk PATH[:ro] overrides.
type diskList []vmm.Disk

func (d *diskList) String() string { return "" }

func (d *diskList) Set(v string) error {
	*d = append(*d, vmm.ParseDisk(v))
	return nil
}

// netList collects repeated --net TAP[,mac=MAC] flags.
type netList []vmm.NetIface

func (n *netList) String() string { return "" }

func (n *netList) Set(v string) error {
	iface, err := vmm.ParseNetIface(v)
	if err != nil {
		return err
	}
	*n = append(*n, iface)
	return nil
}

func run(create func() (*vmm.Machine, error), sock string, start, filter bool, linger time.Duration, log *slog.Logger) int {
	l, err := api.Listen(sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kindling-vmm: %v\n", err)
		return 2
	}
	defer os.Remove(sock)
	m, err := create()
	if err != nil {
		l.Close()
		fmt.Fprintf(os.Stderr, "kindling-vmm: %v\n", err)
		return 2
	}
	defer m.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		m.Stop()
	}()
	// Everything is built (VM, memory, devices, sockets) and no vCPU has
	// entered KVM_RUN: from here on the process needs only the
	// allow-list.
	if filter {
		if err := seccomp.InstallVMM(); err != nil {
			fmt.Fprintf(os.Stderr, "kindling-vmm: %v\n", err)
			return 1
		}
		if os.Getenv(seccomp.SelfTestEnv) == "1" {
			err := seccomp.SelfTest()
			fmt.Fprintf(os.Stderr, "kindling-vmm: seccomp self-test: a denied call returned (%v)\n", err)
			return 1
		}
	}
	if start {
		if err := m.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "kindling-vmm: %v\n", err)
			return 1
		}
	}
	if err := api.Serve(m, l, log, linger); err != nil {
		fmt.Fprintf(os.Stderr, "kindling-vmm: api: %v\n", err)
		m.Stop()
	}
	r := m.Wait()
	if !r.Clean() {
		fmt.Fprintf(os.Stderr, "kindling-vmm: vm stopped: %s\n", r)
		return 1
	}
	return 0
}
