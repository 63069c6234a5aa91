// Package launch starts kindling-vmm processes and hands back a client for
// their control socket. It is how the CLI and kindlingd run VMs: neither
// imports the VMM's internals, both drive the same API.
package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api/client"
	"github.com/kindlingvm/kindling/vmm/jail"
	"github.com/kindlingvm/kindling/vmm/seccomp"
)

// BinaryName is the VMM executable.
const BinaryName = "kindling-vmm"

// FindBinary looks for kindling-vmm next to the running executable, then on
// $PATH.
func FindBinary() (string, error) { return findProgram(BinaryName) }

// FindJailer looks for kindling-jailer next to the running executable,
// then on $PATH.
func FindJailer() (string, error) { return findProgram(jail.JailerName) }

func findProgram(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found next to this program or on $PATH: build it with `make build` (it goes to ./bin)", name)
}

// Options are how a VMM process is started.
type Options struct {
	Binary string    // default: FindBinary
	Dir    string    // where the config and socket go; default: a new temp dir, removed by Wait
	ID     string    // VM name for logs
	Stdout io.Writer // the guest console (config Console "stdout")
	Stderr io.Writer // the VMM's logs and errors
	Start  bool      // pass --start: boot without an API call
	// Restore, when set, restores this snapshot directory instead of
	// booting the config; the config's Console, Disks and Vsock.Path are passed as
	// overrides of the snapshot's host-specific settings.
	Restore string
	// Prefetch, with Restore, populates the snapshot's working set first.
	Prefetch bool
	// ReadyTimeout bounds how long the API may take to come up.
	ReadyTimeout time.Duration
	// Detach starts a VMM that outlives its starter (kindlingd, which
	// reattaches to it after a restart): its own session rather than a
	// process group, no parent-death signal, and its stdout and stderr go
	// to DetachedStdout and DetachedStderr in Dir (Stdout and Stderr are
	// not used), never to pipes whose reader may die. Dir must be given.
	// The Process works as usual while its starter lives.
	Detach bool
	// Seccomp passes --seccomp: the VMM confines itself to its
	// system-call allow-list before its first KVM_RUN.
	Seccomp bool
	// Jail, when set, runs the VMM jailed (package jail) by Jailer, which
	// execs it in place: the Process's Cmd is the VMM's process, in new
	// namespaces, and a detached one is still reattachable by PID. The
	// caller sets the jail's identity and confinement (ID, UID, GID,
	// Devices, Proc, Cgroup, Env and any extra read-only binds); Start
	// sets Dir (to Dir, which must be given), Argv, and binds in the VMM
	// binary, the config, and the files the config and Restore name. The
	// config and Restore give host paths, as unjailed: the kernel,
	// initrd, disks and snapshot are bound in read-only at fixed paths;
	// the console file and vsock socket must be under Dir/run (the jail's
	// /run, writable). The API socket is Dir/run/api.sock. The jail's
	// UID or GID must be able to read the bound files.
	Jail *jail.Spec
	// Jailer is the kindling-jailer binary, with Jail; default:
	// FindJailer.
	Jailer string
}

// Files a detached VMM writes in its Dir.
const (
	DetachedStdout = "console.log" // the guest console, with config Console "stdout"
	DetachedStderr = "vmm.log"     // the VMM's own logs and errors
)

// Process is a running kindling-vmm.
type Process struct {
	Cmd    *exec.Cmd
	Client *client.Client
	Sock   string
	tmp    string
	exited chan struct{}
	err    error
}

