package host

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/rootfs"
)

// Limits on a function version. The memory range is Lambda's (128 MiB to
// 10 GiB), opened down to 64 MiB for small Kindling kernels; 32 vCPUs is
// the VMM's.
const (
	minMemoryMiB       = 64
	maxMemoryMiB       = 10240
	maxVCPUs           = 32
	maxTimeout         = 15 * time.Minute // Lambda's
	defaultMemoryMiB   = 256
	defaultTimeout     = 30 * time.Second
	defaultConcurrency = 10
	defaultKeepAlive   = 10 * time.Minute
	defaultQueueLimit  = 100
	// DefaultCheckpointTimeout bounds a task's before-snapshot hooks, and
	// its after-restore hooks in each restore.
	DefaultCheckpointTimeout = 10 * time.Second
	// maxRecordedWarmups bounds record_warmups, and maxRecordedPayload
	// the size of a payload kept as a warm-up.
	maxRecordedWarmups    = 8
	maxRecordedPayload    = 256 << 10
	maxConcurrency        = 1000
	maxQueueLimit         = 100000
	maxWarmupPayloads     = 16
	maxEnvironmentEntries = 256
)

var (
	nameRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	idRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	envRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	hexRE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

// normalizeSpec checks a function version and fills its defaults. It
// returns the image's manifest, verified against the request's digest.
func normalizeSpec(in *api.FunctionSpec) (*api.FunctionSpec, *rootfs.Manifest, error) {
	if in == nil {
		return nil, nil, invalid("function", "missing")
	}
	s := proto.Clone(in).(*api.FunctionSpec)
	if !nameRE.MatchString(s.Name) {
		return nil, nil, invalid("function.name", "%q: want 1-64 of [A-Za-z0-9_-], starting with a letter or digit", s.Name)
	}
	if s.Version == "" {
		s.Version = "1"
	}
	if !versionRE.MatchString(s.Version) {
		return nil, nil, invalid("function.version", "%q: want 1-64 of [A-Za-z0-9._-]", s.Version)
	}
	if s.MemoryMib == 0 {
		s.MemoryMib = defaultMemoryMiB
	}
	if s.MemoryMib < minMemoryMiB || s.MemoryMib > maxMemoryMiB {
		return nil, nil, invalid("function.memory_mib", "%d is out of range (%d to %d)", s.MemoryMib, minMemoryMiB, maxMemoryMiB)
	}
	if _, ok := api.NetworkPolicy_name[int32(s.Network)]; !ok {
		return nil, nil, invalid("function.network", "%d is not a network policy (NETWORK_NONE or NETWORK_EGRESS)", s.Network)
	}
	if s.Vcpus == 0 {
		s.Vcpus = 1
	}
	if s.Vcpus > maxVCPUs {
		return nil, nil, invalid("function.vcpus", "%d is out of range (1 to %d)", s.Vcpus, maxVCPUs)
	}
	if s.TimeoutMs == 0 {
		s.TimeoutMs = uint32(defaultTimeout / time.Millisecond)
	}
	if time.Duration(s.TimeoutMs)*time.Millisecond > maxTimeout {
		return nil, nil, invalid("function.timeout_ms", "%d is over the %v limit", s.TimeoutMs, maxTimeout)
	}
	if s.ConcurrencyLimit == 0 {
		s.ConcurrencyLimit = defaultConcurrency
	}
	if s.ConcurrencyLimit > maxConcurrency {
		return nil, nil, invalid("function.concurrency_limit", "%d is over %d", s.ConcurrencyLimit, maxConcurrency)
	}
	if s.QueueLimit == 0 {
		s.QueueLimit = defaultQueueLimit
	}
	if s.QueueLimit > maxQueueLimit {
		return nil, nil, invalid("function.queue_limit", "%d is over %d", s.QueueLimit, maxQueueLimit)
	}
	if s.RecordWarmups > maxRecordedWarmups {
		return nil, nil, invalid("function.record_warmups", "%d is over the limit of %d", s.RecordWarmups, maxRecordedWarmups)
	}
	if s.CheckpointTimeoutMs == 0 {
		s.CheckpointTimeoutMs = uint32(DefaultCheckpointTimeout / time.Millisecond)
	}
	if time.Duration(s.CheckpointTimeoutMs)*time.Millisecond > maxTimeout {
		return nil, nil, invalid("function.checkpoint_timeout_ms", "%d is over the %v limit", s.CheckpointTimeoutMs, maxTimeout)
	}
	if s.KeepAliveMs == 0 {
		s.KeepAliveMs = uint32(defaultKeepAlive / time.Millisecond)
	}
	if s.MinWarm > s.ConcurrencyLimit {
		return nil, nil, invalid("function.min_warm", "%d is over the concurrency limit %d", s.MinWarm, s.ConcurrencyLimit)
	}
	if s.Tenant != "" && !nameRE.MatchString(s.Tenant) {
		return nil, nil, invalid("function.tenant", "%q: want 1-64 of [A-Za-z0-9_-]", s.Tenant)
	}
	if len(s.Environment) > maxEnvironmentEntries {
		return nil, nil, invalid("function.environment", "%d entries, at most %d", len(s.Environment), maxEnvironmentEntries)
	}
	for k := range s.Environment {
		if !envRE.MatchString(k) {
			return nil, nil, invalid("function.environment", "%q is not a variable name", k)
		}
	}
	if len(s.WarmupPayloads) > maxWarmupPayloads {
		return nil, nil, invalid("function.warmup_payloads", "%d payloads, at most %d", len(s.WarmupPayloads), maxWarmupPayloads)
	}
	for i, p := range s.WarmupPayloads {
		if len(p) > guest.MaxPayload {
			return nil, nil, invalid(fmt.Sprintf("function.warmup_payloads[%d]", i), "%d bytes exceeds the %d-byte limit", len(p), guest.MaxPayload)
		}
	}
	if s.CpuTemplate != "" {
		if _, err := cpuid.Builtin(s.CpuTemplate); err != nil {
			return nil, nil, invalid("function.cpu_template", "%v", err)
		}
	}
	m, err := checkImage(s.Image)
	if err != nil {
		return nil, nil, err
	}
	abs, _ := filepath.Abs(s.Image.Path)
	s.Image.Path = abs
	return s, m, nil
}

// checkImage verifies the image directory against the reference's digest.
func checkImage(ref *api.ImageRef) (*rootfs.Manifest, error) {
	if ref == nil || ref.Path == "" {
		return nil, invalid("function.image.path", "missing: the directory written by kindling image build")
	}
	if !hexRE.MatchString(ref.ManifestSha256) {
		return nil, invalid("function.image.manifest_sha256", "%q: want 64 lower-case hex digits (sha256sum %s)", ref.ManifestSha256, filepath.Join(ref.Path, "manifest.json"))
	}
	got, err := rootfs.ManifestDigest(ref.Path)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "function.image.path: %v", err)
	}
	if got != ref.ManifestSha256 {
		return nil, status.Errorf(codes.FailedPrecondition, "function.image.manifest_sha256: %s/manifest.json has sha256 %s, the request says %s", ref.Path, got, ref.ManifestSha256)
	}
	m, err := rootfs.ReadManifest(ref.Path)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "function.image: %v", err)
	}
	return m, nil
}

