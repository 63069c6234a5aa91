package host

// What a version's instances learn and carry to the next version: CPU
// profiles from the guest agents (checked against the version's task
// build, merged per version), the task CPU each invocation used, and the
// artifacts of its warm-ups (Node's compile cache), served to the
// `kindling image build` that makes the next version.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/google/pprof/profile"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/agent/profiles"
	"github.com/kindlingvm/kindling/cpuid/isa"
	"github.com/kindlingvm/kindling/rootfs"
)

// artifactChunk is the size of a GetArtifact message.
const artifactChunk = 1 << 20

// watchProfiles routes inst's agent's profiles into the version's merged
// profile.
func (d *Daemon) watchProfiles(inst *instance) {
	l, ok := inst.sb.(linked)
	if !ok || d.profiles == nil {
		return
	}
	fn := inst.fn
	l.agent().setProfiles(func(f guest.Frame) { d.takeProfile(fn, inst.id, f) })
}

// takeProfile checks one shipped profile and merges it, or refuses it: a
// profile that is not one, is of another kind, or of another build of the
// task is never merged.
func (d *Daemon) takeProfile(fn *function, instance string, f guest.Frame) {
	log := d.log.With("function", fn.key.name, "version", fn.key.version, "instance", instance)
	p, err := profiles.Check(f.Body, profiles.Expect{BuildID: fn.manifest.TaskBuildID})
	if err == nil {
		err = d.profiles.Add(fn.key.name, fn.key.version, p, f.Count, f.CPUNs)
	}
	if err != nil {
		d.profiles.Refused(fn.key.name, fn.key.version, err)
		d.metrics.profiles.WithLabelValues("refused").Inc()
		log.Warn("profile refused", "error", err)
		return
	}
	d.metrics.profiles.WithLabelValues("merged").Inc()
	log.Debug("profile merged", "invocations", f.Count, "samples", len(p.Sample))
}

// recordUsage adds an invocation's task CPU to its version's usage.
func (d *Daemon) recordUsage(fn *function, f guest.Frame) {
	if f.CPUNs <= 0 {
		return
	}
	d.mu.Lock()
	fn.usageInvocations++
	fn.usageCPUNs += uint64(f.CPUNs)
	d.mu.Unlock()
}

// usageLocked is fn's usage for the API.
func (d *Daemon) usageLocked(fn *function) *api.VersionUsage {
	u := &api.VersionUsage{Invocations: fn.usageInvocations, CpuNs: fn.usageCPUNs}
	if u.Invocations > 0 {
		u.CpuNsPerInvocation = u.CpuNs / u.Invocations
	}
	for name := range fn.artifacts {
		u.Artifacts = append(u.Artifacts, name)
	}
	sort.Strings(u.Artifacts)
	return u
}

// artifactDir holds a version's artifacts, each at artifactPath.
func (d *Daemon) artifactDir(fn *function) string {
	return filepath.Join(d.cfg.StateDir, "artifacts", fn.key.name, fn.key.version)
}

func (d *Daemon) artifactPath(fn *function, name string) string {
	return filepath.Join(d.artifactDir(fn), name+".tar")
}

// collectArtifacts asks a freshly warmed instance for what its warm-ups
// produced that the next image can carry (a Node task's compile cache),
// once per version.
func (d *Daemon) collectArtifacts(ctx context.Context, inst *instance, log *slog.Logger) {
	fn := inst.fn
	l, ok := inst.sb.(linked)
	if !ok || fn.manifest.Run.CompileCache == "" {
		return
	}
	name := guest.ArtifactNodeCompileCache
	d.mu.Lock()
	have := fn.artifacts[name]
	d.mu.Unlock()
	if have {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, fn.checkpointTimeout())
	data, err := l.agent().collect(cctx, name)
	cancel()
	if err == nil {
		err = writeFileAtomic(d.artifactPath(fn, name), data)
	}
	if err != nil {
		log.Warn("artifact not collected", "artifact", name, "error", err)
		return
	}
	d.mu.Lock()
	if fn.artifacts == nil {
		fn.artifacts = map[string]bool{}
	}
	fn.artifacts[name] = true
	d.mu.Unlock()
	log.Info("artifact collected", "artifact", name, "bytes", len(data))
}

