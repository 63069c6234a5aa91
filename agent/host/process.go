package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/agent/hostnet"
	"github.com/kindlingvm/kindling/rootfs"
)

// The process backend runs a task image's /init (kindling-init --sandbox)
// and /task as host processes, extracted from the image's initramfs.
//
// It is NOT isolation-grade: the task runs as kindlingd's user (root) on
// the host's kernel, sees the host's file system, and is held only by new
// mount, IPC, UTS and network namespaces (its network is loopback alone)
// and, where cgroup v2 is available, a cgroup bounding its memory and
// process count. Use it for trusted code, development, and hosts whose KVM
// cannot run a guest's user space; never for several tenants' untrusted
// code on one host.

// Files in a process sandbox's directory.
const (
	processAgentSocket = "agent.sock" // kindlingd listens, kindling-init dials
	processAgentLog    = "agent.log"  // kindling-init's and the task's stdout and stderr
)

const (
	// sandboxPIDsMax is a process sandbox's pids.max: a Lambda task with
	// its threads and helpers stays far below it; a fork bomb does not.
	sandboxPIDsMax = 256
	// cgroupRoot is where cgroup v2 is mounted on a unified host.
	cgroupRoot = "/sys/fs/cgroup"
)

// sandboxBaseEnv is the process sandbox's environment before the
// function's own: never kindlingd's.
var sandboxBaseEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}

// ProcessOptions configure a ProcessBackend.
type ProcessOptions struct {
	// ImageCache is the directory where images' extracted root file
	// systems live, one per manifest digest (required).
	ImageCache string
	// CgroupParent, when set, is a cgroup v2 directory (absolute, or
	// relative to /sys/fs/cgroup) under which each sandbox gets its own
	// cgroup with memory.max and pids.max. It is created if missing, and
	// the memory and pids controllers are enabled for its children. Where
	// cgroup v2 is not mounted at /sys/fs/cgroup or not writable, sandboxes
	// run without limits and a warning is logged once.
	CgroupParent string
	// Net makes egress sandboxes' network namespaces; nil refuses them.
	Net    *hostnet.Host
	Logger *slog.Logger

	// cgroupRoot overrides /sys/fs/cgroup, for tests.
	cgroupRoot string
}

// ProcessBackend starts sandboxes as jailed host processes. It is not
// isolation-grade (see the file comment); it cannot snapshot.
type ProcessBackend struct {
	opts ProcessOptions
	log  *slog.Logger

	extractMu sync.Mutex
	extracts  map[string]*sync.Mutex // by manifest digest

	cgroupWarn sync.Once
}

var _ Backend = (*ProcessBackend)(nil)

// NewProcessBackend returns a process backend.
func NewProcessBackend(opts ProcessOptions) *ProcessBackend {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.cgroupRoot == "" {
		opts.cgroupRoot = cgroupRoot
	}
	return &ProcessBackend{opts: opts, log: opts.Logger.With("backend", BackendProcess), extracts: map[string]*sync.Mutex{}}
}

// Name is BackendProcess.
func (b *ProcessBackend) Name() string { return BackendProcess }

// IsolationGrade is false: see the file comment.
func (b *ProcessBackend) IsolationGrade() bool { return false }

// CanSnapshot is false.
func (b *ProcessBackend) CanSnapshot() bool { return false }

// Restore returns ErrNoSnapshots.
func (b *ProcessBackend) Restore(context.Context, Spec, string) (Sandbox, error) {
	return nil, ErrNoSnapshots
}

