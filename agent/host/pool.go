package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/cpuid/isa"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/snapshot"
)

// errQueueFull is a function whose queue is at its limit.
var errQueueFull = errors.New("queue full")

// gate is a function version's concurrency limit with its bounded queue.
// A released slot passes straight to the oldest waiter, so the queue is
// served in order.
type gate struct {
	mu         sync.Mutex
	limit      int
	queueLimit int
	running    int
	waiters    []chan struct{}
}

// reserve takes a slot (nil: run now) or a place in the queue (a channel
// closed when the slot is handed over). bounded places count against the
// queue limit; unbounded ones (accepted asynchronous invocations, already
// on disk) do not.
func (g *gate) reserve(bounded bool) (chan struct{}, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running < g.limit {
		g.running++
		return nil, nil
	}
	if bounded && len(g.waiters) >= g.queueLimit {
		return nil, errQueueFull
	}
	ch := make(chan struct{})
	g.waiters = append(g.waiters, ch)
	return ch, nil
}

// wait waits for a reserved place; on ctx's end it gives the place up.
func (g *gate) wait(ctx context.Context, ch chan struct{}) error {
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, w := range g.waiters {
		if w == ch {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			return ctx.Err()
		}
	}
	// Handed over while we gave up: pass it on.
	g.releaseLocked()
	return ctx.Err()
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.releaseLocked()
}

func (g *gate) releaseLocked() {
	if len(g.waiters) > 0 {
		close(g.waiters[0])
		g.waiters = g.waiters[1:]
		return
	}
	g.running--
}

func (g *gate) depth() (running, queued int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.running, len(g.waiters)
}

// fnKey names a function version.
type fnKey struct{ name, version string }

func (k fnKey) String() string { return k.name + ":" + k.version }

// function is a registered version and its pools. Fields after mu's
// comment are guarded by Daemon.mu.
type function struct {
	key        fnKey
	spec       *api.FunctionSpec
	manifest   *rootfs.Manifest
	template   *cpuid.Template
	registered time.Time
	gate       *gate

	// snapMu serialises cutting the warm snapshot.
	snapMu sync.Mutex
	// sealMu serialises digesting the warm snapshot, so that concurrent
	// restores on first use digest it once.
	sealMu sync.Mutex
	// dispatch is its task's run-time dispatch (cpuid/isa), read once,
	// for the hints of every GetProfile.
	dispatchOnce sync.Once
	dispatch     *isa.Dispatch
	dispatchErr  error

	// Guarded by Daemon.mu:
	snapshot string
	// seal is the snapshot's files as cut; sealVerified says their
	// digests were checked by this daemon, so a stat per file suffices
	// until one differs.
	seal         *snapshot.Seal
	sealVerified bool
	// snapGen counts the snapshots cut; hasWorkingSet says the current
	// one has its working set recorded (or being recorded).
	snapGen       uint64
	hasWorkingSet bool
	// standby are sandboxes restored from the snapshot, not started
	// (standby.go); standbyFilling and standbyAfter pace their refill.
	standby        []*standbyVM
	standbyFilling bool
	standbyAfter   time.Time
	pools          map[string][]*instance // idle instances by tenant, most recently used last
	deleted        bool
	refilling      bool
	// refillAfter backs refills off after a failed start.
	refillAfter time.Time
	// asyncPending counts accepted, unfinished asynchronous invocations.
	asyncPending int
	// snapAbandoned says why the last warm snapshot was abandoned (its
	// checkpoint failed: a before-snapshot hook hung or failed): cold
	// starts stop trying, and the version serves without one, until a
	// Prewarm asks again.
	snapAbandoned string
	// usage is what its invocations have cost (their task CPU).
	usageInvocations, usageCPUNs uint64
	// artifacts collected from its warm-ups, by name.
	artifacts map[string]bool
	// recorded are warm-up payloads taken from real traffic
	// (record_warmups).
	recorded [][]byte
}

