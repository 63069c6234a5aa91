package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api/client"
	"github.com/kindlingvm/kindling/vmm/launch"
)

// The microVM backend runs each sandbox in its own kindling-vmm process:
// the image's kernel and initramfs, kindling-init as PID 1, the guest
// agent reached over virtio-vsock (the VMM's <uds>_1024 socket, on which
// kindlingd listens). It is isolation-grade, and snapshots.

const (
	// microVMGuestCID is every sandbox VM's vsock CID: each VM has its
	// own vsock device, so they need not differ.
	microVMGuestCID = 3
	// agentVsockPort is the host port kindling-init dials
	// (cmd/kindling-init DefaultPort).
	agentVsockPort = 1024
	// microVMVsock is the VMM's vsock socket in the sandbox's directory;
	// the agent's connections arrive on microVMVsock_1024.
	microVMVsock = "vsock"
	// Defaults for a spec that leaves them unset.
	defaultMicroVMMemoryMiB = 256
	defaultMicroVMVCPUs     = 1
	// vmmStopWait bounds a VMM's orderly stop through its API before it
	// is killed.
	vmmStopWait = 2 * time.Second
)

// MicroVMOptions configure a MicroVMBackend.
type MicroVMOptions struct {
	// VMM is the kindling-vmm binary; default: launch.FindBinary.
	VMM    string
	Logger *slog.Logger
}

// MicroVMBackend starts sandboxes as microVMs, one kindling-vmm process
// each, detached from kindlingd so that they outlive it.
type MicroVMBackend struct {
	opts MicroVMOptions
	log  *slog.Logger
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
	uds := filepath.Join(spec.Dir, microVMVsock)
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
	return cfg
}

// agentChannel is where the agent's vsock connections to the host arrive.
func agentChannel(dir string) string {
	return fmt.Sprintf("%s_%d", filepath.Join(dir, microVMVsock), agentVsockPort)
}

// Boot starts a VM from the image and returns once its task has asked for
// its first invocation. ctx bounds the whole start (a cold boot of a real
// kernel: give it tens of seconds).
func (b *MicroVMBackend) Boot(ctx context.Context, spec Spec) (Sandbox, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	sb, c, err := b.start(ctx, spec, "")
	if err != nil {
		return nil, err
	}
	if err := sb.link.ready(ctx, c); err != nil {
		sb.abort()
		return nil, err
	}
	sb.log.Info("microVM sandbox booted", "pid", sb.rec.PID)
	return sb, nil
}

// Restore starts a VM from a snapshot cut by Snapshot and returns once the
// guest agent has reconnected and been greeted (the hello fixes its clock
// and reseeds its entropy). The snapshot's task is already waiting for an
// invocation, so there is no ready wait.
func (b *MicroVMBackend) Restore(ctx context.Context, spec Spec, snapshot string) (Sandbox, error) {
	if spec.ID == "" || spec.Dir == "" {
		return nil, fmt.Errorf("sandbox %q: no ID or directory", spec.ID)
	}
	if snapshot == "" {
		return nil, fmt.Errorf("sandbox %s: no snapshot to restore", spec.ID)
	}
	sb, _, err := b.start(ctx, spec, snapshot)
	if err != nil {
		return nil, err
	}
	sb.log.Info("microVM sandbox restored", "pid", sb.rec.PID, "snapshot", snapshot)
	return sb, nil
}

// start listens for the agent, launches the VMM (booting, or restoring
// snapshot) and waits for the agent's connection.
func (b *MicroVMBackend) start(ctx context.Context, spec Spec, snapshot string) (*microVMSandbox, *guest.Client, error) {
	ch := agentChannel(spec.Dir)
	ln, err := listenAgent(ch)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	p, err := launch.Start(ctx, vmConfig(spec, snapshot != ""), launch.Options{Binary: b.opts.VMM, Dir: spec.Dir, ID: spec.ID,
		Start: true, Restore: snapshot, Detach: true})
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	pid := p.Cmd.Process.Pid
	sb := &microVMSandbox{id: spec.ID, dir: spec.Dir, api: p.Client, proc: p, end: newProcEnd(), log: b.log.With("sandbox", spec.ID)}
	sb.watchExit(p.Exited(), func() string { return describeWait(p.Cmd.ProcessState) })
	start, err := procStartTime(pid)
	if err != nil {
		sb.abort()
		return nil, nil, fmt.Errorf("sandbox %s: kindling-vmm ended at once: %v%s", spec.ID, err, logTail(filepath.Join(spec.Dir, launch.DetachedStderr)))
	}
	sb.rec = Record{ID: spec.ID, Backend: BackendMicroVM, PID: pid, StartTime: start, Dir: spec.Dir, Channel: ch, APISock: p.Sock}
	sb.link = newAgentLink(spec.ID, sb.log, ln, sb.end)
	c, err := sb.link.connected(ctx, 0)
	if err != nil {
		sb.abort()
		return nil, nil, fmt.Errorf("%w%s", err, logTail(filepath.Join(spec.Dir, launch.DetachedStderr)))
	}
	return sb, c, nil
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
	sb := &microVMSandbox{id: rec.ID, dir: rec.Dir, rec: rec, api: client.New(rec.APISock), watch: w, end: newProcEnd(), log: b.log.With("sandbox", rec.ID)}
	sb.watchExit(w.end.done, func() string { return w.end.Reason() })
	fail := func(err error) (Sandbox, error) {
		sb.abort()
		return nil, fmt.Errorf("sandbox %s: reattach: %w; stopped it", rec.ID, err)
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
	sb.log.Info("microVM sandbox reattached", "pid", rec.PID)
	return sb, nil
}

// microVMSandbox is one VM.
type microVMSandbox struct {
	id    string
	dir   string
	rec   Record
	log   *slog.Logger
	api   *client.Client
	proc  *launch.Process // our child; nil when reattached
	watch *pidWatch       // a reattached VMM
	end   *procEnd
	gone  <-chan struct{} // closed when the VMM process has ended
	link  *agentLink

	stopWatch context.CancelFunc // ends the long poll for the VM's stop
	stopOnce  sync.Once
	stopErr   error

	mu    sync.Mutex
	final string // the VM's exit reason, once known
}

func (s *microVMSandbox) Record() Record          { return s.rec }
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
// It waits for a running invocation to finish first.
func (s *microVMSandbox) Snapshot(ctx context.Context, dir string) error {
	if err := s.link.acquire(ctx); err != nil {
		return err
	}
	defer s.link.release()
	if err := s.api.Pause(ctx); err != nil {
		return fmt.Errorf("sandbox %s: snapshot: pause: %w", s.id, err)
	}
	_, serr := s.api.Snapshot(ctx, dir)
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
	return nil
}

// Stop stops the VM through its API, kills the VMM if it lingers, and
// removes the sandbox's directory.
func (s *microVMSandbox) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		if s.link != nil {
			s.link.close()
		}
		s.stopErr = s.terminate(ctx)
		if err := os.RemoveAll(s.dir); err != nil && s.stopErr == nil {
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

// abort ends a sandbox that failed to start or reattach; its directory
// stays (the caller made it and removes it).
func (s *microVMSandbox) abort() {
	if s.link != nil {
		s.link.close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.terminate(ctx); err != nil {
		s.log.Warn("stopping a sandbox that failed to start", "error", err)
	}
}

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
