// Package guest is the guest agent: it runs the task, serves it the Lambda
// Runtime API on 127.0.0.1:9001, and carries invocations between the host
// and the task over one stream (vsock in a microVM, a Unix socket when the
// agent runs as a host process: same code). /init duties (mounts, clock,
// entropy) live in cmd/kindling-init; this package is the part that runs
// and is tested anywhere.
package guest

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxPayload bounds a request or response body, as Lambda's 6 MB for
// synchronous invocations.
const MaxPayload = 6 << 20

// maxHeader bounds a frame's JSON header.
const maxHeader = 64 << 10

// MaxLogLine bounds a log frame's body: the agent's line scanner (runTask)
// never produces a longer line, so a peer that declares one is not an
// agent. Without it a log line could be as large as a payload, and a host
// queues many log lines (Client.Logs) where it holds one payload.
const MaxLogLine = 1 << 20

// Message types.
const (
	TypeHello    = "hello"    // host -> agent, on every connection: the time and an entropy seed
	TypeReady    = "ready"    // agent -> host: the task asked for its first invocation
	TypeInvoke   = "invoke"   // host -> agent
	TypeResponse = "response" // agent -> host: the handler's answer
	TypeError    = "error"    // agent -> host: handler error, crash or timeout
	TypeLog      = "log"      // agent -> host: a line the task wrote
	// TypeCheckpoint, host -> agent: get to a point where a snapshot may
	// be cut (the task's before-snapshot hooks run, the task is idle);
	// agent -> host: there now, or not (ErrorType says why).
	TypeCheckpoint = "checkpoint"
	// TypeRestored, agent -> host: answers the hello of a VM restored
	// from a checkpointed snapshot once the clock is set, the entropy
	// pool reseeded and the task's after-restore hooks have run
	// (ErrorType set if one failed). Nothing is invoked before it.
	TypeRestored = "restored"
	// TypeProfile, agent -> host: a pprof CPU profile of the task (gzipped
	// protobuf) over Count invocations and CPUNs of task CPU.
	TypeProfile = "profile"
	// TypeCollect, host -> agent: send the artifact Name (TypeArtifact).
	TypeCollect = "collect"
	// TypeArtifact, agent -> host: the artifact Name as a tar stream, or
	// ErrorType and an error document.
	TypeArtifact = "artifact"
)

// Artifacts a guest agent can be asked for.
const (
	// ArtifactNodeCompileCache is the directory NODE_COMPILE_CACHE points
	// at, filled by the task's runs: baked into the next image, it spares
	// a new environment compiling what the last one compiled.
	ArtifactNodeCompileCache = "node-compile-cache"
)

// SnapStartArg on a guest's kernel command line tells kindling-init that
// its VM may be snapshotted: the task starts with
// AWS_LAMBDA_INITIALIZATION_TYPE=snap-start.
const SnapStartArg = "kindling.snapstart=1"

// MaxArtifact bounds an artifact frame's body.
const MaxArtifact = 64 << 20

// Header is a frame's metadata; the body follows it.
type Header struct {
	Type string `json:"type"`
	// ID is the invocation ID, carried on every message about it.
	ID string `json:"id,omitempty"`
	// DeadlineMs is the invocation's deadline, Unix milliseconds.
	DeadlineMs int64 `json:"deadline_ms,omitempty"`
	// ErrorType classifies an error: the handler's own errorType, or
	// Kindling's "Runtime.Timeout", "Runtime.ExitError", "Runtime.PayloadTooLarge".
	ErrorType string `json:"error_type,omitempty"`
	// Stream names a log line's source: stdout or stderr.
	Stream string `json:"stream,omitempty"`
	// TimeNs is the host's wall clock in a hello, Unix nanoseconds.
	TimeNs int64 `json:"time_ns,omitempty"`
	// SnapStart, on a ready: the task speaks AWS's SnapStart protocol
	// (it asked GET /runtime/restore/next before its first invocation):
	// its before-snapshot hooks ran at the end of its init.
	SnapStart bool `json:"snap_start,omitempty"`
	// CPUNs is the task's CPU time: during an invocation on a response or
	// error, or the profile's span on a profile.
	CPUNs int64 `json:"cpu_ns,omitempty"`
	// Count is how many invocations a profile covers.
	Count int64 `json:"count,omitempty"`
	// Name is an artifact's name (collect, artifact).
	Name string `json:"name,omitempty"`
}

// Frame is one message: a header and a body (payload, response, error
// document or log line).
type Frame struct {
	Header
	Body []byte
}

// WriteFrame writes f as: u32 header length, header JSON, u32 body length,
// body (big-endian lengths).
func WriteFrame(w io.Writer, f Frame) error {
	if limit, what := bodyLimit(f.Type); len(f.Body) > limit {
		return fmt.Errorf("frame body (%s) of %d bytes exceeds %d", what, len(f.Body), limit)
	}
	h, err := json.Marshal(f.Header)
	if err != nil {
		return err
	}
	buf := make([]byte, 0, 8+len(h)+len(f.Body))
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(h)))
	buf = append(buf, h...)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(f.Body)))
	buf = append(buf, f.Body...)
	_, err = w.Write(buf)
	return err
}

// ErrProtocol is a frame that breaks the protocol: a declared length over
// the limits, a header that is not JSON. The stream cannot be read past
// it, and its peer cannot be trusted with it any longer.
var ErrProtocol = errors.New("agent protocol violation")

// ErrFrameTooLarge is a frame whose declared size is over the limits; it
// is an ErrProtocol.
var ErrFrameTooLarge = fmt.Errorf("%w: frame too large", ErrProtocol)

// bodyLimit is the largest body a frame of type typ may carry (the
// reader's limit, and so the writer's), and what such a body is.
func bodyLimit(typ string) (int, string) {
	switch typ {
	case TypeLog:
		return MaxLogLine, "a log line"
	case TypeArtifact:
		return MaxArtifact, "an artifact"
	}
	return MaxPayload, "a body"
}

// ReadFrame reads one frame; the lengths come from the peer and are
// checked before anything is allocated.
func ReadFrame(r io.Reader) (Frame, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return Frame{}, err
	}
	hl := binary.BigEndian.Uint32(n[:])
	if hl > maxHeader {
		return Frame{}, fmt.Errorf("%w: a header of %d bytes, above the %d-byte limit", ErrFrameTooLarge, hl, maxHeader)
	}
	h := make([]byte, hl)
	if _, err := io.ReadFull(r, h); err != nil {
		return Frame{}, unexpected(err)
	}
	var f Frame
	if err := json.Unmarshal(h, &f.Header); err != nil {
		return Frame{}, fmt.Errorf("%w: frame header: %w", ErrProtocol, err)
	}
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return Frame{}, unexpected(err)
	}
	bl := binary.BigEndian.Uint32(n[:])
	limit, what := bodyLimit(f.Type)
	if bl > uint32(limit) {
		return Frame{}, fmt.Errorf("%w: %s of %d bytes, above the %d-byte limit", ErrFrameTooLarge, what, bl, limit)
	}
	f.Body = make([]byte, bl)
	if _, err := io.ReadFull(r, f.Body); err != nil {
		return Frame{}, unexpected(err)
	}
	return f, nil
}

// unexpected turns EOF inside a frame into ErrUnexpectedEOF: the peer
// closed mid-message.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
