package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/agent/guestnet"
	"github.com/kindlingvm/kindling/agent/hostnet"
	"github.com/kindlingvm/kindling/snapshot"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api/client"
	"github.com/kindlingvm/kindling/vmm/jail"
	"github.com/kindlingvm/kindling/vmm/launch"
	"github.com/kindlingvm/kindling/vmm/seccomp"
)

// The microVM backend runs each sandbox in its own kindling-vmm process:
// the image's kernel and initramfs, kindling-init as PID 1, the guest
// agent reached over virtio-vsock (the VMM's <uds>_1024 socket, on which
// kindlingd listens). It is isolation-grade, and snapshots.
//
// Each kindling-vmm runs jailed (package jail, as Firecracker's jailer
// runs firecracker) and under its seccomp filter: its own namespaces, a
// root holding only its kernel and initrd or snapshot, /dev/kvm and its
// /run (the sandbox's Dir/run, where its API and vsock sockets are), a
// uid of its own (jail.UniqueID of the sandbox ID) and the group all
// kindling jails share (microVMJailGID), which may read the snapshots
// kindlingd keeps. MicroVMOptions.NoJail runs it unconfined instead, for
// debugging.

const (
	// microVMGuestCID is every sandbox VM's vsock CID: each VM has its
	// own vsock device, so they need not differ.
	microVMGuestCID = 3
	// agentVsockPort is the host port kindling-init dials
	// (cmd/kindling-init DefaultPort).
	agentVsockPort = 1024
	// microVMVsock is the VMM's vsock socket in the sandbox's run
	// directory (Dir/run, the jail's /run); the agent's connections
	// arrive on microVMVsock_1024 there.
	microVMVsock = "vsock"
	// vmmMemoryOverheadMiB is what a VMM needs beyond its guest's memory
	// (the Go runtime, device queues, the API server), for memory.max.
	vmmMemoryOverheadMiB = 64
	// vmmPidsMax is a jailed VMM's pids.max: one thread per vCPU plus the
	// Go runtime's, with room.
	vmmPidsMax = 64
	// cpuPeriod is cpu.max's period in microseconds (the kernel's
	// default); each vCPU gets a whole one.
	cpuPeriod = 100000
	// jailSnapshotDir is where a jailed VMM cuts a snapshot, in its
	// writable /run; kindlingd moves it out.
	jailSnapshotDir = "snapshot"
	// Defaults for a spec that leaves them unset.
	defaultMicroVMMemoryMiB = 256
	defaultMicroVMVCPUs     = 1
	// vmmStopWait bounds a VMM's orderly stop through its API before it
	// is killed.
	vmmStopWait = 2 * time.Second
)

// microVMJailGID is the group every jailed VMM runs as: kindlingd's
// snapshots are root's and readable by it, so that any jail may restore
// them. It is in jail.UniqueID's range, apart from the uids by name.
var microVMJailGID = jail.UniqueID("kindling-vmm-jails")

// MicroVMOptions configure a MicroVMBackend.
type MicroVMOptions struct {
	// VMM is the kindling-vmm binary; default: launch.FindBinary.
	VMM string
	// Jailer is the kindling-jailer binary; default: launch.FindJailer
	// (next to the running executable, then $PATH).
	Jailer string
	// NoJail runs each kindling-vmm unjailed and without its seccomp
	// filter: for debugging, never for untrusted code.
	NoJail bool
	// CgroupParent, when set, is a cgroup v2 directory (absolute, or
	// relative to /sys/fs/cgroup) under which each jailed VMM gets its
	// own cgroup with memory.max, cpu.max and pids.max. Where cgroup v2
	// with those controllers is not available, VMMs run without one and
	// the backend warns once.
	CgroupParent string
	// Net makes egress sandboxes' network namespaces and taps; nil
	// refuses them. DNS are the resolvers their guests are told of.
	Net *hostnet.Host
	DNS []netip.Addr
	// NoPrefetch restores without populating the snapshot's recorded
	// working set first (each page then faults in when the guest first
	// touches it).
	NoPrefetch bool
	Logger     *slog.Logger

	// vmmEnv is the jailed VMM's environment, for tests (the seccomp
	// self-test).
	vmmEnv []string
}