// manifestDigest names an image's extracted root file system.
func manifestDigest(m *rootfs.Manifest) (string, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// rootfs returns the extracted root file system of the image, extracting
// it once: concurrent boots of one image wait for the one extraction.
func (b *ProcessBackend) rootfs(image string, m *rootfs.Manifest) (string, error) {
	if b.opts.ImageCache == "" {
		return "", errors.New("process backend: no image cache directory configured")
	}
	digest, err := manifestDigest(m)
	if err != nil {
		return "", err
	}
	b.extractMu.Lock()
	mu := b.extracts[digest]
	if mu == nil {
		mu = &sync.Mutex{}
		b.extracts[digest] = mu
	}
	b.extractMu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	dir := filepath.Join(b.opts.ImageCache, digest)
	if _, err := os.Stat(dir); err == nil { // extractions are atomic
		return dir, nil
	}
	t := time.Now()
	err = rootfs.Extract(image, m, dir)
	if errors.Is(err, fs.ErrExist) {
		// Another kindlingd finished it first; extractions are atomic.
		return dir, nil
	}
	if err != nil {
		return "", err
	}
	b.log.Info("image extracted", "image", image, "rootfs", dir, "took", time.Since(t).Round(time.Millisecond))
	return dir, nil
}

func checkSpec(spec Spec) error {
	switch {
	case spec.ID == "" || spec.ID != filepath.Base(spec.ID) || spec.ID == "." || spec.ID == "..":
		return fmt.Errorf("sandbox ID %q: want a single path element", spec.ID)
	case spec.Dir == "":
		return fmt.Errorf("sandbox %s: no directory", spec.ID)
	case spec.Manifest == nil || spec.Image == "":
		return fmt.Errorf("sandbox %s: no image", spec.ID)
	}
	return nil
}

// Boot extracts the image (once), starts its kindling-init with --sandbox
// in new namespaces and the sandbox's cgroup, and returns once its task
// has asked for its first invocation. ctx bounds the whole start.
func (b *ProcessBackend) Boot(ctx context.Context, spec Spec) (Sandbox, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	root, err := b.rootfs(spec.Image, spec.Manifest)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	sock := filepath.Join(spec.Dir, processAgentSocket)
	ln, err := listenAgent(sock)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	logPath := filepath.Join(spec.Dir, processAgentLog)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	cg, cgFD := b.makeCgroup(spec)
	function := spec.Function
	if function == "" {
		function = "task"
	}
	cmd := exec.Command(filepath.Join(root, "init"), "--task", filepath.Join(root, "task"),
		"--channel", "unix:"+sock, "--runtime-addr", "127.0.0.1:0", "--function", function, "--sandbox")
	cmd.Env = append(append([]string{}, sandboxBaseEnv...), spec.Env...)
	cmd.Dir = spec.Dir
	// Stdin is /dev/null; stdout and stderr a file, never a pipe to
	// kindlingd, whose death must not SIGPIPE the sandbox.
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own (Stop kills the process group), no
	// parent-death signal (it outlives kindlingd), new namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true,
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWNET}
	if cgFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgFD
	}
	var netw *hostnet.Sandbox
	if spec.Egress {
		// Its namespace is hostnet's (a veth, an address, the default
		// route), joined rather than made empty.
		if netw, err = setupNet(b.opts.Net, spec, 0, 0); err == nil {
			cmd.SysProcAttr.Cloneflags &^= unix.CLONE_NEWNET
			err = netw.Do(cmd.Start)
		}
	} else {
		err = cmd.Start()
	}
	logf.Close()
	if cgFD >= 0 {
		unix.Close(cgFD)
	}
	if err != nil {
		ln.Close()
		removeCgroup(cg)
		closeNet(netw, b.log)
		return nil, fmt.Errorf("sandbox %s: start %s: %w", spec.ID, cmd.Path, err)
	}
	pid := cmd.Process.Pid
	sb := &processSandbox{b: b, id: spec.ID, dir: spec.Dir, cgroup: cg, net: netw, end: newProcEnd(), log: b.log.With("sandbox", spec.ID)}
	go func() {
		cmd.Wait()
		sb.end.set(describeWait(cmd.ProcessState))
	}()
	sb.kill = func(sig unix.Signal) error { return killGroup(pid, sig, osProcess{cmd.Process}) }
	start, err := procStartTime(pid)
	if err != nil {
		sb.abort()
		return nil, fmt.Errorf("sandbox %s: kindling-init ended at once: %v%s", spec.ID, err, logTail(logPath))
	}
	sb.rec = Record{ID: spec.ID, Backend: BackendProcess, PID: pid, StartTime: start, Dir: spec.Dir, Channel: sock}
	if netw != nil {
		sb.rec.Network = string(hostnet.Egress)
	}
	sb.link = newAgentLink(spec.ID, sb.log, ln, sb.end)
	c, err := sb.link.connected(ctx, 0)
	if err == nil {
		err = sb.link.ready(ctx, c)
	}
	if err != nil {
		sb.abort()
		return nil, fmt.Errorf("%w%s", err, logTail(logPath))
	}
	sb.log.Info("process sandbox started", "pid", pid, "rootfs", root, "cgroup", cg)
	return sb, nil
}

