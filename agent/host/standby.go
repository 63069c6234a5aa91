package host

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Standby restores: kindlingd keeps, per function version with a warm
// snapshot, a few sandboxes restored from it and left before their first
// instruction (Config.StandbyRestores). A restore for a new tenant then
// takes one and starts it: the costly part of a restore (a new jailed
// VMM, KVM's VM and memory set-up: about 20 ms on our build machines)
// is off the invocation's path. A standby has served nobody; its memory
// is the snapshot's, so it is as fresh as a restore made on demand, and
// its guest gets a new entropy seed at its agent's hello like any
// restore.

// startStandby is a standby's StartKind in its store record: a restarted
// kindlingd finds its VM never started and stops it.
const startStandby = "standby"

// standbyRetry spaces refills after a failed standby restore.
const standbyRetry = 5 * time.Second

// standbyVM is one restored, unstarted sandbox.
type standbyVM struct {
	spec Spec
	sb   Standby
	gen  uint64 // function.snapGen it was restored from
	made time.Time
}

// takeStandbyLocked pops a live standby of fn's current snapshot, or
// returns nil. Stale ones are discarded on the way. Callers hold d.mu.
func (d *Daemon) takeStandbyLocked(fn *function) *standbyVM {
	for len(fn.standby) > 0 {
		sv := fn.standby[0]
		fn.standby = fn.standby[1:]
		if sv.gen == fn.snapGen && !isDone(sv.sb.Exited()) {
			return sv
		}
		d.bgDiscard(sv, "its snapshot was replaced or its VMM ended")
	}
	return nil
}

// startFromStandby starts sv for tenant. On error sv is gone, and the
// caller restores on demand instead.
//
// The standby is replaced once its first invocation has answered
// (execute), not now: a VMM launched beside the start would compete with
// it for the CPU. Housekeeping replaces it if that never comes.
func (d *Daemon) startFromStandby(ctx context.Context, fn *function, tenant string, sv *standbyVM) (*instance, error) {
	return d.runStart(ctx, fn, tenant, startRestore, sv.spec, func(bctx context.Context, inst *instance) (Sandbox, error) {
		inst.snapGen = sv.gen
		// The VM maps the memory file: a change to it since the standby
		// was made would show through. A stat per file tells.
		d.mu.Lock()
		seal, dir, gen := fn.seal, fn.snapshot, fn.snapGen
		d.mu.Unlock()
		if seal == nil || sv.gen != gen {
			sv.sb.Discard(bctx)
			return nil, fmt.Errorf("standby %s: its snapshot was replaced", sv.spec.ID)
		}
		if err := seal.Unchanged(dir); err != nil {
			sv.sb.Discard(bctx)
			return nil, fmt.Errorf("standby %s: %w", sv.spec.ID, err)
		}
		return sv.sb.Start(bctx)
	})
}

// refillStandby restores fn's snapshot into standbys, in the background,
// until it has Config.StandbyRestores of them (or the host its instance
// limit).
func (d *Daemon) refillStandby(fn *function) {
	sbk, ok := d.backend.(StandbyBackend)
	if !ok || d.cfg.StandbyRestores <= 0 {
		return
	}
	d.mu.Lock()
	if !d.wantStandbyLocked(fn) || fn.standbyFilling || time.Now().Before(fn.standbyAfter) {
		d.mu.Unlock()
		return
	}
	fn.standbyFilling = true
	d.mu.Unlock()
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		defer func() { d.mu.Lock(); fn.standbyFilling = false; d.mu.Unlock() }()
		for {
			d.mu.Lock()
			want, dir, gen := d.wantStandbyLocked(fn), fn.snapshot, fn.snapGen
			d.mu.Unlock()
			if !want {
				return
			}
			if err := d.makeStandby(sbk, fn, dir, gen); err != nil {
				d.log.Warn("standby restore failed; retrying later", "function", fn.key.name, "version", fn.key.version, "retry_in", standbyRetry, "error", err)
				d.mu.Lock()
				fn.standbyAfter = time.Now().Add(standbyRetry)
				d.mu.Unlock()
				return
			}
		}
	}()
}

// wantStandbyLocked says whether fn should have another standby.
func (d *Daemon) wantStandbyLocked(fn *function) bool {
	return d.ctx.Err() == nil && !d.draining && !fn.deleted && fn.snapshot != "" && fn.seal != nil &&
		len(fn.standby) < d.cfg.StandbyRestores && len(d.instances)+d.standbysLocked() < d.cfg.MaxInstances
}

func (d *Daemon) makeStandby(sbk StandbyBackend, fn *function, dir string, gen uint64) error {
	if err := d.checkSnapshot(fn, dir); err != nil {
		d.dropSnapshot(fn, dir)
		return err
	}
	spec, err := d.sandboxSpec(fn, newInstanceID())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(d.ctx, startTimeout)
	t0 := time.Now()
	p, err := sbk.PrepareRestore(ctx, spec, dir)
	cancel()
	if err != nil {
		os.RemoveAll(spec.Dir)
		return err
	}
	sv := &standbyVM{spec: spec, sb: p, gen: gen, made: time.Now()}
	rec := sandboxRecord{Record: p.Record(), Function: fn.key.name, Version: fn.key.version, StartKind: startStandby, StartedNs: t0.UnixNano()}
	if err := d.store.put(bucketSandboxes, spec.ID, rec); err != nil {
		d.discardStandby(sv, "cannot record it")
		return err
	}
	d.mu.Lock()
	if fn.snapGen != gen || !d.wantStandbyLocked(fn) {
		d.mu.Unlock()
		d.discardStandby(sv, "no longer wanted")
		return nil
	}
	fn.standby = append(fn.standby, sv)
	d.mu.Unlock()
	d.log.Debug("standby restored", "function", fn.key.name, "version", fn.key.version, "instance", spec.ID, "took", time.Since(t0).Round(time.Microsecond))
	return nil
}

// standbysLocked counts every function's standbys: they take room on the
// host like instances.
func (d *Daemon) standbysLocked() int {
	n := 0
	for _, fn := range d.functions {
		n += len(fn.standby)
	}
	return n
}

// dropStandbysLocked takes fn's standbys away for the caller to discard
// (after a new snapshot, a dropped one, or the function's deletion).
func (d *Daemon) dropStandbysLocked(fn *function) []*standbyVM {
	out := fn.standby
	fn.standby = nil
	return out
}

// evictStandbyLocked discards one standby of any function to make room
// for an instance; it reports whether there was one.
func (d *Daemon) evictStandbyLocked() bool {
	for _, fn := range d.functions {
		if len(fn.standby) > 0 {
			sv := fn.standby[len(fn.standby)-1]
			fn.standby = fn.standby[:len(fn.standby)-1]
			d.bgDiscard(sv, "evicted to make room")
			return true
		}
	}
	return false
}

func (d *Daemon) bgDiscard(sv *standbyVM, why string) {
	if d.ctx.Err() != nil {
		// Close may be waiting on bg already: Add must not race it.
		go d.discardStandby(sv, why)
		return
	}
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		d.discardStandby(sv, why)
	}()
}

// discardStandby stops an unstarted standby and forgets it.
func (d *Daemon) discardStandby(sv *standbyVM, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sv.sb.Discard(ctx); err != nil {
		d.log.Warn("stopping a standby", "instance", sv.spec.ID, "error", err)
	}
	d.store.delete(bucketSandboxes, sv.spec.ID)
	os.RemoveAll(sv.spec.Dir)
	d.log.Debug("standby discarded", "instance", sv.spec.ID, "why", why)
}