// Start writes cfg, starts the VMM and waits for its API.
func Start(ctx context.Context, cfg vmm.Config, opt Options) (*Process, error) {
	bin := opt.Binary
	if bin == "" {
		var err error
		if bin, err = FindBinary(); err != nil {
			return nil, err
		}
	}
	if opt.Detach && opt.Dir == "" {
		return nil, errors.New("launch: a detached VMM needs a Dir for its sockets and logs")
	}
	p := &Process{exited: make(chan struct{})}
	dir := opt.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "kindling-vm-")
		if err != nil {
			return nil, err
		}
		dir, p.tmp = d, d
	}
	var js *jail.Spec
	if opt.Jail != nil {
		if opt.Dir == "" {
			return nil, errors.New("launch: a jailed VMM needs a Dir for its jail")
		}
		s := *opt.Jail
		s.ReadOnly = append([]jail.Bind(nil), s.ReadOnly...)
		s.Dir = dir
		js = &s
		var err error
		if cfg, opt.Restore, err = jailPaths(js, cfg, opt.Restore); err != nil {
			return nil, fmt.Errorf("launch: %w", err)
		}
	}
	cfgPath := filepath.Join(dir, "vm.json")
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	// Jailed, the VMM reads it as the jail's uid, through a bind: it
	// holds paths, no secrets.
	mode := os.FileMode(0o600)
	if js != nil {
		mode = 0o644
	}
	if err := writeFileMode(cfgPath, b, mode); err != nil {
		p.cleanup()
		return nil, err
	}
	p.Sock = filepath.Join(dir, "api.sock")
	sock, cfgArg := p.Sock, cfgPath
	if js != nil {
		p.Sock = filepath.Join(dir, jail.RunName, jailAPISock)
		sock, cfgArg = filepath.Join(jail.RunDir, jailAPISock), jailConfig
		js.ReadOnly = append(js.ReadOnly, jail.Bind{Source: cfgPath, Target: jailConfig})
	}
	args := []string{"--config", cfgArg, "--api-sock", sock}
	if opt.Restore != "" {
		args = []string{"--restore", opt.Restore, "--api-sock", sock}
		if cfg.Console != "" {
			args = append(args, "--console", cfg.Console)
		}
		if opt.Prefetch {
			args = append(args, "--prefetch")
		}
		for _, d := range cfg.Disks {
			p := d.Path
			if d.ReadOnly {
				p += ":ro"
			}
			args = append(args, "--disk", p)
		}
		if cfg.Vsock != nil && cfg.Vsock.Path != "" {
			args = append(args, "--vsock-path", cfg.Vsock.Path)
		}
		for _, n := range cfg.Net {
			v := n.Tap
			if n.GuestMAC != "" {
				v += ",mac=" + n.GuestMAC
			}
			args = append(args, "--net", v)
		}
	}
	if opt.ID != "" {
		args = append(args, "--id", opt.ID)
	}
	if opt.Start {
		args = append(args, "--start")
	}
	if opt.Seccomp {
		args = append(args, "--seccomp")
	}
	if js != nil {
		jailer := opt.Jailer
		if jailer == "" {
			if jailer, err = FindJailer(); err != nil {
				return nil, err
			}
		}
		js.ReadOnly = append(js.ReadOnly, jail.Bind{Source: bin, Target: jailBinary})
		js.Argv = append([]string{jailBinary}, args...)
		if p.Cmd, err = jail.Command(jailer, *js); err != nil {
			return nil, fmt.Errorf("launch: %w", err)
		}
	} else {
		p.Cmd = exec.Command(bin, args...)
	}
	// Keep the start of stderr so an early failure can be reported as the
	// VMM's own one-line message.
	early := &headBuffer{max: 4096}
	earlyMsg := early.String
	if opt.Detach {
		from, err := detach(p.Cmd, dir, js != nil)
		if err != nil {
			return nil, err
		}
		earlyMsg = func() string { return readAt(filepath.Join(dir, DetachedStderr), from, early.max) }
	} else {
		p.Cmd.Stdout = opt.Stdout
		if opt.Stderr != nil {
			p.Cmd.Stderr = io.MultiWriter(early, opt.Stderr)
		} else {
			p.Cmd.Stderr = early
		}
		// Its own process group: a Ctrl-C reaches the CLI, which stops the VM
		// through the API and so learns the exit reason. (A jail's
		// command has its session and namespaces already.)
		if js == nil {
			p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		}
	}
	err = p.Cmd.Start()
	if opt.Detach {
		// The child holds its own copies of the log files.
		p.Cmd.Stdout.(*os.File).Close()
		p.Cmd.Stderr.(*os.File).Close()
	}
	if err != nil {
		p.cleanup()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.exited)
	}()
	p.Client = client.New(p.Sock)
	timeout := opt.ReadyTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- p.Client.WaitReady(rctx) }()
	select {
	case err := <-ready:
		if err != nil {
			p.Kill()
			return nil, err
		}
	case <-p.exited:
		p.cleanup()
		ps := p.Cmd.ProcessState
		if js != nil && ps != nil && ps.ExitCode() == jail.ExitSetupFailed {
			// The jailer failed before the exec, and says where.
			if err := jail.ReadStatus(dir); err != nil {
				return nil, fmt.Errorf("launch: %w", err)
			}
		}
		if seccomp.Killed(ps) {
			return nil, fmt.Errorf("%s %s", BinaryName, seccomp.Describe(ps))
		}
		if msg := strings.TrimSpace(earlyMsg()); msg != "" {
			return nil, errors.New(strings.TrimPrefix(msg, BinaryName+": "))
		}
		return nil, fmt.Errorf("%s exited before its API came up: %s", BinaryName, seccomp.Describe(ps))
	}
	return p, nil
}

