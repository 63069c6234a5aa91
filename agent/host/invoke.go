package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
)

// invocation is one invocation in memory. rec is guarded by Daemon.mu
// until done is closed, and immutable after.
type invocation struct {
	rec  invocationRecord
	done chan struct{}
	// persisted is closed once an asynchronous invocation is on disk: a
	// retry of its ID is acknowledged only then.
	persisted chan struct{}
	// err is set, instead of a result, when the invocation never ran (no
	// instance could be started); its ID is then free again.
	err error

	sinkMu sync.Mutex
	sink   chan *api.LogLine // the synchronous caller's log stream, while attached
}

// graceAfterDeadline is how long kindlingd waits past an invocation's
// deadline for the guest agent's own timeout before it declares the
// sandbox hung and stops it.
const graceAfterDeadline = 5 * time.Second

// claim registers id for fn and payload, or finds it already registered.
// The same ID with another function or payload is AlreadyExists.
func (d *Daemon) claim(id string, fn *function, tenant string, payload []byte, async bool) (*invocation, bool, error) {
	hash := payloadHash(fn.key.name, tenant, payload)
	d.mu.Lock()
	defer d.mu.Unlock()
	if inv := d.invocations[id]; inv != nil {
		if inv.rec.PayloadHash != hash {
			return nil, false, status.Errorf(codes.AlreadyExists, "invocation_id: %q was already used for another payload or function", id)
		}
		return inv, true, nil
	}
	var rec invocationRecord
	if found, err := d.store.get(bucketInvocations, id, &rec); err != nil {
		return nil, false, status.Error(codes.Internal, err.Error())
	} else if found {
		if rec.PayloadHash != hash {
			return nil, false, status.Errorf(codes.AlreadyExists, "invocation_id: %q was already used for another payload or function", id)
		}
		inv := &invocation{rec: rec, done: make(chan struct{}), persisted: closedChan()}
		if rec.finished() {
			close(inv.done)
		}
		d.invocations[id] = inv
		return inv, true, nil
	}
	if d.draining {
		return nil, false, status.Error(codes.Unavailable, "kindlingd is draining (shutting down); retry on another host or after its restart")
	}
	inv := &invocation{done: make(chan struct{}), persisted: make(chan struct{}), rec: invocationRecord{ID: id, Function: fn.key.name, Version: fn.key.version, Tenant: tenant,
		PayloadHash: hash, Payload: payload, Async: async, State: stateAccepted, AcceptedNs: time.Now().UnixNano()}}
	d.invocations[id] = inv
	// Counted here, under the lock that checked draining, so Drain never
	// misses an invocation that is about to start. unclaim (before
	// execute) or execute gives it back.
	d.inflight.Add(1)
	return inv, false, nil
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// reject frees an ID whose invocation was refused before it was handed to
// execute.
func (d *Daemon) reject(inv *invocation, err error) {
	d.unclaim(inv, err)
	d.inflight.Done()
}

// unclaim frees an ID whose invocation was not accepted.
func (d *Daemon) unclaim(inv *invocation, err error) {
	d.mu.Lock()
	if d.invocations[inv.rec.ID] == inv {
		delete(d.invocations, inv.rec.ID)
	}
	inv.err = err
	d.mu.Unlock()
	close(inv.done)
}

// snapshotRec copies an invocation's record.
func (d *Daemon) snapshotRec(inv *invocation) invocationRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	return inv.rec
}

func (inv *invocation) log(line *api.LogLine) {
	inv.sinkMu.Lock()
	defer inv.sinkMu.Unlock()
	if inv.sink == nil {
		return
	}
	select {
	case inv.sink <- line:
	default: // a slow reader loses lines, never the result
	}
}

func (inv *invocation) attach(ch chan *api.LogLine) {
	inv.sinkMu.Lock()
	inv.sink = ch
	inv.sinkMu.Unlock()
}