// warmups are the payloads a new instance is warmed with: the registered
// ones, or those recorded from traffic.
func (d *Daemon) warmups(fn *function) [][]byte {
	if len(fn.spec.WarmupPayloads) > 0 {
		return fn.spec.WarmupPayloads
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return fn.recorded
}

// recordWarmup keeps a successful invocation's payload as a warm-up, if
// the version asks for that and it is its owner's.
func (d *Daemon) recordWarmup(fn *function, tenant string, payload []byte) {
	n := int(fn.spec.RecordWarmups)
	if n == 0 || len(fn.spec.WarmupPayloads) > 0 || tenant != fn.spec.Tenant || len(payload) > maxRecordedPayload {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(fn.recorded) < n {
		fn.recorded = append(fn.recorded, append([]byte(nil), payload...))
	}
}

func (f *function) checkpointTimeout() time.Duration {
	if f.spec.CheckpointTimeoutMs == 0 {
		return DefaultCheckpointTimeout
	}
	return time.Duration(f.spec.CheckpointTimeoutMs) * time.Millisecond
}

func (f *function) timeout() time.Duration {
	return time.Duration(f.spec.TimeoutMs) * time.Millisecond
}

func (f *function) keepAlive() time.Duration {
	return time.Duration(f.spec.KeepAliveMs) * time.Millisecond
}

func (f *function) env() []string {
	var env []string
	for k, v := range f.spec.Environment {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}

// Instance states.
const (
	instStarting = "starting"
	instIdle     = "idle"
	instBusy     = "busy"
)

// Start kinds.
const (
	startWarm    = "warm"
	startRestore = "restore"
	startCold    = "cold"
)

// instance is a sandbox serving one function version for one tenant. Its
// mutable fields are guarded by Daemon.mu.
type instance struct {
	id        string
	fn        *function
	tenant    string
	sb        Sandbox
	startKind string
	started   time.Time
	// snapGen is the generation of the warm snapshot it was restored
	// from (function.snapGen), so a working set is never recorded for a
	// snapshot cut after it.
	snapGen uint64

	state string
	fresh bool // started for the invocation that acquires it
	// How long its start took, by phase (for Prewarm's answer).
	bootTook, warmupTook, snapshotTook time.Duration
	// warmupsRun before its snapshot was cut; snapStart: its task speaks
	// SnapStart.
	warmupsRun  int
	snapStart   bool
	lastUsed    time.Time
	invocations uint64
}

func (i *instance) alive() bool {
	select {
	case <-i.sb.Exited():
		return false
	default:
		return true
	}
}

// acquire finds an instance of fn for tenant: an idle one of the tenant's
// sub-pool, else one restored from the version's warm snapshot, else a
// cold boot (which runs the warm-ups and cuts the snapshot if there is
// none yet).
func (d *Daemon) acquire(ctx context.Context, fn *function, tenant string, log *slog.Logger) (*instance, error) {
	d.mu.Lock()
	for {
		idle := fn.pools[tenant]
		if len(idle) == 0 {
			break
		}
		inst := idle[len(idle)-1]
		fn.pools[tenant] = idle[:len(idle)-1]
		if !inst.alive() {
			d.forgetLocked(inst)
			go d.stopInstance(inst, "died while idle: "+inst.sb.ExitReason())
			continue
		}
		inst.state = instBusy
		d.mu.Unlock()
		d.metrics.starts.WithLabelValues(startWarm).Inc()
		return inst, nil
	}
	snapshot := fn.snapshot
	sv := d.takeStandbyLocked(fn)
	d.mu.Unlock()
	if sv != nil {
		inst, err := d.startFromStandby(ctx, fn, tenant, sv)
		if err == nil || errors.Is(err, errHostFull) {
			return inst, err
		}
		log.Warn("starting a standby restore failed; restoring on demand", "error", err)
	}
	if snapshot != "" && d.backend.CanSnapshot() {
		inst, err := d.startInstance(ctx, fn, tenant, startRestore, snapshot)
		if err == nil || errors.Is(err, errHostFull) {
			return inst, err
		}
		log.Warn("restore from the warm snapshot failed; dropping it and booting cold (which cuts a new one)", "snapshot", snapshot, "error", err)
		d.dropSnapshot(fn, snapshot)
	}
	return d.startInstance(ctx, fn, tenant, startCold, "")
}

// checkSnapshot refuses a warm snapshot whose files are not the ones that
// were cut: a stat per file on each restore, their digests once per
// daemon lifetime (it did not watch them while it was down) and whenever
// a stat differs.
func (d *Daemon) checkSnapshot(fn *function, dir string) error {
	d.mu.Lock()
	seal, verified := fn.seal, fn.sealVerified
	d.mu.Unlock()
	if seal == nil {
		return fmt.Errorf("warm snapshot %s has no seal to check it against", dir)
	}
	if verified && seal.Unchanged(dir) == nil {
		return nil
	}
	fn.sealMu.Lock()
	defer fn.sealMu.Unlock()
	d.mu.Lock()
	seal, verified = fn.seal, fn.sealVerified
	d.mu.Unlock()
	if verified && seal.Unchanged(dir) == nil {
		return nil // another restore just verified it
	}
	t0 := time.Now()
	now, err := seal.Verify(dir)
	if err != nil {
		d.log.Error("warm snapshot refused: it is not what was cut", "function", fn.key.name, "version", fn.key.version, "error", err)
		return err
	}
	d.mu.Lock()
	if fn.snapshot == dir {
		fn.seal, fn.sealVerified = now, true
	}
	d.mu.Unlock()
	d.log.Info("warm snapshot digests verified", "function", fn.key.name, "version", fn.key.version, "took", time.Since(t0).Round(time.Microsecond))
	return nil
}

// recordWorkingSet stores, beside the warm snapshot inst was restored
// from, the pages its first invocation touched, once per snapshot, and
// seals the snapshot again with the new file.
func (d *Daemon) recordWorkingSet(inst *instance) {
	r, ok := inst.sb.(WorkingSetRecorder)
	if !ok {
		return
	}
	fn := inst.fn
	d.mu.Lock()
	if fn.hasWorkingSet || fn.snapGen != inst.snapGen || fn.snapshot == "" || fn.seal == nil {
		d.mu.Unlock()
		return
	}
	fn.hasWorkingSet = true
	d.mu.Unlock()
	log := d.log.With("function", fn.key.name, "version", fn.key.version, "instance", inst.id)
	ctx, cancel := context.WithTimeout(d.ctx, startTimeout)
	defer cancel()
	src, pages, err := r.RecordWorkingSet(ctx)
	if err != nil {
		log.Warn("cannot record the working set; restores fault pages in one by one", "error", err)
		return
	}
	defer os.Remove(src)
	fn.snapMu.Lock()
	defer fn.snapMu.Unlock()
	fn.sealMu.Lock()
	defer fn.sealMu.Unlock()
	d.mu.Lock()
	dir, gen, old := fn.snapshot, fn.snapGen, fn.seal
	d.mu.Unlock()
	if gen != inst.snapGen || dir == "" {
		return // cut again (or dropped) meanwhile
	}
	dst := filepath.Join(dir, snapshot.WorkingSetFile)
	tmp := filepath.Join(filepath.Dir(dir), ".workingset-"+inst.id)
	err = copySnapshotFile(src, tmp)
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	var seal *snapshot.Seal
	if err == nil {
		// Adds the new file's digest only after checking the others are
		// as sealed: a change made since the cut is never vouched for.
		seal, err = old.Add(dir, snapshot.WorkingSetFile)
	}
	if err != nil {
		os.Remove(tmp)
		os.Remove(dst)
		log.Warn("cannot store the working set; restores fault pages in one by one", "error", err)
		return
	}
	d.mu.Lock()
	fn.seal, fn.sealVerified = seal, true
	d.mu.Unlock()
	if err := d.saveFunction(fn); err != nil {
		log.Error("cannot record the snapshot's new seal", "error", err)
	}
	log.Info("working set recorded", "pages", pages, "dir", dir)
}

// copySnapshotFile copies a file the (jailed) VMM wrote into a snapshot
// file: root's, readable by the jails' group, as shareSnapshot leaves
// the others.
func copySnapshotFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, 0o640); err != nil {
		return err
	}
	return shareSnapshot(dst)
}

// dropSnapshot forgets a warm snapshot that failed to restore, so the
// next cold boot cuts a new one instead of every start paying for it.
func (d *Daemon) dropSnapshot(fn *function, dir string) {
	fn.snapMu.Lock()
	defer fn.snapMu.Unlock()
	d.mu.Lock()
	if fn.snapshot != dir {
		d.mu.Unlock()
		return
	}
	fn.snapshot, fn.seal, fn.sealVerified = "", nil, false
	stale := d.dropStandbysLocked(fn)
	d.mu.Unlock()
	for _, sv := range stale {
		d.bgDiscard(sv, "its snapshot was dropped")
	}
	if err := d.saveFunction(fn); err != nil {
		d.log.Warn("cannot record the dropped snapshot", "function", fn.key.name, "version", fn.key.version, "error", err)
	}
}

// makeRoomLocked stops the least recently used idle instance of any
// function when the host is at its instance limit.
func (d *Daemon) makeRoomLocked() error {
	if len(d.instances)+d.standbysLocked() < d.cfg.MaxInstances {
		return nil
	}
	if d.evictStandbyLocked() {
		return nil
	}
	var lru *instance
	for _, inst := range d.instances {
		if inst.state == instIdle && (lru == nil || inst.lastUsed.Before(lru.lastUsed)) {
			lru = inst
		}
	}
	if lru == nil {
		return fmt.Errorf("%w: this host runs its limit of %d instances, all busy", errHostFull, d.cfg.MaxInstances)
	}
	d.removeIdleLocked(lru)
	d.forgetLocked(lru)
	go d.stopInstance(lru, "evicted to make room")
	return nil
}

var errHostFull = errors.New("host full")

// startTimeout bounds a boot or restore, to the task's first request for
// an invocation: a task that never gets there is stopped.
const startTimeout = time.Minute

// startInstance boots or restores a sandbox, runs the version's warm-ups
// in it and, after a cold boot, cuts the warm snapshot if the version has
// none. The instance is returned busy.
func (d *Daemon) startInstance(ctx context.Context, fn *function, tenant, kind, snapshot string) (*instance, error) {
	id := newInstanceID()
	spec, err := d.sandboxSpec(fn, id)
	if err != nil {
		return nil, err
	}
	inst, err := d.runStart(ctx, fn, tenant, kind, spec, func(bctx context.Context, inst *instance) (Sandbox, error) {
		if kind != startRestore {
			return d.backend.Boot(bctx, spec)
		}
		d.mu.Lock()
		inst.snapGen = fn.snapGen
		d.mu.Unlock()
		if err := d.checkSnapshot(fn, snapshot); err != nil {
			return nil, err
		}
		return d.backend.Restore(bctx, spec, snapshot)
	})
	if errors.Is(err, errCheckpoint) {
		// The instance whose checkpoint failed is gone (its task may
		// hang in a hook); another serves, with no snapshot attempt.
		return d.startInstance(ctx, fn, tenant, kind, snapshot)
	}
	return inst, err
}

// errCheckpoint: a warm snapshot was abandoned because its instance's
// task did not reach its checkpoint.
var errCheckpoint = errors.New("checkpoint failed")

// sandboxSpec is the sandbox fn's instance id runs in; its directory is
// made.
func (d *Daemon) sandboxSpec(fn *function, id string) (Spec, error) {
	spec := Spec{ID: id, Dir: filepath.Join(d.cfg.StateDir, "sandboxes", id), Image: fn.spec.Image.Path, Manifest: fn.manifest,
		Function: fn.key.name, Env: fn.env(), MemoryMiB: int(fn.spec.MemoryMib), VCPUs: int(fn.spec.Vcpus), CPUTemplate: fn.template,
		Egress:    fn.spec.Network == api.NetworkPolicy_NETWORK_EGRESS,
		SnapStart: d.backend.CanSnapshot(), CheckpointTimeout: fn.checkpointTimeout()}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return spec, fmt.Errorf("instance %s: %w", id, err)
	}
	return spec, nil
}

