// Package host is kindlingd: the gRPC service a control plane drives, the
// function registry, warm pools with per-tenant sub-pools, invocations
// (idempotent by ID, asynchronous ones on disk before they are accepted),
// and the sandboxes that run them, behind one Sandbox interface with a
// microVM and a process backend.
//
// Lock order: Daemon.mu, then a gate's mu. Daemon.mu is never held across
// a sandbox call, a store write or a gRPC send.
package host

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/hostnet"
	"github.com/kindlingvm/kindling/agent/profiles"
	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/snapshot"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

// Config is how a Daemon runs.
type Config struct {
	// StateDir holds the state store, sandboxes' directories, extracted
	// images and warm snapshots.
	StateDir string
	// Backend starts new sandboxes; Backends (by name) reattach sandboxes
	// a previous kindlingd started, whichever backend it used.
	Backend       Backend
	BackendReason string
	Backends      map[string]Backend
	// Host is the KVM check made at start-up, reported by HostStatus.
	Host *hostcheck.Report
	// MaxInstances bounds the sandboxes on this host; default 512.
	MaxInstances int
	// Retention is how long finished invocations stay retrievable;
	// default 24 hours.
	Retention time.Duration
	// Net makes sandboxes' network namespaces for functions with network
	// egress (the same Host the backends were given); nil, with
	// NetReason saying why, refuses such functions.
	Net       *hostnet.Host
	NetReason string
	// StandbyRestores is how many sandboxes per function version with a
	// warm snapshot are kept restored and unstarted, so that a new
	// tenant's restore skips launching a VMM; 0 turns them off. Only
	// backends that can (the microVM one) keep them.
	StandbyRestores int
	// MaxAsyncPending bounds accepted, unfinished asynchronous invocations
	// per function version; default 10000.
	MaxAsyncPending int
	// Version is kindlingd's own, for HostStatus.
	Version string
	Logger  *slog.Logger
}

// Daemon is kindlingd's engine; it implements api.KindlingServer.
type Daemon struct {
	api.UnimplementedKindlingServer

	cfg     Config
	log     *slog.Logger
	store   *store
	backend Backend
	metrics *metrics
	// profiles holds the versions' merged CPU profiles.
	profiles *profiles.Store

	// ctx ends when the daemon closes; invocations run under it, not under
	// their callers' contexts, so a caller that goes away loses nothing.
	ctx    context.Context
	cancel context.CancelFunc
	// queueCtx ends when draining starts: accepted asynchronous
	// invocations still queued stop waiting (they stay on disk).
	queueCtx    context.Context
	queueCancel context.CancelFunc
	inflight    sync.WaitGroup
	bg          sync.WaitGroup

	mu          sync.Mutex
	functions   map[fnKey]*function
	instances   map[string]*instance
	invocations map[string]*invocation
	finished    []string // finished invocation IDs in memory, oldest first
	draining    bool
}

// maxFinishedInMemory bounds the finished invocations kept in memory;
// asynchronous ones stay retrievable from the store after that.
const maxFinishedInMemory = 100_000

// New opens the state store, loads the functions, reattaches the
// sandboxes a previous kindlingd left running and resumes the accepted
// asynchronous invocations.
func New(cfg Config) (*Daemon, error) {
	if cfg.Backend == nil {
		return nil, errors.New("kindlingd: no sandbox backend")
	}
	if cfg.MaxInstances == 0 {
		cfg.MaxInstances = 512
	}
	if cfg.Retention == 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.MaxAsyncPending == 0 {
		cfg.MaxAsyncPending = 10000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Backends == nil {
		cfg.Backends = map[string]Backend{}
	}
	if cfg.Backends[cfg.Backend.Name()] == nil {
		cfg.Backends[cfg.Backend.Name()] = cfg.Backend
	}
	st, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, store: st, backend: cfg.Backend,
		functions: map[fnKey]*function{}, instances: map[string]*instance{}, invocations: map[string]*invocation{}}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.queueCtx, d.queueCancel = context.WithCancel(d.ctx)
	d.metrics = newMetrics(d)
	if d.profiles, err = profiles.Open(filepath.Join(cfg.StateDir, "profiles")); err != nil {
		st.close()
		return nil, fmt.Errorf("kindlingd: profiles: %w", err)
	}
	if err := d.loadFunctions(); err != nil {
		d.profiles.Close()
		st.close()
		return nil, err
	}
	d.reattach()
	if err := d.recoverInvocations(); err != nil {
		d.Close()
		return nil, err
	}
	d.bg.Add(1)
	go d.loop()
	return d, nil
}

