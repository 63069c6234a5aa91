package host

import (
	"context"
	"errors"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/rootfs"
)

// Backend names.
const (
	BackendMicroVM = "microvm"
	BackendProcess = "process"
)

// Spec is what one instance runs.
type Spec struct {
	// ID names the instance; unique on this host.
	ID string
	// Dir is the instance's own directory (sockets, logs); the pool creates
	// it and the sandbox's Stop removes it.
	Dir string
	// Image is the image directory and Manifest its verified manifest.
	Image    string
	Manifest *rootfs.Manifest
	// Function is reported to the task as AWS_LAMBDA_FUNCTION_NAME.
	Function string
	// Env is the task's environment (NAME=value), on top of a clean base.
	Env         []string
	MemoryMiB   int
	VCPUs       int
	CPUTemplate *cpuid.Template
	// Egress gives the sandbox outbound network access through the host's
	// NAT (agent/hostnet); without it the sandbox has loopback only.
	Egress bool
	// SnapStart tells a booted task that its environment may be
	// snapshotted (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start).
	SnapStart bool
	// CheckpointTimeout bounds the task's after-restore hooks in a
	// restore of a checkpointed snapshot.
	CheckpointTimeout time.Duration
}

// CheckpointMarker is the file a warm snapshot cut after a checkpoint
// carries: a restore of it waits for the task's after-restore hooks
// (guest.TypeRestored) before it serves.
const CheckpointMarker = "checkpoint.json"

// linked is a sandbox of either backend: both reach their guest agent
// through an agentLink, for checkpoints, artifacts and profiles.
type linked interface {
	agent() *agentLink
}

// Record is what kindlingd stores about a live sandbox so that a restarted
// kindlingd can find it again (Backend.Reattach).
type Record struct {
	ID      string `json:"id"`
	Backend string `json:"backend"`
	// PID and StartTime (field 22 of /proc/PID/stat) identify the process
	// across PID reuse.
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	Dir       string `json:"dir"`
	// Channel is the Unix socket kindlingd listens on and the guest agent
	// connects to (the process backend's --channel, or the VMM's vsock
	// <uds>_1024).
	Channel string `json:"channel"`
	// APISock is the VMM's control socket (microVM backend only).
	APISock string `json:"api_sock,omitempty"`
	// Network is "egress" for a sandbox in a hostnet namespace.
	Network string `json:"network,omitempty"`
}

// Backend starts sandboxes of one kind.
type Backend interface {
	// Name is BackendMicroVM or BackendProcess.
	Name() string
	// IsolationGrade is false for a backend that must not run untrusted
	// code from several tenants on one host (the process backend).
	IsolationGrade() bool
	// Boot starts an instance cold and returns once its task has asked for
	// its first invocation.
	Boot(ctx context.Context, spec Spec) (Sandbox, error)
	// CanSnapshot reports whether Snapshot and Restore work.
	CanSnapshot() bool
	// Restore starts an instance from a snapshot directory cut by
	// Sandbox.Snapshot, returning once the guest agent has connected.
	Restore(ctx context.Context, spec Spec, snapshot string) (Sandbox, error)
	// Reattach finds a sandbox started by an earlier kindlingd. It returns
	// ErrSandboxGone if the process is no longer there.
	Reattach(ctx context.Context, rec Record) (Sandbox, error)
}

// StandbyBackend is a Backend that can restore a snapshot ahead of need,
// leaving the sandbox before its first instruction: a restore's costly
// part (a new jailed VMM, its VM) then happens off the invocation's path.
type StandbyBackend interface {
	PrepareRestore(ctx context.Context, spec Spec, snapshot string) (Standby, error)
}

// Standby is a sandbox restored but not yet started. It has served
// nobody: its memory is the snapshot's, untouched.
type Standby interface {
	Record() Record
	// Exited is closed if its process ends.
	Exited() <-chan struct{}
	// Start runs it and returns the sandbox once its agent is connected.
	// On error the standby is gone.
	Start(ctx context.Context) (Sandbox, error)
	// Discard stops it unstarted.
	Discard(ctx context.Context) error
}

// WorkingSetRecorder is a Sandbox that can say which pages of the
// snapshot it was restored from its guest has touched: the file it
// returns goes beside the snapshot, and later restores load those pages
// up front instead of faulting on each (REAP).
type WorkingSetRecorder interface {
	RecordWorkingSet(ctx context.Context) (path string, pages int, err error)
}

// Sandbox is one running instance: a guest agent and its task, in a
// microVM or a jailed host process. One invocation runs at a time.
type Sandbox interface {
	Record() Record
	// Invoke runs one invocation; logs receives the task's output lines
	// while it runs. A handler error or timeout is a Frame of
	// guest.TypeError; an error return means no result came (the sandbox
	// died: the error names how, and wraps ErrSandboxCrashed).
	Invoke(ctx context.Context, id string, payload []byte, timeout time.Duration, logs func(guest.Frame)) (guest.Frame, error)
	// Snapshot cuts a full snapshot into dir; the sandbox keeps running.
	Snapshot(ctx context.Context, dir string) error
	// Exited is closed when the sandbox's process has ended.
	Exited() <-chan struct{}
	// ExitReason says how it ended ("killed by signal 9"), once Exited.
	ExitReason() string
	// Stop ends the sandbox and removes its directory.
	Stop(ctx context.Context) error
}

var (
	// ErrSandboxGone: a recorded sandbox's process is no longer running.
	ErrSandboxGone = errors.New("sandbox is gone")
	// ErrSandboxCrashed: the sandbox died while it was running an
	// invocation.
	ErrSandboxCrashed = errors.New("sandbox crashed")
	// ErrNoSnapshots: the backend cannot snapshot.
	ErrNoSnapshots = errors.New("this backend cannot snapshot")
)