// runStart makes room for an instance, starts its sandbox with launch,
// records it and, after a cold boot, runs the warm-ups and cuts the warm
// snapshot.
func (d *Daemon) runStart(ctx context.Context, fn *function, tenant, kind string, spec Spec, launch func(context.Context, *instance) (Sandbox, error)) (*instance, error) {
	id := spec.ID
	inst := &instance{id: id, fn: fn, tenant: tenant, startKind: kind, started: time.Now(), state: instStarting, fresh: true}
	// The room check and the insert under one lock: concurrent starts
	// never take the host past MaxInstances.
	d.mu.Lock()
	if err := d.makeRoomLocked(); err != nil {
		d.mu.Unlock()
		os.RemoveAll(spec.Dir)
		return nil, err
	}
	d.instances[id] = inst
	d.mu.Unlock()
	log := d.log.With("function", fn.key.name, "version", fn.key.version, "tenant", tenant, "instance", id)
	bctx, cancel := context.WithTimeout(ctx, startTimeout)
	sb, err := launch(bctx, inst)
	cancel()
	if err != nil {
		d.mu.Lock()
		delete(d.instances, id)
		d.mu.Unlock()
		os.RemoveAll(spec.Dir)
		return nil, fmt.Errorf("%s start of %s: %w", kind, fn.key, err)
	}
	d.mu.Lock()
	inst.sb = sb
	d.mu.Unlock()
	d.watchProfiles(inst)
	rec := sandboxRecord{Record: sb.Record(), Function: fn.key.name, Version: fn.key.version, Tenant: tenant, StartKind: kind, StartedNs: inst.started.UnixNano()}
	if err := d.store.put(bucketSandboxes, id, rec); err != nil {
		log.Error("cannot record the sandbox; a restart will not find it", "error", err)
	}
	d.metrics.starts.WithLabelValues(kind).Inc()
	inst.bootTook = time.Since(inst.started)
	log.Info("instance started", "kind", kind, "backend", d.backend.Name(), "pid", rec.PID, "took", inst.bootTook.Round(time.Microsecond))
	if kind == startCold {
		// A task that speaks SnapStart checkpoints itself at the end of
		// its init (its before-snapshot hook is where it primes itself,
		// as AWS advises): its snapshot is cut before the warm-ups,
		// which then run in this instance only. Any other task is
		// warmed up first, so that the snapshot holds what they warmed.
		if l, ok := sb.(linked); ok && d.backend.CanSnapshot() {
			if c, _ := l.agent().current(); c != nil {
				inst.snapStart = c.SnapStart()
			}
		}
		if inst.snapStart {
			if err := d.coldSnapshot(ctx, inst, log); err != nil {
				return nil, err
			}
		}
		t := time.Now()
		if err := d.warmUp(ctx, inst, log); err != nil {
			d.discard(inst, "warm-up failed: "+err.Error())
			return nil, fmt.Errorf("cold start of %s: warm-up: %w", fn.key, err)
		}
		inst.warmupTook = time.Since(t)
		if inst.snapStart {
			inst.warmupsRun = 0 // they ran after the cut
		} else if err := d.coldSnapshot(ctx, inst, log); err != nil {
			return nil, err
		}
		// Off the invocation's path: the agent packs while it serves.
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			d.collectArtifacts(d.ctx, inst, log)
		}()
	}
	d.mu.Lock()
	inst.state = instBusy
	inst.lastUsed = time.Now()
	d.mu.Unlock()
	return inst, nil
}