// Registry is the daemon's Prometheus registry.
func (d *Daemon) Registry() *prometheus.Registry { return d.metrics.reg }

// Backend is the backend in force.
func (d *Daemon) Backend() Backend { return d.backend }

func (d *Daemon) loop() {
	defer d.bg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	flush := time.NewTicker(profileFlushEvery)
	defer flush.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
			d.housekeeping(d.ctx)
		case <-flush.C:
			if err := d.profiles.Flush(); err != nil {
				d.log.Warn("cannot save the versions' profiles", "error", err)
			}
		case <-prune.C:
			if n, err := d.store.pruneInvocations(time.Now().Add(-d.cfg.Retention)); err != nil {
				d.log.Warn("prune finished invocations", "error", err)
			} else if n > 0 {
				d.log.Info("pruned finished invocations", "count", n, "older_than", d.cfg.Retention)
			}
		}
	}
}

// Drain refuses new work and waits until the invocations that hold an
// instance or a synchronous caller finish, or ctx ends. Accepted
// asynchronous invocations still queued stay on disk for the next start.
// Sandboxes are left running for the next kindlingd to reattach.
func (d *Daemon) Drain(ctx context.Context) error {
	d.mu.Lock()
	d.draining = true
	d.mu.Unlock()
	d.queueCancel()
	done := make(chan struct{})
	go func() { d.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain: %w with invocations still running", ctx.Err())
	}
}