// loadArtifacts finds the artifacts kept for fn (after a restart).
func (d *Daemon) loadArtifacts(fn *function) {
	for _, name := range []string{guest.ArtifactNodeCompileCache} {
		if _, err := os.Stat(d.artifactPath(fn, name)); err == nil {
			if fn.artifacts == nil {
				fn.artifacts = map[string]bool{}
			}
			fn.artifacts[name] = true
		}
	}
}

// forgetLearned removes what fn's instances learned.
func (d *Daemon) forgetLearned(fn *function) {
	if d.profiles != nil {
		if err := d.profiles.Delete(fn.key.name, fn.key.version); err != nil {
			d.log.Warn("cannot delete the version's profile", "function", fn.key, "error", err)
		}
	}
	os.RemoveAll(d.artifactDir(fn))
}

func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// GetProfile returns a version's merged CPU profile, its usage and the
// hardware hints its profile gives.
func (d *Daemon) GetProfile(ctx context.Context, req *api.GetProfileRequest) (*api.GetProfileResponse, error) {
	fn, err := d.lookup(req.Function, req.Version)
	if err != nil {
		return nil, err
	}
	resp := &api.GetProfileResponse{Version: fn.key.version}
	d.mu.Lock()
	resp.Usage = d.usageLocked(fn)
	d.mu.Unlock()
	if d.profiles == nil {
		return resp, nil
	}
	data, st, err := d.profiles.Get(fn.key.name, fn.key.version)
	resp.Profiles, resp.Refused, resp.Samples = uint64(st.Profiles), uint64(st.Refused), uint64(st.Samples)
	resp.Usage.ProfileSamples = resp.Samples
	if errors.Is(err, os.ErrNotExist) {
		return resp, nil
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "profile of %s: %v", fn.key, err)
	}
	resp.Profile = data
	hints, err := d.hints(fn, data)
	if err != nil {
		d.log.Warn("no hardware hints", "function", fn.key, "error", err)
	}
	for _, h := range hints {
		resp.Hints = append(resp.Hints, &api.HardwareHint{Extension: h.Extension, Fraction: h.Fraction, Wanted: h.Wanted, Functions: h.Functions})
	}
	return resp, nil
}

// hints reads the version's profile against the run-time dispatch in its
// task binary.
func (d *Daemon) hints(fn *function, data []byte) ([]profiles.Hint, error) {
	p, err := profile.ParseData(data)
	if err != nil {
		return nil, err
	}
	fn.dispatchOnce.Do(func() { fn.dispatch, fn.dispatchErr = d.taskDispatch(fn) })
	if fn.dispatchErr != nil {
		return nil, fn.dispatchErr
	}
	return profiles.Hints(p, fn.dispatch), nil
}

// taskDispatch analyses the task binary, taken out of the version's
// image.
func (d *Daemon) taskDispatch(fn *function) (*isa.Dispatch, error) {
	tmp, err := os.MkdirTemp(d.cfg.StateDir, "hints-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "root")
	if err := rootfs.Extract(fn.spec.Image.Path, fn.manifest, root); err != nil {
		return nil, fmt.Errorf("task of %s: %w", fn.key, err)
	}
	rep, err := isa.File(filepath.Join(root, "task"))
	if err != nil {
		return nil, err
	}
	return rep.Dispatch(), nil
}

// GetArtifact streams a version's artifact.
func (d *Daemon) GetArtifact(req *api.GetArtifactRequest, st api.Kindling_GetArtifactServer) error {
	fn, err := d.lookup(req.Function, req.Version)
	if err != nil {
		return err
	}
	if req.Name != guest.ArtifactNodeCompileCache {
		return invalid("name", "%q is not an artifact kindlingd collects (%s)", req.Name, guest.ArtifactNodeCompileCache)
	}
	f, err := os.Open(d.artifactPath(fn, req.Name))
	if errors.Is(err, os.ErrNotExist) {
		return status.Errorf(codes.NotFound, "name: %s has no %s yet (a Node image whose warm-up payloads have run in a cold start)", fn.key, req.Name)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "%s of %s: %v", req.Name, fn.key, err)
	}
	defer f.Close()
	buf := make([]byte, artifactChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if err := st.Send(&api.ArtifactChunk{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return status.Errorf(codes.Internal, "%s of %s: %v", req.Name, fn.key, err)
		}
	}
}

// profileFlushEvery paces the profile store's writes to disk.
const profileFlushEvery = 30 * time.Second