// checkInvoke validates an invocation request.
func checkInvoke(r *api.InvokeRequest) error {
	if !nameRE.MatchString(r.Function) {
		return invalid("function", "%q is not a function name", r.Function)
	}
	if r.Version != "" && !versionRE.MatchString(r.Version) {
		return invalid("version", "%q: want 1-64 of [A-Za-z0-9._-]", r.Version)
	}
	if r.Tenant != "" && !nameRE.MatchString(r.Tenant) {
		return invalid("tenant", "%q: want 1-64 of [A-Za-z0-9_-]", r.Tenant)
	}
	if len(r.Payload) > guest.MaxPayload {
		return invalid("payload", "%d bytes exceeds the %d-byte limit", len(r.Payload), guest.MaxPayload)
	}
	if r.InvocationId != "" && !idRE.MatchString(r.InvocationId) {
		return invalid("invocation_id", "%q: want 1-128 of [A-Za-z0-9._:-], starting with a letter or digit", truncateID(r.InvocationId))
	}
	return nil
}

func truncateID(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// payloadHash identifies what an invocation ID was first used for.
func payloadHash(function, tenant string, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(function))
	h.Write([]byte{0})
	h.Write([]byte(tenant))
	h.Write([]byte{0})
	h.Write(payload)
	return hex.EncodeToString(h.Sum(nil))
}