// MicroVMBackend starts sandboxes as microVMs, one kindling-vmm process
// each, detached from kindlingd so that they outlive it.
type MicroVMBackend struct {
	opts       MicroVMOptions
	log        *slog.Logger
	cgroupWarn sync.Once
}

var _ Backend = (*MicroVMBackend)(nil)

// NewMicroVMBackend returns a microVM backend.
func NewMicroVMBackend(opts MicroVMOptions) *MicroVMBackend {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &MicroVMBackend{opts: opts, log: opts.Logger.With("backend", BackendMicroVM)}
}

// Name is BackendMicroVM.
func (b *MicroVMBackend) Name() string { return BackendMicroVM }

// IsolationGrade is true: each sandbox is a VM.
func (b *MicroVMBackend) IsolationGrade() bool { return true }

// CanSnapshot is true.
func (b *MicroVMBackend) CanSnapshot() bool { return true }

// vmConfig is the VM a spec describes. restore leaves out what a snapshot
// carries (the kernel, memory, vCPUs, CPU template).
func vmConfig(spec Spec, restore bool) vmm.Config {
	uds := filepath.Join(runDir(spec.Dir), microVMVsock)
	cfg := vmm.Config{Console: "none", Vsock: &vmm.Vsock{GuestCID: microVMGuestCID, Path: uds}}
	if restore {
		return cfg
	}
	m := spec.Manifest
	cfg.Kernel = filepath.Join(spec.Image, m.Kernel.Name)
	cfg.Initrd = filepath.Join(spec.Image, m.Initramfs.Name)
	cfg.Cmdline = m.Cmdline
	cfg.MemoryMiB = uint64(spec.MemoryMiB)
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = defaultMicroVMMemoryMiB
	}
	cfg.VCPUs = spec.VCPUs
	if cfg.VCPUs == 0 {
		cfg.VCPUs = defaultMicroVMVCPUs
	}
	cfg.CPUTemplate = spec.CPUTemplate
	if cfg.CPUTemplate == nil {
		cfg.CPUTemplate = m.CPUTemplate
	}
	if spec.SnapStart {
		cfg.Cmdline = strings.TrimSpace(cfg.Cmdline + " " + guest.SnapStartArg)
	}
	return cfg
}

// runDir is a sandbox's Dir/run: the jail's /run, where the VMM's
// sockets are (unjailed too, so that the layout is one).
func runDir(dir string) string { return filepath.Join(dir, jail.RunName) }

// agentChannel is where the agent's vsock connections to the host arrive.
func agentChannel(dir string) string {
	return fmt.Sprintf("%s_%d", filepath.Join(runDir(dir), microVMVsock), agentVsockPort)
}

// jailedDir reports whether a sandbox directory is a jail's (a jailer
// ran there).
func jailedDir(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, jail.StatusName))
	return err == nil
}

// jailSpec is the jail for spec's VMM; launch adds the VMM, its config
// and the files they name.
func (b *MicroVMBackend) jailSpec(spec Spec) *jail.Spec {
	js := &jail.Spec{
		ID:       spec.ID,
		UID:      jail.UniqueID(spec.ID),
		GID:      microVMJailGID,
		ReadOnly: jail.KVMModuleBinds(), // so that the VMM knows its host kind
		Devices:  []string{"/dev/kvm"},
		Proc:     true, // for a working set's /proc/self/pagemap
		Env:      b.opts.vmmEnv,
	}
	js.Cgroup = b.cgroup(spec)
	return js
}

// cgroup is the VMM's cgroup, or nil where cgroup v2 with the memory,
// cpu and pids controllers is not there (warned about once).
func (b *MicroVMBackend) cgroup(spec Spec) *jail.Cgroup {
	if b.opts.CgroupParent == "" {
		return nil
	}
	parent := b.opts.CgroupParent
	if !filepath.IsAbs(parent) {
		parent = filepath.Join(cgroupRoot, parent)
	}
	mem := spec.MemoryMiB
	if mem == 0 {
		mem = defaultMicroVMMemoryMiB
	}
	vcpus := spec.VCPUs
	if vcpus == 0 {
		vcpus = defaultMicroVMVCPUs
	}
	c := &jail.Cgroup{Parent: parent, MemoryMax: int64(mem+vmmMemoryOverheadMiB) << 20,
		CPUMax: fmt.Sprintf("%d %d", vcpus*cpuPeriod, cpuPeriod), PidsMax: vmmPidsMax}
	if err := jail.CheckCgroupV2(c); err != nil {
		b.cgroupWarn.Do(func() {
			b.log.Warn("microVMs run without cgroup limits", "error", err)
		})
		return nil
	}
	return c
}