// Close stops the daemon's work and closes the store. Sandboxes keep
// running: a restarted kindlingd reattaches to them.
func (d *Daemon) Close() error {
	d.cancel()
	d.bg.Wait()
	// Standbys serve nobody and a restarted kindlingd could not use them.
	d.mu.Lock()
	var standbys []*standbyVM
	for _, fn := range d.functions {
		standbys = append(standbys, d.dropStandbysLocked(fn)...)
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, sv := range standbys {
		wg.Add(1)
		go func() { defer wg.Done(); d.discardStandby(sv, "kindlingd is stopping") }()
	}
	wg.Wait()
	if err := d.profiles.Close(); err != nil {
		d.log.Warn("cannot save the versions' profiles", "error", err)
	}
	return d.store.close()
}

// StopAll stops every sandbox (for tests and for a host being retired).
func (d *Daemon) StopAll() {
	d.mu.Lock()
	var all []*instance
	for _, inst := range d.instances {
		all = append(all, inst)
		d.forgetLocked(inst)
	}
	for _, fn := range d.functions {
		fn.pools = map[string][]*instance{}
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, inst := range all {
		wg.Add(1)
		go func() { defer wg.Done(); d.stopInstance(inst, "stopping all") }()
	}
	wg.Wait()
}

func newInstanceID() string { return "sb-" + randomHex(6) }

func newInvocationID() string { return "inv-" + randomHex(16) }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newFunction builds the in-memory function from a checked spec.
func (d *Daemon) newFunction(spec *api.FunctionSpec, registered time.Time, snapshot string) (*function, error) {
	m, err := checkImage(spec.Image)
	if err != nil {
		return nil, err
	}
	fn := &function{key: fnKey{spec.Name, spec.Version}, spec: spec, manifest: m, template: m.CPUTemplate, registered: registered,
		gate: &gate{limit: int(spec.ConcurrencyLimit), queueLimit: int(spec.QueueLimit)}, snapshot: snapshot, pools: map[string][]*instance{}}
	if spec.CpuTemplate != "" {
		t, err := cpuid.Builtin(spec.CpuTemplate)
		if err != nil {
			return nil, invalid("function.cpu_template", "%v", err)
		}
		fn.template = t
	}
	return fn, nil
}

func (d *Daemon) saveFunction(fn *function) error {
	b, err := protojson.Marshal(fn.spec)
	if err != nil {
		return err
	}
	d.mu.Lock()
	rec := functionRecord{Spec: b, RegisteredNs: fn.registered.UnixNano(), Snapshot: fn.snapshot, Seal: fn.seal}
	d.mu.Unlock()
	return d.store.put(bucketFunctions, fn.key.String(), rec)
}

// loadFunctions reads the registry. A function whose image changed or
// vanished since it was registered is kept out of service and logged,
// never deleted.
func (d *Daemon) loadFunctions() error {
	return d.store.each(bucketFunctions, func(key string, val []byte) error {
		var rec functionRecord
		if err := json.Unmarshal(val, &rec); err != nil {
			return corrupt(d.store.path, fmt.Errorf("function %s: %w", key, err))
		}
		spec := &api.FunctionSpec{}
		if err := protojson.Unmarshal(rec.Spec, spec); err != nil {
			return corrupt(d.store.path, fmt.Errorf("function %s: %w", key, err))
		}
		fn, err := d.newFunction(spec, time.Unix(0, rec.RegisteredNs), rec.Snapshot)
		if err != nil {
			d.log.Error("function out of service: its image no longer matches", "function", spec.Name, "version", spec.Version, "error", err)
			return nil
		}
		if fn.snapshot != "" {
			// Its digests are checked on first use: kindlingd did not
			// watch the files while it was down.
			fn.seal = rec.Seal
			fn.hasWorkingSet = rec.Seal.Has(snapshot.WorkingSetFile)
			if _, err := os.Stat(fn.snapshot); err != nil {
				fn.snapshot, fn.seal = "", nil
			}
		}
		d.functions[fn.key] = fn
		d.loadArtifacts(fn)
		return nil
	})
}

// reattach finds the sandboxes a previous kindlingd left running. Those
// that answer go back to their pools (busy, if recoverInvocations has an
// invocation for them); the rest are forgotten.
func (d *Daemon) reattach() {
	var recs []sandboxRecord
	var bad []string
	d.store.each(bucketSandboxes, func(key string, val []byte) error {
		var r sandboxRecord
		if err := json.Unmarshal(val, &r); err != nil {
			d.log.Warn("unreadable sandbox record; forgetting it", "instance", key, "error", err)
			bad = append(bad, key) // deleted after the read transaction
			return nil
		}
		recs = append(recs, r)
		return nil
	})
	for _, key := range bad {
		d.store.delete(bucketSandboxes, key)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, r := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := d.log.With("instance", r.ID, "function", r.Function, "version", r.Version, "tenant", r.Tenant)
			fn := d.functions[fnKey{r.Function, r.Version}]
			b := d.cfg.Backends[r.Backend]
			var sb Sandbox
			err := fmt.Errorf("no %s backend to reattach it with", r.Backend)
			if b != nil {
				ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
				sb, err = b.Reattach(ctx, r.Record)
				cancel()
			}
			if err != nil && r.StartKind == startStandby {
				log.Info("standby from before the restart stopped", "error", err)
				d.store.delete(bucketSandboxes, r.ID)
				os.RemoveAll(r.Dir)
				return
			}
			if err != nil {
				log.Warn("sandbox not reattached", "error", err)
				d.store.delete(bucketSandboxes, r.ID)
				os.RemoveAll(r.Dir)
				return
			}
			inst := &instance{id: r.ID, fn: fn, tenant: r.Tenant, sb: sb, startKind: r.StartKind, started: time.Unix(0, r.StartedNs), state: instIdle, lastUsed: time.Now()}
			if fn == nil {
				log.Info("sandbox's function is gone; stopping it")
				inst.fn = &function{key: fnKey{r.Function, r.Version}}
				d.stopInstance(inst, "function deleted")
				return
			}
			mu.Lock()
			d.instances[r.ID] = inst
			d.watchProfiles(inst)
			fn.pools[r.Tenant] = append(fn.pools[r.Tenant], inst)
			mu.Unlock()
			log.Info("sandbox reattached", "pid", r.PID)
		}()
	}
	wg.Wait()
	// Networks of sandboxes that are gone (a mounted namespace file would
	// keep their directories), then their directories: leftovers of a
	// crash, never reused.
	if d.cfg.Net != nil {
		removed, err := d.cfg.Net.Sweep(filepath.Join(d.cfg.StateDir, "sandboxes"), func(id string) bool { return d.instances[id] != nil })
		if len(removed) > 0 || err != nil {
			d.log.Warn("removed the networks of sandboxes that are gone", "removed", removed, "error", err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(d.cfg.StateDir, "sandboxes"))
	for _, e := range entries {
		if d.instances[e.Name()] == nil {
			os.RemoveAll(filepath.Join(d.cfg.StateDir, "sandboxes", e.Name()))
		}
	}
}