// execute runs an invocation that holds (or waits for) a concurrency
// slot: wait for the slot, get an instance, invoke, record the result.
// resumeOn, when set, is a reattached instance that may already be
// running it: the invocation is sent to it again under the same ID, and
// the guest agent answers with the first run's result.
func (d *Daemon) execute(inv *invocation, fn *function, place chan struct{}, resumeOn *instance) {
	defer d.inflight.Done()
	r := d.snapshotRec(inv)
	log := d.log.With("invocation_id", r.ID, "function", r.Function, "version", r.Version, "tenant", r.Tenant)
	queueCtx := d.ctx
	if r.Async {
		queueCtx = d.queueCtx
	}
	t0 := time.Now()
	inst := resumeOn
	if inst == nil {
		if err := fn.gate.wait(queueCtx, place); err != nil {
			// Draining: the accepted invocation stays on disk.
			log.Info("left queued for the next start", "reason", err)
			return
		}
		defer fn.gate.release()
	}
	d.mu.Lock()
	deleted := fn.deleted
	d.mu.Unlock()
	if deleted {
		msg := fmt.Sprintf("function %s version %s was deleted before the invocation could run", fn.key.name, fn.key.version)
		if !r.Async {
			d.unclaim(inv, status.Error(codes.NotFound, "function: "+msg))
			return
		}
		d.finish(inv, fn, func(rec *invocationRecord) {
			rec.State, rec.ErrorType, rec.ErrorMessage = stateFailed, "Kindling.FunctionDeleted", msg
			rec.Response = guest.ErrorDocument(msg, "Kindling.FunctionDeleted")
		})
		return
	}
	tQueued := time.Now()
	var (
		tStarted time.Time
		start    string
		f        guest.Frame
		err      error
		ctx      context.Context
		timeout  = fn.timeout()
	)
	// An instance found dead before it took the invocation (it died idle)
	// never ran it: try another, a few times.
	for try := 0; ; try++ {
		if inst == nil {
			inst, err = d.acquire(d.ctx, fn, r.Tenant, log)
			if err != nil {
				log.Error("no instance for the invocation", "error", err)
				if r.Async && d.ctx.Err() != nil {
					return // closing: it stays accepted on disk for the next start
				}
				if !r.Async {
					code := codes.Unavailable
					if errors.Is(err, errHostFull) {
						code = codes.ResourceExhausted
					}
					d.unclaim(inv, status.Errorf(code, "function %s: %v", fn.key, err))
					return
				}
				d.finish(inv, fn, func(rec *invocationRecord) {
					rec.State, rec.ErrorType, rec.ErrorMessage = stateFailed, "Kindling.StartFailed", err.Error()
					rec.Response = guest.ErrorDocument(err.Error(), "Kindling.StartFailed")
				})
				return
			}
		}
		tStarted = time.Now()
		d.mu.Lock()
		// An instance's first invocation reports how it was started; later
		// ones, and collected ones, are warm.
		start = startWarm
		if inst.fresh {
			start, inst.fresh = inst.startKind, false
		}
		inst.invocations++
		rec := inv.rec
		d.mu.Unlock()
		rec.State, rec.Sandbox, rec.Start = stateRunning, inst.id, start
		rec.Attempts++
		if rec.Async {
			// Write-ahead: a restarted kindlingd asks this sandbox for the
			// result instead of running the invocation again. Only then is
			// it "running" to GetInvocation.
			if err := d.store.put(bucketInvocations, rec.ID, rec); err != nil {
				log.Error("cannot record the dispatch; running anyway", "error", err)
			}
		}
		d.mu.Lock()
		inv.rec = rec
		d.mu.Unlock()
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(d.ctx, timeout+graceAfterDeadline)
		f, err = inst.sb.Invoke(ctx, rec.ID, rec.Payload, timeout, func(lf guest.Frame) {
			inv.log(&api.LogLine{Stream: lf.Stream, Line: string(lf.Body), TimeUnixNano: time.Now().UnixNano()})
		})
		cancel()
		if !errors.Is(err, ErrSandboxGone) || resumeOn != nil || try == 2 {
			break
		}
		log.Warn("instance was gone before the invocation reached it; trying another", "instance", inst.id, "error", err)
		d.discard(inst, err.Error())
		inst = nil
		d.mu.Lock()
		inv.rec.Attempts--
		d.mu.Unlock()
	}
	tDone := time.Now()
	// What becomes of the instance; done after the result is recorded, so
	// a sandbox never holds a new invocation while the record of its last
	// one is still unwritten (a restart would find two "running" on it).
	after := func() { d.release(inst) }
	hung := false
	switch {
	case err == nil:
		if resumeOn != nil {
			after = func() {}
		}
		if start == startRestore {
			d.bg.Add(1)
			go func() {
				defer d.bg.Done()
				d.recordWorkingSet(inst)
				d.refillStandby(inst.fn)
			}()
		}
	case errors.Is(err, ErrSandboxCrashed):
		after = func() { d.discard(inst, err.Error()) }
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && d.ctx.Err() == nil:
		// The deadline, not cancel() above (after which ctx.Err() is
		// never nil): any other error keeps its own message below.
		hung = true
		err = fmt.Errorf("the sandbox did not answer within the %v timeout (+%v grace); it was stopped", timeout, graceAfterDeadline)
		after = func() { d.discard(inst, "hung past its deadline") }
	case d.ctx.Err() != nil:
		// kindlingd is closing: the sandbox keeps running it, and the next
		// kindlingd collects the result.
		return
	default:
		why := err.Error()
		after = func() { d.discard(inst, why) }
	}
	if !r.Async {
		// Nothing to record on disk: the instance can serve the caller's
		// next invocation before this one's answer reaches it.
		after()
		after = func() {}
	}
	defer after()
	if err == nil {
		d.recordUsage(fn, f)
		if f.Type == guest.TypeResponse {
			d.mu.Lock()
			tenant, payload := inv.rec.Tenant, inv.rec.Payload
			d.mu.Unlock()
			d.recordWarmup(fn, tenant, payload)
		}
	}
	d.finish(inv, fn, func(rec *invocationRecord) {
		rec.QueuedUs = tQueued.Sub(t0).Microseconds()
		rec.StartUs = tStarted.Sub(tQueued).Microseconds()
		rec.RunUs = tDone.Sub(tStarted).Microseconds()
		switch {
		case err != nil:
			typ := "Kindling.SandboxError"
			switch {
			case errors.Is(err, ErrSandboxCrashed), errors.Is(err, ErrSandboxGone):
				typ = "Kindling.SandboxCrashed"
			case hung:
				typ = "Runtime.Timeout"
			}
			rec.State, rec.ErrorType, rec.ErrorMessage = stateFailed, typ, err.Error()
			rec.Response = guest.ErrorDocument(err.Error(), typ)
		case f.Type == guest.TypeError:
			rec.State, rec.ErrorType, rec.Response = stateFailed, f.ErrorType, f.Body
			var doc struct {
				ErrorMessage string `json:"errorMessage"`
			}
			if json.Unmarshal(f.Body, &doc) == nil {
				rec.ErrorMessage = doc.ErrorMessage
			}
		default:
			rec.State, rec.Response = stateSucceeded, f.Body
		}
	})
	d.metrics.phases.WithLabelValues("queued", start).Observe(tQueued.Sub(t0).Seconds())
	d.metrics.phases.WithLabelValues("start", start).Observe(tStarted.Sub(tQueued).Seconds())
	d.metrics.phases.WithLabelValues("run", start).Observe(tDone.Sub(tStarted).Seconds())
	d.metrics.phases.WithLabelValues("total", start).Observe(tDone.Sub(t0).Seconds())
	r = d.snapshotRec(inv)
	lvl := slog.LevelInfo
	if r.State == stateFailed {
		lvl = slog.LevelWarn
	}
	log.Log(d.ctx, lvl, "invocation finished", "state", r.State, "error_type", r.ErrorType, "start", start, "instance", inst.id,
		"queued_us", r.QueuedUs, "start_us", r.StartUs, "run_us", r.RunUs)
}