// Boot starts a VM from the image and returns once its task has asked for
// its first invocation. ctx bounds the whole start (a cold boot of a real
// kernel: give it tens of seconds).
func (b *MicroVMBackend) Boot(ctx context.Context, spec Spec) (Sandbox, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	sb, c, err := b.start(ctx, spec, "", true)
	if err != nil {
		return nil, err
	}
	if err := sb.link.ready(ctx, c); err != nil {
		sb.abort()
		return nil, err
	}
	sb.log.Info("microVM sandbox booted", "pid", sb.rec.PID, "jailed", sb.jailed)
	return sb, nil
}

// Restore starts a VM from a snapshot cut by Snapshot and returns once the
// guest agent has reconnected and been greeted (the hello fixes its clock
// and reseeds its entropy). The snapshot's task is already waiting for an
// invocation, so there is no ready wait.
func (b *MicroVMBackend) Restore(ctx context.Context, spec Spec, snapshot string) (Sandbox, error) {
	if err := checkRestore(spec, snapshot); err != nil {
		return nil, err
	}
	sb, c, err := b.start(ctx, spec, snapshot, true)
	if err != nil {
		return nil, err
	}
	if err := sb.awaitRestored(ctx, c); err != nil {
		sb.abort()
		return nil, err
	}
	sb.log.Info("microVM sandbox restored", "pid", sb.rec.PID, "snapshot", snapshot, "jailed", sb.jailed)
	return sb, nil
}

// checkRestore refuses a restore with nothing to restore, or nowhere.
func checkRestore(spec Spec, snapshot string) error {
	if spec.ID == "" || spec.Dir == "" {
		return fmt.Errorf("sandbox %q: no ID or directory", spec.ID)
	}
	if snapshot == "" {
		return fmt.Errorf("sandbox %s: no snapshot to restore", spec.ID)
	}
	return nil
}

// PrepareRestore restores a VM from a snapshot in a new jailed VMM and
// leaves it before its first instruction: starting it later costs the
// VMM's start call and the agent's handshake, not a VMM's launch (the
// jail, the process, KVM's VM and memory slot set-up).
func (b *MicroVMBackend) PrepareRestore(ctx context.Context, spec Spec, snapshot string) (Standby, error) {
	if err := checkRestore(spec, snapshot); err != nil {
		return nil, err
	}
	sb, _, err := b.start(ctx, spec, snapshot, false)
	if err != nil {
		return nil, err
	}
	sb.log.Debug("microVM sandbox restored on standby", "pid", sb.rec.PID, "snapshot", snapshot, "jailed", sb.jailed)
	return &microVMStandby{sb: sb}, nil
}

// microVMStandby is a restored VM that has not run yet.
type microVMStandby struct{ sb *microVMSandbox }

func (p *microVMStandby) Record() Record          { return p.sb.rec }
func (p *microVMStandby) Exited() <-chan struct{} { return p.sb.end.done }

// Start runs the VM and returns its sandbox once the guest agent has
// reconnected and been greeted.
func (p *microVMStandby) Start(ctx context.Context) (Sandbox, error) {
	sb := p.sb
	if err := sb.api.Start(ctx); err != nil {
		sb.abort()
		return nil, fmt.Errorf("sandbox %s: start the standby VM: %w", sb.id, err)
	}
	c, err := sb.link.connected(ctx, 0)
	if err != nil {
		sb.abort()
		return nil, fmt.Errorf("%w%s", err, logTail(filepath.Join(sb.dir, launch.DetachedStderr)))
	}
	if err := sb.awaitRestored(ctx, c); err != nil {
		sb.abort()
		return nil, err
	}
	return sb, nil
}