// detach sets cmd up to outlive its starter: a session of its own, no
// parent-death signal, stdin /dev/null, stdout and stderr to files in dir
// (appended to, so a VMM started again in the same dir keeps the history).
// It returns where this VMM's stderr starts in its file.
func detach(cmd *exec.Cmd, dir string, jailed bool) (int64, error) {
	var files [2]*os.File
	for i, name := range []string{DetachedStdout, DetachedStderr} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			if i == 1 {
				files[0].Close()
			}
			return 0, fmt.Errorf("launch: %w", err)
		}
		files[i] = f
	}
	st, err := files[1].Stat()
	if err != nil {
		files[0].Close()
		files[1].Close()
		return 0, fmt.Errorf("launch: %w", err)
	}
	cmd.Stdout, cmd.Stderr = files[0], files[1]
	if !jailed { // a jail's command has its own session, and namespaces
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	return st.Size(), nil
}

// Paths inside a VMM's jail.
const (
	jailBinary   = "/kindling-vmm"
	jailConfig   = "/vm.json"
	jailKernel   = "/kernel"
	jailInitrd   = "/initrd"
	jailSnapshot = "/snapshot"
	jailAPISock  = "api.sock" // in /run
)

// jailPaths rewrites cfg's host paths, and restore's, as the jailed VMM
// sees them, adding to s the read-only binds that make them so. Files
// the VMM writes (console, vsock socket) must be under s.Dir/run.
func jailPaths(s *jail.Spec, cfg vmm.Config, restore string) (vmm.Config, string, error) {
	bindIn := func(host, inside string) string {
		s.ReadOnly = append(s.ReadOnly, jail.Bind{Source: host, Target: inside})
		return inside
	}
	run := filepath.Join(s.Dir, jail.RunName)
	inRun := func(what, host string) (string, error) {
		rel, err := filepath.Rel(run, host)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") || !filepath.IsAbs(host) {
			return "", fmt.Errorf("jailed VMM: %s %s is not under %s, the jail's /run", what, host, run)
		}
		return filepath.Join(jail.RunDir, rel), nil
	}
	if cfg.Kernel != "" {
		cfg.Kernel = bindIn(cfg.Kernel, jailKernel)
	}
	if cfg.Initrd != "" {
		cfg.Initrd = bindIn(cfg.Initrd, jailInitrd)
	}
	if len(cfg.Disks) > 0 {
		disks := append([]vmm.Disk(nil), cfg.Disks...)
		for i := range disks {
			if !disks[i].ReadOnly {
				return cfg, "", fmt.Errorf("jailed VMM: disk %s: only read-only disks are bound in so far", disks[i].Path)
			}
			disks[i].Path = bindIn(disks[i].Path, fmt.Sprintf("/disk%d", i))
		}
		cfg.Disks = disks
	}
	switch cfg.Console {
	case "", "none", "stdout":
	default:
		p, err := inRun("console", cfg.Console)
		if err != nil {
			return cfg, "", err
		}
		cfg.Console = p
	}
	if cfg.Vsock != nil && cfg.Vsock.Path != "" {
		p, err := inRun("vsock socket", cfg.Vsock.Path)
		if err != nil {
			return cfg, "", err
		}
		v := *cfg.Vsock
		v.Path = p
		cfg.Vsock = &v
	}
	if restore != "" {
		restore = bindIn(restore, jailSnapshot)
	}
	return cfg, restore, nil
}

// writeFileMode writes a file with exactly mode, past the umask.
func writeFileMode(path string, b []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, b, mode); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

// readAt returns up to max bytes of the file at path from offset off, or "".
func readAt(path string, off int64, max int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.NewSectionReader(f, off, int64(max)))
	return string(b)
}

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ExitCode waits for the process and returns its exit status.
func (p *Process) ExitCode() int {
	<-p.exited
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// Kill ends the process at once and removes its files.
func (p *Process) Kill() {
	if p.Cmd.Process != nil {
		_ = p.Cmd.Process.Kill()
	}
	<-p.exited
	p.cleanup()
}

// Wait waits for the process to exit and removes its temporary files.
func (p *Process) Wait() int {
	code := p.ExitCode()
	p.cleanup()
	return code
}

func (p *Process) cleanup() {
	if p.tmp != "" {
		os.RemoveAll(p.tmp)
	}
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - len(h.b); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		h.b = append(h.b, p[:room]...)
	}
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return string(h.b)
}