// warmUp runs the version's warm-up payloads. A handler error is logged
// and the instance serves anyway; a sandbox that dies or hangs past the
// deadline fails the start.
func (d *Daemon) warmUp(ctx context.Context, inst *instance, log *slog.Logger) error {
	payloads := d.warmups(inst.fn)
	inst.warmupsRun = len(payloads)
	for i, p := range payloads {
		id := fmt.Sprintf("warmup-%s-%d", inst.id, i)
		wctx, cancel := context.WithTimeout(ctx, inst.fn.timeout()+graceAfterDeadline)
		f, err := inst.sb.Invoke(wctx, id, p, inst.fn.timeout(), nil)
		cancel()
		switch {
		case err != nil:
			log.Warn("warm-up invocation failed", "warmup", i, "error", err)
			return err
		case f.Type == guest.TypeError:
			log.Warn("warm-up invocation returned an error", "warmup", i, "error_type", f.ErrorType, "body", string(f.Body))
		}
	}
	return nil
}

// coldSnapshot cuts the version's snapshot from a cold-started instance
// if it has none. Only a failed checkpoint is an error: the instance,
// whose task may hang in a hook, is discarded.
func (d *Daemon) coldSnapshot(ctx context.Context, inst *instance, log *slog.Logger) error {
	t := time.Now()
	_, err := d.maybeSnapshot(ctx, inst, log)
	inst.snapshotTook = time.Since(t)
	if errors.Is(err, errCheckpoint) {
		d.discard(inst, err.Error())
		return err
	}
	return nil
}