// awaitRestored waits, in a restore of a checkpointed snapshot, for the
// task's after-restore hooks (bounded by the spec's CheckpointTimeout).
func (s *microVMSandbox) awaitRestored(ctx context.Context, c *guest.Client) error {
	if s.restoreWait <= 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.restoreWait)
	defer cancel()
	return s.link.restored(rctx, c)
}

// Discard stops the VM unstarted.
func (p *microVMStandby) Discard(ctx context.Context) error { return p.sb.Stop(ctx) }

// start listens for the agent, launches the VMM (booting, or restoring
// snapshot) and waits for the agent's connection. Jailed, a directory a
// jailer used before (a crash left it) is cleaned and made anew, never
// reused.
//
// With run false the VM is left unstarted (PrepareRestore) and start
// returns at once, with no client.
func (b *MicroVMBackend) start(ctx context.Context, spec Spec, snapshot string, run bool) (*microVMSandbox, *guest.Client, error) {
	jailed := !b.opts.NoJail
	var js *jail.Spec
	if jailed {
		if jailedDir(spec.Dir) || exists(filepath.Join(spec.Dir, jail.RootName)) {
			b.log.Warn("cleaning a jail directory left over from an earlier VMM", "sandbox", spec.ID, "dir", spec.Dir)
			if err := jail.Clean(spec.Dir); err != nil {
				return nil, nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
			}
		}
		js = b.jailSpec(spec)
	}
	if err := os.MkdirAll(runDir(spec.Dir), 0o700); err != nil {
		return nil, nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	cfg := vmConfig(spec, snapshot != "")
	var netw *hostnet.Sandbox
	if spec.Egress {
		if !jailed {
			return nil, nil, fmt.Errorf("sandbox %s: network egress needs the jail (its tap lives in the jail's network namespace)", spec.ID)
		}
		var err error
		if netw, err = setupNet(b.opts.Net, spec, js.UID, js.GID); err != nil {
			return nil, nil, err
		}
		js.NetNS = netw.NetNSPath()
		js.Devices = append(js.Devices, "/dev/net/tun")
		if snapshot == "" {
			// A snapshot keeps both: every sandbox's namespace has the
			// same tap name and guest addressing.
			cfg.Net = []vmm.NetIface{{Tap: hostnet.TapName, GuestMAC: guestnet.MAC.String()}}
			cfg.Cmdline = strings.TrimSpace(cfg.Cmdline + " " + guestnet.Default(b.opts.DNS...).CmdlineArg())
		}
	}
	ch := agentChannel(spec.Dir)
	ln, err := listenAgent(ch)
	if err != nil {
		closeNet(netw, b.log)
		return nil, nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	if jailed {
		// The jailed VMM connects to it for the guest's connections.
		if err := os.Chown(ch, js.UID, js.GID); err != nil {
			ln.Close()
			closeNet(netw, b.log)
			return nil, nil, fmt.Errorf("sandbox %s: agent socket: %w", spec.ID, err)
		}
	}
	t0 := time.Now()
	p, err := launch.Start(ctx, cfg, launch.Options{Binary: b.opts.VMM, Dir: spec.Dir, ID: spec.ID,
		Start: run, Restore: snapshot, Prefetch: snapshot != "" && !b.opts.NoPrefetch, Detach: true, Seccomp: jailed, Jail: js, Jailer: b.opts.Jailer})
	if err != nil {
		ln.Close()
		closeNet(netw, b.log)
		return nil, nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	pid := p.Cmd.Process.Pid
	sb := &microVMSandbox{id: spec.ID, dir: spec.Dir, jailed: jailed, api: p.Client, proc: p, net: netw, end: newProcEnd(), log: b.log.With("sandbox", spec.ID)}
	if snapshot != "" && exists(filepath.Join(snapshot, CheckpointMarker)) {
		sb.restoreWait = spec.CheckpointTimeout
		if sb.restoreWait <= 0 {
			sb.restoreWait = DefaultCheckpointTimeout
		}
	}
	sb.watchExit(p.Exited(), func() string { return seccomp.Describe(p.Cmd.ProcessState) })
	start, err := procStartTime(pid)
	if err != nil {
		sb.abort()
		return nil, nil, fmt.Errorf("sandbox %s: kindling-vmm ended at once: %v%s", spec.ID, err, logTail(filepath.Join(spec.Dir, launch.DetachedStderr)))
	}
	sb.rec = Record{ID: spec.ID, Backend: BackendMicroVM, PID: pid, StartTime: start, Dir: spec.Dir, Channel: ch, APISock: p.Sock}
	if netw != nil {
		sb.rec.Network = string(hostnet.Egress)
	}
	tLaunched := time.Now()
	sb.link = newAgentLink(spec.ID, sb.log, ln, sb.end)
	if !run {
		return sb, nil, nil
	}
	c, err := sb.link.connected(ctx, 0)
	if err != nil {
		sb.abort()
		return nil, nil, fmt.Errorf("%w%s", err, logTail(filepath.Join(spec.Dir, launch.DetachedStderr)))
	}
	sb.log.Debug("microVM up", "launch", tLaunched.Sub(t0).Round(time.Microsecond), "agent", time.Since(tLaunched).Round(time.Microsecond))
	return sb, c, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// Reattach finds a VM a previous kindlingd started: its VMM must still be
// the recorded process (PID and start time) and answer on its API socket
// with the VM running (a VM left paused, by a kindlingd that died while
// snapshotting, is resumed), and its agent must reconnect within a few
// seconds. A VMM that is there but does not qualify is stopped.
func (b *MicroVMBackend) Reattach(ctx context.Context, rec Record) (Sandbox, error) {
	if rec.Backend != "" && rec.Backend != BackendMicroVM {
		return nil, fmt.Errorf("sandbox %s: a %s sandbox, not a microVM", rec.ID, rec.Backend)
	}
	if rec.APISock == "" {
		return nil, fmt.Errorf("sandbox %s: the record has no VMM API socket", rec.ID)
	}
	w, err := watchPID(rec.PID, rec.StartTime)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", rec.ID, err)
	}
	sb := &microVMSandbox{id: rec.ID, dir: rec.Dir, jailed: jailedDir(rec.Dir), rec: rec, api: client.New(rec.APISock), watch: w, end: newProcEnd(), log: b.log.With("sandbox", rec.ID)}
	sb.watchExit(w.end.done, func() string { return w.end.Reason() })
	fail := func(err error) (Sandbox, error) {
		sb.abort()
		return nil, fmt.Errorf("sandbox %s: reattach: %w; stopped it", rec.ID, err)
	}
	var err2 error
	if sb.net, err2 = reattachNet(b.opts.Net, rec); err2 != nil {
		return fail(err2)
	}
	sctx, cancel := context.WithTimeout(ctx, agentReconnectWait)
	st, err := sb.api.Status(sctx)
	cancel()
	switch {
	case err != nil:
		return fail(fmt.Errorf("its VMM does not answer: %w", err))
	case st.State == vmm.StatePaused:
		sb.log.Warn("reattached VM was paused; resuming it")
		if err := sb.api.Resume(ctx); err != nil {
			return fail(fmt.Errorf("resume: %w", err))
		}
	case st.State != vmm.StateRunning:
		return fail(fmt.Errorf("its VM is %s, not running", st.State))
	}
	ln, err := listenAgent(rec.Channel)
	if err != nil {
		return fail(err)
	}
	sb.link = newAgentLink(rec.ID, sb.log, ln, sb.end)
	if _, err := sb.link.connected(ctx, agentReconnectWait); err != nil {
		return fail(err)
	}
	sb.log.Info("microVM sandbox reattached", "pid", rec.PID, "jailed", sb.jailed)
	return sb, nil
}

// microVMSandbox is one VM.
type microVMSandbox struct {
	id     string
	dir    string
	jailed bool // its VMM runs in a jail whose directory is dir
	rec    Record
	log    *slog.Logger
	api    *client.Client
	proc   *launch.Process // our child; nil when reattached
	watch  *pidWatch       // a reattached VMM
	end    *procEnd
	gone   <-chan struct{} // closed when the VMM process has ended
	link   *agentLink
	net    *hostnet.Sandbox // nil without egress
	// restoreWait bounds the after-restore hooks of a restore of a
	// checkpointed snapshot (0: no wait).
	restoreWait time.Duration

	stopWatch context.CancelFunc // ends the long poll for the VM's stop
	stopOnce  sync.Once
	stopErr   error

	mu    sync.Mutex
	final string // the VM's exit reason, once known
}

func (s *microVMSandbox) Record() Record          { return s.rec }
func (s *microVMSandbox) agent() *agentLink       { return s.link }
func (s *microVMSandbox) Exited() <-chan struct{} { return s.end.done }
func (s *microVMSandbox) ExitReason() string      { return s.end.Reason() }

// watchExit sets the sandbox's end when the VMM process ends (exited),
// with the VM's own exit reason ("vm stopped: guest-reset ...; vmm exited
// with status 0"): a long poll on the API learns it as the VM stops, and
// a stop through the API returns it. A VM that stopped before either (its
// final status went to launch's readiness check) is described by its
// VMM's last words, if the stop was unclean, and exit status.
func (s *microVMSandbox) watchExit(exited <-chan struct{}, process func() string) {
	s.gone = exited
	ctx, cancel := context.WithCancel(context.Background())
	s.stopWatch = cancel
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			st, err := s.api.WaitStopped(ctx)
			if err == nil {
				s.noteFinal(st)
				return
			}
			// A broken poll is asked again while the VMM runs.
			select {
			case <-ctx.Done():
				return
			case <-exited:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	go func() {
		select {
		case <-exited:
		case <-ctx.Done():
			return // let go of (detached)
		}
		select {
		case <-polled:
		case <-time.After(time.Second):
		}
		reason := "vmm " + process()
		s.mu.Lock()
		final := s.final
		s.mu.Unlock()
		if final != "" {
			reason = "vm stopped: " + final + "; " + reason
		} else if last := vmmLastWords(filepath.Join(s.dir, launch.DetachedStderr)); last != "" {
			reason = last + "; " + reason
		}
		s.end.set(reason)
	}()
}

// noteFinal keeps the VM's exit reason from a stopped status.
func (s *microVMSandbox) noteFinal(st vmm.Status) {
	if st.State != vmm.StateStopped || st.Exit == nil {
		return
	}
	s.mu.Lock()
	if s.final == "" {
		s.final = st.Exit.String()
	}
	s.mu.Unlock()
}

// Invoke runs one invocation (one at a time).
func (s *microVMSandbox) Invoke(ctx context.Context, id string, payload []byte, timeout time.Duration, logs func(guest.Frame)) (guest.Frame, error) {
	return s.link.invoke(ctx, id, payload, timeout, logs)
}

// Snapshot pauses the VM, cuts a full snapshot into dir and resumes it.
// It waits for a running invocation to finish first. A jailed VMM writes
// only to its /run: the snapshot is cut there and moved to dir. Either
// way its files end up root's, readable by the jails' group, so that any
// jail can restore them.
func (s *microVMSandbox) Snapshot(ctx context.Context, dir string) error {
	if err := s.link.acquire(ctx); err != nil {
		return err
	}
	defer s.link.release()
	target := dir
	if s.jailed {
		target = filepath.Join(runDir(s.dir), jailSnapshotDir)
		if err := os.RemoveAll(target); err != nil {
			return fmt.Errorf("sandbox %s: snapshot: %w", s.id, err)
		}
	}
	if err := s.api.Pause(ctx); err != nil {
		return fmt.Errorf("sandbox %s: snapshot: pause: %w", s.id, err)
	}
	vmmDir := target
	if s.jailed {
		vmmDir = filepath.Join(jail.RunDir, jailSnapshotDir)
	}
	_, serr := s.api.Snapshot(ctx, vmmDir)
	// Resume even if ctx ended: a paused VM serves nobody.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), vmmStopWait)
	defer cancel()
	rerr := s.api.Resume(rctx)
	if serr != nil {
		return fmt.Errorf("sandbox %s: snapshot into %s: %w", s.id, dir, errors.Join(serr, rerr))
	}
	if rerr != nil {
		return fmt.Errorf("sandbox %s: resume after the snapshot: %w", s.id, rerr)
	}
	if err := shareSnapshot(target); err != nil {
		return fmt.Errorf("sandbox %s: snapshot: %w", s.id, err)
	}
	if target != dir {
		if err := os.Rename(target, dir); err != nil {
			os.RemoveAll(target)
			return fmt.Errorf("sandbox %s: snapshot: move it out of the jail: %w", s.id, err)
		}
	}
	return nil
}

// RecordWorkingSet has the VMM write the guest pages its VM has touched
// since it was restored, and returns the file (in the sandbox's run
// directory: a jailed VMM writes nowhere else) and its page count.
func (s *microVMSandbox) RecordWorkingSet(ctx context.Context) (string, int, error) {
	host, vmmDir := runDir(s.dir), runDir(s.dir)
	if s.jailed {
		vmmDir = jail.RunDir
	}
	pages, err := s.api.RecordWorkingSet(ctx, vmmDir)
	if err != nil {
		return "", 0, fmt.Errorf("sandbox %s: record the working set: %w", s.id, err)
	}
	return filepath.Join(host, snapshot.WorkingSetFile), pages, nil
}

// shareSnapshot makes a snapshot's files root's, group microVMJailGID,
// read-only to the group (0640, directories 0750): the jail that cut it
// owned them, mode 0600.
func shareSnapshot(dir string) error {
	return filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().Type()&os.ModeSymlink != 0 {
			return fmt.Errorf("%s: a symlink in a snapshot", p)
		}
		mode := os.FileMode(0o640)
		if fi.IsDir() {
			mode = 0o750
		}
		if err := os.Lchown(p, 0, microVMJailGID); err != nil {
			return err
		}
		return os.Chmod(p, mode)
	})
}

// Stop stops the VM through its API, kills the VMM if it lingers (PID 1
// of its jail, whose end takes the jail down), and removes the sandbox's
// directory with jail.Clean once the VMM has exited.
func (s *microVMSandbox) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		if s.link != nil {
			s.link.close()
		}
		s.stopErr = s.terminate(ctx)
		select {
		case <-s.end.done:
		default:
			return // still running: leave its files (terminate said why)
		}
		if err := jail.Clean(s.dir); err != nil && s.stopErr == nil {
			s.stopErr = fmt.Errorf("sandbox %s: %w", s.id, err)
		}
	})
	return s.stopErr
}