// Reattach finds a process sandbox a previous kindlingd started: the
// process must still be the recorded one (PID and start time), and its
// agent must dial the re-opened socket within a few seconds (it redials at
// least once a second). A process that is there but whose agent does not
// come back is killed.
func (b *ProcessBackend) Reattach(ctx context.Context, rec Record) (Sandbox, error) {
	if rec.Backend != "" && rec.Backend != BackendProcess {
		return nil, fmt.Errorf("sandbox %s: a %s sandbox, not a process one", rec.ID, rec.Backend)
	}
	w, err := watchPID(rec.PID, rec.StartTime)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", rec.ID, err)
	}
	sb := &processSandbox{b: b, id: rec.ID, dir: rec.Dir, rec: rec, end: w.end, watch: w, log: b.log.With("sandbox", rec.ID)}
	if cg := b.cgroupPath(rec.ID); cg != "" {
		if _, err := os.Stat(cg); err == nil {
			sb.cgroup = cg
		}
	}
	sb.kill = func(sig unix.Signal) error { return killGroup(rec.PID, sig, w) }
	if sb.net, err = reattachNet(b.opts.Net, rec); err != nil {
		sb.abort()
		return nil, fmt.Errorf("sandbox %s: %w", rec.ID, err)
	}
	ln, err := listenAgent(rec.Channel)
	if err != nil {
		sb.abort()
		return nil, fmt.Errorf("sandbox %s: %w", rec.ID, err)
	}
	sb.link = newAgentLink(rec.ID, sb.log, ln, sb.end)
	if _, err := sb.link.connected(ctx, agentReconnectWait); err != nil {
		sb.abort()
		return nil, fmt.Errorf("reattach: %w; stopped it", err)
	}
	sb.log.Info("process sandbox reattached", "pid", rec.PID)
	return sb, nil
}

// signaller is a way to signal a sandbox's group leader itself, safe
// against PID reuse: a *pidWatch, or an osProcess for our own child.
type signaller interface{ signal(unix.Signal) error }

// osProcess is our own child (os.Process signals it through a pidfd).
type osProcess struct{ p *os.Process }

func (o osProcess) signal(sig unix.Signal) error {
	err := o.p.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// killGroup signals the sandbox's process group (its session leader's
// PID), then the leader itself through a handle that cannot reach a
// later owner of the PID.
func killGroup(pid int, sig unix.Signal, leader signaller) error {
	gerr := unix.Kill(-pid, sig)
	if errors.Is(gerr, unix.ESRCH) {
		gerr = nil
	}
	return errors.Join(gerr, leader.signal(sig))
}

// processSandbox is one process sandbox.
type processSandbox struct {
	b      *ProcessBackend
	id     string
	dir    string
	rec    Record
	cgroup string           // "" without one
	net    *hostnet.Sandbox // nil without egress
	log    *slog.Logger
	end    *procEnd
	watch  *pidWatch // for a reattached sandbox; nil for our own child
	kill   func(unix.Signal) error
	link   *agentLink

	stopOnce sync.Once
	stopErr  error
}

func (s *processSandbox) Record() Record          { return s.rec }
func (s *processSandbox) agent() *agentLink       { return s.link }
func (s *processSandbox) Exited() <-chan struct{} { return s.end.done }
func (s *processSandbox) ExitReason() string      { return s.end.Reason() }

// Invoke runs one invocation (one at a time).
func (s *processSandbox) Invoke(ctx context.Context, id string, payload []byte, timeout time.Duration, logs func(guest.Frame)) (guest.Frame, error) {
	return s.link.invoke(ctx, id, payload, timeout, logs)
}

// Snapshot returns ErrNoSnapshots.
func (s *processSandbox) Snapshot(context.Context, string) error { return ErrNoSnapshots }

// Stop kills the sandbox's process group, waits for it, and removes its
// cgroup and directory.
func (s *processSandbox) Stop(ctx context.Context) error {
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

// terminate kills the process group (and, with a cgroup, everything in
// it), waits for the leader's end, and removes the cgroup.
func (s *processSandbox) terminate(ctx context.Context) error {
	var errs []error
	if s.cgroup != "" {
		// cgroup.kill (Linux 5.14) also reaches processes that left the
		// session.
		if err := os.WriteFile(filepath.Join(s.cgroup, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Debug("cgroup.kill", "error", err)
		}
	}
	if err := s.kill(unix.SIGKILL); err != nil {
		errs = append(errs, fmt.Errorf("sandbox %s: kill: %w", s.id, err))
	}
	select {
	case <-s.end.done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("sandbox %s: waiting for process %d to end: %w", s.id, s.rec.PID, ctx.Err()))
	}
	if s.watch != nil {
		s.watch.close()
	}
	select {
	case <-s.end.done:
		closeNet(s.net, s.log)
	default:
	}
	if s.cgroup != "" {
		if err := removeCgroupWait(ctx, s.cgroup); err != nil {
			errs = append(errs, fmt.Errorf("sandbox %s: %w", s.id, err))
		}
	}
	return errors.Join(errs...)
}

// abort ends a sandbox that failed to start or reattach.
func (s *processSandbox) abort() { abortStart(s.link, s.terminate, s.log) }

// detach lets go of the sandbox as a dying kindlingd would: the listener
// and the connection close, the process runs on, and Stop no longer
// touches it (whoever reattaches owns it). For tests.
func (s *processSandbox) detach() {
	s.stopOnce.Do(func() { s.stopErr = fmt.Errorf("sandbox %s: detached", s.id) })
	s.link.close()
	if s.watch != nil {
		s.watch.close()
	}
}

// logTail is the end of a sandbox's agent.log, for error messages.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tailBytes = 2048
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, max(0, st.Size()-tailBytes), tailBytes))
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	return "; " + filepath.Base(path) + " ends:\n" + s
}