// maybeSnapshot cuts the version's warm snapshot from inst, once.
func (d *Daemon) maybeSnapshot(ctx context.Context, inst *instance, log *slog.Logger) (string, error) {
	if !d.backend.CanSnapshot() {
		return "", ErrNoSnapshots
	}
	fn := inst.fn
	fn.snapMu.Lock()
	defer fn.snapMu.Unlock()
	d.mu.Lock()
	have, abandoned := fn.snapshot, fn.snapAbandoned
	d.mu.Unlock()
	if have != "" {
		return have, nil
	}
	if abandoned != "" {
		return "", fmt.Errorf("the warm snapshot was abandoned (%s); the version serves without one until a prewarm", abandoned)
	}
	return d.cutSnapshot(ctx, inst, log)
}

// cutSnapshot snapshots inst into the version's snapshot directory,
// replacing any earlier one. Callers hold fn.snapMu.
func (d *Daemon) cutSnapshot(ctx context.Context, inst *instance, log *slog.Logger) (string, error) {
	fn := inst.fn
	dir := filepath.Join(d.cfg.StateDir, "snapshots", fn.key.name, fn.key.version)
	tmp := dir + ".new"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return "", err
	}
	t0 := time.Now()
	hooks := false
	if l, ok := inst.sb.(linked); ok {
		// The task gets to its checkpoint first: its before-snapshot
		// hooks run, or it is idle. A hook that hangs or fails abandons
		// the snapshot; the version serves without one.
		cctx, cancel := context.WithTimeout(ctx, fn.checkpointTimeout())
		var err error
		hooks, err = l.agent().checkpoint(cctx)
		cancel()
		if err != nil {
			d.mu.Lock()
			fn.snapAbandoned = err.Error()
			d.mu.Unlock()
			d.metrics.snapshotsAbandoned.Inc()
			log.Warn("warm snapshot abandoned; the version serves without one", "error", err)
			return "", fmt.Errorf("%w: %v", errCheckpoint, err)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	err := inst.sb.Snapshot(sctx, tmp)
	cancel()
	if err == nil {
		if _, ok := inst.sb.(linked); ok {
			marker, _ := json.Marshal(map[string]bool{"snap_start": hooks})
			err = os.WriteFile(filepath.Join(tmp, CheckpointMarker), marker, 0o600)
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		log.Warn("warm snapshot failed; the version runs without one", "error", err)
		return "", err
	}
	d.mu.Lock()
	deleted := fn.deleted
	d.mu.Unlock()
	if deleted {
		// Deleted (or replaced) while the snapshot was cut: never re-save
		// it, never replace the directory a new registration may own.
		// (DeleteFunction takes snapMu, so it cannot happen from here on.)
		os.RemoveAll(tmp)
		return "", fmt.Errorf("function %s was deleted", fn.key)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	// Sealed after the move (a rename keeps the files' identities), so
	// every restore can tell that nothing touched it since.
	seal, err := snapshot.SealDir(dir)
	if err != nil {
		os.RemoveAll(dir)
		log.Warn("cannot seal the warm snapshot; the version runs without one", "error", err)
		return "", err
	}
	d.mu.Lock()
	fn.snapshot, fn.seal, fn.sealVerified = dir, seal, true
	fn.snapAbandoned = ""
	fn.snapGen++
	fn.hasWorkingSet = false
	stale := d.dropStandbysLocked(fn)
	d.mu.Unlock()
	for _, sv := range stale {
		d.bgDiscard(sv, "a new snapshot was cut")
	}
	defer d.refillStandby(fn)
	if err := d.saveFunction(fn); err != nil {
		log.Error("cannot record the warm snapshot", "error", err)
	}
	log.Info("warm snapshot cut", "dir", dir, "took", time.Since(t0).Round(time.Microsecond))
	return dir, nil
}

// release returns a busy instance to its tenant's pool, or stops it if it
// died or its function was deleted.
func (d *Daemon) release(inst *instance) {
	d.mu.Lock()
	inst.lastUsed = time.Now()
	if !inst.alive() || inst.fn.deleted || d.instances[inst.id] != inst {
		d.forgetLocked(inst)
		d.mu.Unlock()
		go d.stopInstance(inst, "released after it died or its function was deleted")
		return
	}
	inst.state = instIdle
	inst.fresh = false // whatever comes next is a warm start
	inst.fn.pools[inst.tenant] = append(inst.fn.pools[inst.tenant], inst)
	d.mu.Unlock()
}

// discard stops a busy instance that must not serve again.
func (d *Daemon) discard(inst *instance, why string) {
	d.mu.Lock()
	d.forgetLocked(inst)
	d.mu.Unlock()
	d.stopInstance(inst, why)
}

func (d *Daemon) removeIdleLocked(inst *instance) {
	idle := inst.fn.pools[inst.tenant]
	for i, x := range idle {
		if x == inst {
			inst.fn.pools[inst.tenant] = append(idle[:i:i], idle[i+1:]...)
			return
		}
	}
}

func (d *Daemon) forgetLocked(inst *instance) {
	if d.instances[inst.id] == inst {
		delete(d.instances, inst.id)
	}
}

// stopInstance ends a sandbox and forgets its record.
func (d *Daemon) stopInstance(inst *instance, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if inst.sb != nil {
		if err := inst.sb.Stop(ctx); err != nil {
			d.log.Warn("stop instance", "instance", inst.id, "error", err)
		}
	}
	if err := d.store.delete(bucketSandboxes, inst.id); err != nil {
		d.log.Warn("forget instance", "instance", inst.id, "error", err)
	}
	d.log.Info("instance stopped", "instance", inst.id, "function", inst.fn.key.name, "version", inst.fn.key.version, "tenant", inst.tenant, "why", why)
}

// housekeeping reclaims idle instances past their keep-alive (keeping a
// version's min_warm for its own tenant) and refills pools below min_warm.
func (d *Daemon) housekeeping(ctx context.Context) {
	now := time.Now()
	var stop []*instance
	var refill, standby []*function
	d.mu.Lock()
	for _, fn := range d.functions {
		for tenant, idle := range fn.pools {
			keep := 0
			if tenant == fn.spec.Tenant {
				keep = int(fn.spec.MinWarm)
			}
			// Oldest first; the newest min_warm stay.
			var kept []*instance
			for i, inst := range idle {
				if !inst.alive() || (now.Sub(inst.lastUsed) > fn.keepAlive() && len(idle)-i > keep) {
					stop = append(stop, inst)
					d.forgetLocked(inst)
					continue
				}
				kept = append(kept, inst)
			}
			fn.pools[tenant] = kept
		}
		if fn.spec.MinWarm > 0 && !fn.refilling && !fn.deleted && !d.draining && now.After(fn.refillAfter) {
			n := 0
			for _, inst := range d.instances {
				if inst.fn == fn && inst.tenant == fn.spec.Tenant {
					n++
				}
			}
			if n < int(fn.spec.MinWarm) {
				fn.refilling = true
				refill = append(refill, fn)
			}
		}
		// Standbys whose VMM ended are replaced.
		var live []*standbyVM
		for _, sv := range fn.standby {
			if isDone(sv.sb.Exited()) {
				d.bgDiscard(sv, "its VMM ended")
				continue
			}
			live = append(live, sv)
		}
		fn.standby = live
		if d.wantStandbyLocked(fn) && !fn.standbyFilling {
			standby = append(standby, fn)
		}
	}
	d.mu.Unlock()
	for _, fn := range standby {
		d.refillStandby(fn)
	}
	for _, inst := range stop {
		why := "keep-alive expired"
		if !inst.alive() {
			why = "died while idle: " + inst.sb.ExitReason()
		}
		d.stopInstance(inst, why)
	}
	for _, fn := range refill {
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			defer func() { d.mu.Lock(); fn.refilling = false; d.mu.Unlock() }()
			d.mu.Lock()
			snapshot := fn.snapshot
			d.mu.Unlock()
			kind := startCold
			if snapshot != "" && d.backend.CanSnapshot() {
				kind = startRestore
			}
			inst, err := d.startInstance(ctx, fn, fn.spec.Tenant, kind, snapshot)
			if err != nil && kind == startRestore && !errors.Is(err, errHostFull) {
				d.dropSnapshot(fn, snapshot)
				inst, err = d.startInstance(ctx, fn, fn.spec.Tenant, startCold, "")
			}
			if err != nil {
				d.log.Warn("refill failed; retrying in 5s", "function", fn.key.name, "version", fn.key.version, "error", err)
				d.mu.Lock()
				fn.refillAfter = time.Now().Add(5 * time.Second)
				d.mu.Unlock()
				return
			}
			d.release(inst)
		}()
	}
}