func (s *microVMSandbox) terminate(ctx context.Context) error {
	select {
	case <-s.gone:
	default:
		sctx, cancel := context.WithTimeout(ctx, vmmStopWait)
		if st, err := s.api.Stop(sctx); err != nil {
			s.log.Debug("stop through the API", "error", err)
		} else {
			s.noteFinal(st)
		}
		cancel()
	}
	var kerr error
	if s.proc != nil {
		if s.proc.Cmd.Process != nil {
			if err := s.proc.Cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				kerr = err
			}
		}
	} else if s.watch != nil {
		kerr = s.watch.signal(unix.SIGKILL)
	}
	var errs []error
	if kerr != nil {
		errs = append(errs, fmt.Errorf("sandbox %s: kill the VMM: %w", s.id, kerr))
	}
	select {
	case <-s.end.done: // after the process's end, with the reason
		closeNet(s.net, s.log)
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("sandbox %s: waiting for VMM %d to end: %w", s.id, s.rec.PID, ctx.Err()))
	}
	if s.watch != nil {
		s.watch.close()
	}
	return errors.Join(errs...)
}

// vmmLastWords is the "vm stopped: ..." line a VMM writes to its log
// when its VM stopped uncleanly, or "".
func vmmLastWords(logPath string) string {
	tail := logTail(logPath)
	i := strings.LastIndex(tail, launch.BinaryName+": vm stopped: ")
	if i < 0 {
		return ""
	}
	line, _, _ := strings.Cut(tail[i+len(launch.BinaryName)+2:], "\n")
	return line
}

// abort ends a sandbox that failed to start or reattach.
func (s *microVMSandbox) abort() { abortStart(s.link, s.terminate, s.log) }

// detach lets go of the sandbox as a dying kindlingd would; the VMM runs
// on, and Stop no longer touches it (whoever reattaches owns it). For
// tests.
func (s *microVMSandbox) detach() {
	s.stopOnce.Do(func() { s.stopErr = fmt.Errorf("sandbox %s: detached", s.id) })
	if s.link != nil {
		s.link.close()
	}
	s.stopWatch()
	if s.watch != nil {
		s.watch.close()
	}
}
