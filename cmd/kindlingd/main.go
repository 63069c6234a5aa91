// Command kindlingd is the Kindling host agent: the daemon a control
// plane drives over gRPC to register functions and invoke them in
// microVMs (or, where KVM cannot run a guest's user space, in jailed host
// processes). It runs under systemd (deploy/systemd/kindlingd.service).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/agent/host"
	"github.com/kindlingvm/kindling/agent/hostnet"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

const usage = `usage: kindlingd [flags]

Serves the Kindling control-plane API (gRPC, agent/api/kindling.proto) on a
Unix socket, and on TCP only with mutual TLS. State (functions, accepted
asynchronous invocations, live sandboxes, warm snapshots) lives under
--state-dir and survives restarts: a restarted kindlingd reattaches to the
sandboxes it left running and finishes what it had accepted.

On SIGTERM it stops accepting work, lets running invocations finish (up to
--drain-timeout) and exits, leaving sandboxes for the next start.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("kindlingd", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	stateDir := fs.String("state-dir", "/var/lib/kindling", "state `dir`: the store, sandboxes, images and snapshots")
	socket := fs.String("socket", "/run/kindling/kindlingd.sock", "Unix socket `path` to serve on (mode 0660; empty: none)")
	socketGroup := fs.String("socket-group", "", "`group` that owns the socket (its members may drive kindlingd)")
	listen := fs.String("listen", "", "also serve TCP on `host:port`, with mutual TLS only")
	tlsCert := fs.String("tls-cert", "", "server certificate `file` (PEM) for --listen")
	tlsKey := fs.String("tls-key", "", "server key `file` (PEM) for --listen")
	tlsCA := fs.String("tls-client-ca", "", "CA `file` (PEM) that client certificates must chain to")
	metrics := fs.String("metrics-addr", "", "serve Prometheus metrics at http://`host:port`/metrics")
	backend := fs.String("backend", "auto", "sandbox `backend`: auto (microvm where guest user space runs, else process), microvm or process")
	maxInstances := fs.Int("max-instances", 512, "sandboxes this host runs at most")
	drain := fs.Duration("drain-timeout", 60*time.Second, "how long SIGTERM waits for running invocations")
	retention := fs.Duration("retention", 24*time.Hour, "how long finished invocations stay retrievable")
	cgroup := fs.String("cgroup-parent", "/sys/fs/cgroup/kindling", "cgroup v2 `dir` under which sandboxes get their own cgroups (empty: none)")
	standby := fs.Int("standby-restores", 1, "per function version with a warm snapshot, keep this many microVMs restored but not started, so a new tenant's restore skips launching a VMM (0: none)")
	prefetch := fs.Bool("prefetch", true, "restore microVMs with their snapshot's working set (recorded on the first restore) loaded up front")
	dns := fs.String("dns", "", "comma-separated resolver `addresses` egress guests are told of (default: this host's /etc/resolv.conf nameservers that are not loopback)")
	logJSON := fs.Bool("log-json", false, "log JSON lines instead of text")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kindlingd: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if *logJSON {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(h)
	bo := host.BackendOptions{StateDir: *stateDir, CgroupParent: *cgroup, NoPrefetch: !*prefetch, Logger: log}
	var err error
	if bo.DNS, err = resolvers(*dns); err != nil {
		fmt.Fprintf(os.Stderr, "kindlingd: --dns: %v\n", err)
		return 2
	}
	if *standby < 0 {
		fmt.Fprintf(os.Stderr, "kindlingd: --standby-restores %d: want 0 or more\n", *standby)
		return 2
	}
	if err := serve(log, bo, *backend, host.Config{MaxInstances: *maxInstances, Retention: *retention, StandbyRestores: *standby}, host.Listen{
		Socket: *socket, SocketGroup: *socketGroup, TCP: *listen, TLSCert: *tlsCert, TLSKey: *tlsKey, TLSClientCA: *tlsCA,
		MetricsAddr: *metrics, DrainTimeout: *drain,
	}); err != nil {
		log.Error("kindlingd stopped", "error", err)
		fmt.Fprintln(os.Stderr, "kindlingd:", err)
		return 1
	}
	return 0
}

// serve runs kindlingd; cfg carries the flags' limits, serve fills in the
// rest.
func serve(log *slog.Logger, bo host.BackendOptions, backendFlag string, cfg host.Config, listen host.Listen) error {
	stateDir := bo.StateDir
	report, err := hostcheck.Run()
	if err != nil {
		return fmt.Errorf("host check: %w", err)
	}
	name, reason, err := host.ChooseBackend(backendFlag, report)
	if err != nil {
		return err
	}
	// Network egress for the functions that ask for it: the namespaces,
	// veths, taps and NAT rules are made per sandbox, and nothing on the
	// host changes until the first one.
	if h, err := hostnet.NewHost(hostnet.HostConfig{}); err != nil {
		cfg.NetReason = err.Error()
		log.Warn("functions with network egress will be refused", "error", err)
	} else {
		defer h.Close()
		bo.Net, cfg.Net = h, h
	}
	backends := host.Backends(bo)
	cfg.StateDir, cfg.Backend, cfg.BackendReason, cfg.Backends = stateDir, backends[name], reason, backends
	cfg.Host, cfg.Version, cfg.Logger = report, version(), log
	d, err := host.New(cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	srv, err := host.NewServer(d, listen)
	if err != nil {
		return err
	}
	log.Info("kindlingd serving", "backend", name, "why", reason, "isolation_grade", backends[name].IsolationGrade(),
		"addrs", strings.Join(srv.Addrs(), " "), "state_dir", stateDir, "metrics", srv.MetricsAddr(), "version", version())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = srv.Serve(ctx)
	log.Info("kindlingd stopped serving")
	return err
}

// version is the module version or VCS revision kindlingd was built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v = s.Value[:12]
		}
		if s.Key == "vcs.modified" && s.Value == "true" {
			v += "+dirty"
		}
	}
	return v
}

// resolvers parses --dns, or finds the host's own resolvers: those in
// /etc/resolv.conf a guest can reach (not loopback, which in a sandbox is
// its own).
func resolvers(flagValue string) ([]netip.Addr, error) {
	var out []netip.Addr
	if flagValue != "" {
		for _, s := range strings.Split(flagValue, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("%q is not an IPv4 address", s)
			}
			out = append(out, a)
		}
		return out, nil
	}
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return nil, nil // none: guests get no resolver
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() && !a.IsLoopback() {
				out = append(out, a)
			}
		}
	}
	return out, nil
}