// cgroupPath is the sandbox's cgroup directory, or "" without a
// CgroupParent.
func (b *ProcessBackend) cgroupPath(id string) string {
	if b.opts.CgroupParent == "" {
		return ""
	}
	parent := b.opts.CgroupParent
	if !filepath.IsAbs(parent) {
		parent = filepath.Join(b.opts.cgroupRoot, parent)
	}
	return filepath.Join(parent, id)
}

// makeCgroup creates the sandbox's cgroup with its limits and returns it
// with an open directory fd for clone3's CLONE_INTO_CGROUP, or ("", -1)
// where there is none to be had (logged once).
func (b *ProcessBackend) makeCgroup(spec Spec) (string, int) {
	cg := b.cgroupPath(spec.ID)
	if cg == "" {
		return "", -1
	}
	var st unix.Statfs_t
	if err := unix.Statfs(b.opts.cgroupRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		b.cgroupWarn.Do(func() {
			b.log.Warn("cgroup v2 is not mounted; process sandboxes run without memory and process limits", "at", b.opts.cgroupRoot)
		})
		return "", -1
	}
	parent := filepath.Dir(cg)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		b.cgroupWarn.Do(func() {
			b.log.Warn("cannot create the sandboxes' cgroup; process sandboxes run without memory and process limits", "error", err)
		})
		return "", -1
	}
	enableControllers(b.opts.cgroupRoot, parent)
	if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		b.cgroupWarn.Do(func() {
			b.log.Warn("cannot create a sandbox's cgroup; process sandboxes run without memory and process limits", "error", err)
		})
		return "", -1
	}
	var missing []string
	limits := [][2]string{{"pids.max", strconv.Itoa(sandboxPIDsMax)}}
	if spec.MemoryMiB > 0 {
		limits = append(limits, [2]string{"memory.max", strconv.FormatInt(int64(spec.MemoryMiB)<<20, 10)})
	}
	for _, l := range limits {
		if err := os.WriteFile(filepath.Join(cg, l[0]), []byte(l[1]), 0); err != nil {
			missing = append(missing, l[0])
		}
	}
	if len(missing) > 0 {
		b.cgroupWarn.Do(func() {
			b.log.Warn("cgroup controllers unavailable; process sandboxes run without these limits", "cgroup", parent, "limits", missing)
		})
	}
	fd, err := unix.Open(cg, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		removeCgroup(cg)
		b.cgroupWarn.Do(func() { b.log.Warn("cannot open a sandbox's cgroup", "error", err) })
		return "", -1
	}
	return cg, fd
}

// enableControllers turns memory and pids on for the children of every
// cgroup from root down to parent, as far as each allows: a parent that
// is itself limited may not delegate them. Errors only mean fewer limits.
func enableControllers(root, parent string) {
	rel, err := filepath.Rel(root, parent)
	if err != nil || strings.HasPrefix(rel, "..") {
		return
	}
	dir := root
	dirs := []string{dir}
	if rel != "." {
		for _, c := range strings.Split(rel, string(filepath.Separator)) {
			dir = filepath.Join(dir, c)
			dirs = append(dirs, dir)
		}
	}
	for _, d := range dirs {
		for _, c := range []string{"+memory", "+pids"} {
			os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(c), 0)
		}
	}
}

func removeCgroup(cg string) {
	if cg != "" {
		unix.Rmdir(cg)
	}
}

// removeCgroupWait removes an emptied cgroup, waiting for its last
// processes to be reaped (rmdir says EBUSY until then).
func removeCgroupWait(ctx context.Context, cg string) error {
	for {
		err := unix.Rmdir(cg)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("remove cgroup %s: %w", cg, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: still busy: %w", cg, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