// finish records an invocation's result: on disk first for asynchronous
// ones, then in memory, then wakes its waiters.
func (d *Daemon) finish(inv *invocation, fn *function, set func(*invocationRecord)) {
	d.mu.Lock()
	rec := inv.rec
	d.mu.Unlock()
	set(&rec)
	rec.FinishedNs = time.Now().UnixNano()
	rec.Payload = nil
	if rec.Async {
		if err := d.store.put(bucketInvocations, rec.ID, rec); err != nil {
			d.log.Error("cannot record the result; it is kept in memory only", "invocation_id", rec.ID, "error", err)
		}
	}
	d.metrics.invocations.WithLabelValues(rec.State, strconv.FormatBool(rec.Async)).Inc()
	d.mu.Lock()
	if rec.Async {
		fn.asyncPending--
	}
	inv.rec = rec
	d.finished = append(d.finished, rec.ID)
	for len(d.finished) > maxFinishedInMemory {
		old := d.finished[0]
		d.finished = d.finished[1:]
		if x := d.invocations[old]; x != nil && x.rec.finished() {
			delete(d.invocations, old)
		}
	}
	d.mu.Unlock()
	close(inv.done)
}

// recoverInvocations resumes the asynchronous invocations a previous
// kindlingd accepted: those never dispatched are queued again; those
// dispatched to a sandbox that was reattached are sent to it again under
// the same ID (the guest agent answers with the first run's result);
// those whose sandbox died too are run again, and their result says so.
func (d *Daemon) recoverInvocations() error {
	var pending []invocationRecord
	err := d.store.each(bucketInvocations, func(key string, val []byte) error {
		var r invocationRecord
		if err := json.Unmarshal(val, &r); err != nil {
			return corrupt(d.store.path, fmt.Errorf("invocation %s: %w", key, err))
		}
		if !r.finished() {
			pending = append(pending, r)
		}
		return nil
	})
	if err != nil {
		return err
	}
	resumed := map[*instance][]*invocation{}
	var requeue []func()
	for _, r := range pending {
		fn := d.functions[fnKey{r.Function, r.Version}]
		inv := &invocation{rec: r, done: make(chan struct{}), persisted: closedChan()}
		d.invocations[r.ID] = inv
		if fn != nil {
			fn.asyncPending++
		}
		if fn == nil {
			d.inflight.Add(1)
			go func() {
				defer d.inflight.Done()
				d.finish(inv, &function{key: fnKey{r.Function, r.Version}}, func(rec *invocationRecord) {
					rec.State, rec.ErrorType = stateFailed, "Kindling.FunctionDeleted"
					rec.ErrorMessage = fmt.Sprintf("function %s version %s was deleted before the invocation could run", r.Function, r.Version)
					rec.Response = guest.ErrorDocument(rec.ErrorMessage, rec.ErrorType)
				})
			}()
			continue
		}
		if r.State == stateRunning {
			if inst := d.instances[r.Sandbox]; inst != nil && (inst.state == instIdle || resumed[inst] != nil) {
				if resumed[inst] == nil {
					d.removeIdleLocked(inst)
					inst.state = instBusy
				}
				inv.rec.Attempts-- // the same run, collected
				resumed[inst] = append(resumed[inst], inv)
				d.log.Info("collecting an invocation from its reattached sandbox", "invocation_id", r.ID, "function", r.Function, "sandbox", r.Sandbox)
				continue
			}
			inv.rec.RerunReason = fmt.Sprintf("sandbox %s was running it when kindlingd stopped, and was gone when it restarted", r.Sandbox)
		}
		d.log.Info("resuming an accepted invocation", "invocation_id", r.ID, "function", r.Function, "state", r.State, "sandbox", r.Sandbox, "rerun", r.State == stateRunning)
		// Dispatched only after every reattached sandbox with work to
		// collect is claimed, so none is handed to a new invocation first.
		requeue = append(requeue, func() {
			place, _ := fn.gate.reserve(false)
			d.inflight.Add(1)
			go d.execute(inv, fn, place, nil)
		})
	}
	for _, q := range requeue {
		q()
	}
	// Each reattached sandbox is asked, one ID at a time, for what it ran:
	// the guest agent answers a known ID with its first result.
	for inst, invs := range resumed {
		d.inflight.Add(len(invs))
		go func() {
			for _, inv := range invs {
				d.execute(inv, inst.fn, nil, inst)
			}
			d.release(inst)
		}()
	}
	return nil
}
