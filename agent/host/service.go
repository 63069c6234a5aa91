package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kindlingvm/kindling/agent/api"
)

// MaxRecvMsgSize lets a 6 MiB payload through gRPC (whose default limit
// is 4 MiB) with room for the rest of the request.
const MaxRecvMsgSize = 7 << 20

var _ api.KindlingServer = (*Daemon)(nil)

func (d *Daemon) refuseIfDraining() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return status.Error(codes.Unavailable, "kindlingd is draining (shutting down); retry on another host or after its restart")
	}
	return nil
}

// RegisterFunction adds or replaces a function version.
func (d *Daemon) RegisterFunction(ctx context.Context, req *api.RegisterFunctionRequest) (*api.Function, error) {
	spec, _, err := normalizeSpec(req.Function)
	if err != nil {
		return nil, err
	}
	if spec.Network == api.NetworkPolicy_NETWORK_EGRESS && d.cfg.Net == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "function.network: NETWORK_EGRESS, but this kindlingd has no host network (%s)", d.cfg.NetReason)
	}
	fn, err := d.newFunction(spec, time.Now(), "")
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	old := d.functions[fn.key]
	if old != nil {
		n := 0
		for _, inst := range d.instances {
			if inst.fn == old {
				n++
			}
		}
		if n > 0 && !proto.Equal(old.spec, fn.spec) {
			d.mu.Unlock()
			return nil, status.Errorf(codes.FailedPrecondition, "function.version: %s is registered with another spec and has %d instances; register a new version, or delete this one first", fn.key, n)
		}
		if proto.Equal(old.spec, fn.spec) {
			// Registering the same spec again is a no-op.
			d.mu.Unlock()
			return d.functionProto(old), nil
		}
		old.deleted = true // replaced: its queued invocations must not run it
	}
	d.functions[fn.key] = fn
	d.mu.Unlock()
	if err := d.saveFunction(fn); err != nil {
		d.mu.Lock()
		if old != nil {
			d.functions[fn.key] = old
		} else {
			delete(d.functions, fn.key)
		}
		d.mu.Unlock()
		return nil, storeStatus(err, "the function was not registered")
	}
	d.log.Info("function registered", "function", fn.key.name, "version", fn.key.version, "tenant", spec.Tenant,
		"image", spec.Image.Path, "memory_mib", spec.MemoryMib, "concurrency_limit", spec.ConcurrencyLimit)
	return d.functionProto(fn), nil
}

func storeStatus(err error, what string) error {
	if errors.Is(err, ErrDiskFull) {
		return status.Errorf(codes.ResourceExhausted, "%v: %s", err, what)
	}
	return status.Errorf(codes.Unavailable, "%v: %s", err, what)
}

func (d *Daemon) functionProto(fn *function) *api.Function {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &api.Function{Spec: fn.spec, RegisteredUnixNano: fn.registered.UnixNano(), Snapshot: fn.snapshot, Usage: d.usageLocked(fn)}
}

// DeleteFunction removes a version, or all of a function's versions.
func (d *Daemon) DeleteFunction(ctx context.Context, req *api.DeleteFunctionRequest) (*api.DeleteFunctionResponse, error) {
	if !nameRE.MatchString(req.Name) {
		return nil, invalid("name", "%q is not a function name", req.Name)
	}
	var gone []*function
	var stop []*instance
	snapshots := map[*function]string{}
	d.mu.Lock()
	for k, fn := range d.functions {
		if k.name == req.Name && (req.Version == "" || k.version == req.Version) {
			gone = append(gone, fn)
			snapshots[fn] = fn.snapshot
			fn.deleted = true
			delete(d.functions, k)
			for _, sv := range d.dropStandbysLocked(fn) {
				d.bgDiscard(sv, "function deleted")
			}
			for _, idle := range fn.pools {
				for _, inst := range idle {
					d.forgetLocked(inst)
					stop = append(stop, inst)
				}
			}
			fn.pools = map[string][]*instance{}
		}
	}
	d.mu.Unlock()
	if len(gone) == 0 {
		what := fmt.Sprintf("%q", req.Name)
		if req.Version != "" {
			what += " version " + req.Version
		}
		return nil, status.Errorf(codes.NotFound, "name: function %s is not registered", what)
	}
	resp := &api.DeleteFunctionResponse{}
	for _, fn := range gone {
		if err := d.store.delete(bucketFunctions, fn.key.String()); err != nil {
			return nil, storeStatus(err, "the function was not deleted")
		}
		// Under snapMu: a snapshot being cut for it sees deleted and
		// throws itself away rather than re-saving the function.
		fn.snapMu.Lock()
		d.mu.Lock()
		if fn.snapshot != "" {
			snapshots[fn] = fn.snapshot // cut since the loop above
		}
		d.mu.Unlock()
		if snapshots[fn] != "" {
			os.RemoveAll(snapshots[fn])
		}
		fn.snapMu.Unlock()
		d.forgetLearned(fn)
		resp.DeletedVersions = append(resp.DeletedVersions, fn.key.version)
		d.log.Info("function deleted", "function", fn.key.name, "version", fn.key.version)
	}
	for _, inst := range stop {
		d.stopInstance(inst, "function deleted")
	}
	sort.Strings(resp.DeletedVersions)
	return resp, nil
}

// ListFunctions lists every registered version.
func (d *Daemon) ListFunctions(ctx context.Context, req *api.ListFunctionsRequest) (*api.ListFunctionsResponse, error) {
	d.mu.Lock()
	fns := make([]*function, 0, len(d.functions))
	for _, fn := range d.functions {
		fns = append(fns, fn)
	}
	d.mu.Unlock()
	sort.Slice(fns, func(i, j int) bool {
		if fns[i].key.name != fns[j].key.name {
			return fns[i].key.name < fns[j].key.name
		}
		return fns[i].registered.Before(fns[j].registered)
	})
	resp := &api.ListFunctionsResponse{}
	for _, fn := range fns {
		resp.Functions = append(resp.Functions, d.functionProto(fn))
	}
	return resp, nil
}

// lookup finds a function version; an empty version is the latest
// registered.
func (d *Daemon) lookup(name, version string) (*function, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if version != "" {
		if fn := d.functions[fnKey{name, version}]; fn != nil {
			return fn, nil
		}
		return nil, status.Errorf(codes.NotFound, "version: function %q has no version %q", name, version)
	}
	var latest *function
	for k, fn := range d.functions {
		if k.name == name && (latest == nil || fn.registered.After(latest.registered)) {
			latest = fn
		}
	}
	if latest == nil {
		return nil, status.Errorf(codes.NotFound, "function: %q is not registered", name)
	}
	return latest, nil
}

// start checks and claims an invocation request.
func (d *Daemon) start(req *api.InvokeRequest, async bool) (*invocation, *function, bool, error) {
	if err := checkInvoke(req); err != nil {
		return nil, nil, false, err
	}
	fn, err := d.lookup(req.Function, req.Version)
	if err != nil {
		return nil, nil, false, err
	}
	tenant := req.Tenant
	if tenant == "" {
		tenant = fn.spec.Tenant
	}
	id := req.InvocationId
	if id == "" {
		id = newInvocationID()
	}
	inv, dup, err := d.claim(id, fn, tenant, req.Payload, async)
	return inv, fn, dup, err
}

// Invoke runs an invocation, streaming its log lines, then its result.
func (d *Daemon) Invoke(req *api.InvokeRequest, stream grpc.ServerStreamingServer[api.InvokeEvent]) error {
	inv, fn, dup, err := d.start(req, false)
	if err != nil {
		return err
	}
	logs := make(chan *api.LogLine, 256)
	if !dup {
		place, err := fn.gate.reserve(true)
		if err != nil {
			running, queued := fn.gate.depth()
			err = status.Errorf(codes.ResourceExhausted, "function %s: %d invocations running (its concurrency_limit) and %d queued (its queue_limit); retry later", fn.key, running, queued)
			d.reject(inv, err)
			return err
		}
		inv.attach(logs)
		go d.execute(inv, fn, place, nil)
	}
	ctx := stream.Context()
	for {
		select {
		case l := <-logs:
			if err := stream.Send(&api.InvokeEvent{Event: &api.InvokeEvent_Log{Log: l}}); err != nil {
				inv.attach(nil)
				return err
			}
		case <-inv.done:
			inv.attach(nil)
			for n := len(logs); n > 0; n-- {
				stream.Send(&api.InvokeEvent{Event: &api.InvokeEvent_Log{Log: <-logs}})
			}
			if inv.err != nil {
				return inv.err
			}
			return stream.Send(&api.InvokeEvent{Event: &api.InvokeEvent_Result{Result: d.invocationProto(inv)}})
		case <-ctx.Done():
			// The invocation goes on; GetInvocation has its result.
			inv.attach(nil)
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// InvokeAsync accepts an invocation once it is on disk.
func (d *Daemon) InvokeAsync(ctx context.Context, req *api.InvokeRequest) (*api.InvokeAsyncResponse, error) {
	inv, fn, dup, err := d.start(req, true)
	if err != nil {
		return nil, err
	}
	if dup {
		// Acknowledge a retry only once the first is on disk (or has
		// finished, or was refused: then so is the retry).
		select {
		case <-inv.persisted:
		case <-inv.done:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		select {
		case <-inv.done:
			if inv.err != nil {
				return nil, inv.err
			}
		default:
		}
		return &api.InvokeAsyncResponse{InvocationId: d.snapshotRec(inv).ID, Duplicate: true}, nil
	}
	d.mu.Lock()
	n := fn.asyncPending
	if n < d.cfg.MaxAsyncPending {
		fn.asyncPending++
	}
	d.mu.Unlock()
	if n >= d.cfg.MaxAsyncPending {
		err := status.Errorf(codes.ResourceExhausted, "function %s: %d asynchronous invocations are waiting (the host's limit is %d); retry later", fn.key, n, d.cfg.MaxAsyncPending)
		d.reject(inv, err)
		return nil, err
	}
	rec := d.snapshotRec(inv)
	if err := d.store.put(bucketInvocations, rec.ID, rec); err != nil {
		d.mu.Lock()
		fn.asyncPending--
		d.mu.Unlock()
		err = storeStatus(err, "the invocation was not accepted")
		d.reject(inv, err)
		return nil, err
	}
	close(inv.persisted)
	place, _ := fn.gate.reserve(false)
	go d.execute(inv, fn, place, nil)
	return &api.InvokeAsyncResponse{InvocationId: rec.ID}, nil
}

// GetInvocation returns an invocation, finished or not.
func (d *Daemon) GetInvocation(ctx context.Context, req *api.GetInvocationRequest) (*api.Invocation, error) {
	if !idRE.MatchString(req.InvocationId) {
		return nil, invalid("invocation_id", "%q: want 1-128 of [A-Za-z0-9._:-], starting with a letter or digit", truncateID(req.InvocationId))
	}
	d.mu.Lock()
	inv := d.invocations[req.InvocationId]
	d.mu.Unlock()
	if inv != nil {
		return d.invocationProto(inv), nil
	}
	var rec invocationRecord
	found, err := d.store.get(bucketInvocations, req.InvocationId, &rec)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "invocation_id: %q is unknown (finished invocations are kept for %v)", req.InvocationId, d.cfg.Retention)
	}
	return recordProto(rec), nil
}

func (d *Daemon) invocationProto(inv *invocation) *api.Invocation {
	return recordProto(d.snapshotRec(inv))
}

func recordProto(r invocationRecord) *api.Invocation {
	p := &api.Invocation{InvocationId: r.ID, Function: r.Function, Version: r.Version, Tenant: r.Tenant, Async: r.Async,
		Response: r.Response, ErrorType: r.ErrorType, ErrorMessage: r.ErrorMessage, InstanceId: r.Sandbox,
		Attempts: uint32(r.Attempts), RerunReason: r.RerunReason, AcceptedUnixNano: r.AcceptedNs, FinishedUnixNano: r.FinishedNs,
		Phases: &api.Phases{QueuedUs: r.QueuedUs, StartUs: r.StartUs, RunUs: r.RunUs}}
	p.State = map[string]api.InvocationState{stateAccepted: api.InvocationState_ACCEPTED, stateRunning: api.InvocationState_RUNNING,
		stateSucceeded: api.InvocationState_SUCCEEDED, stateFailed: api.InvocationState_FAILED}[r.State]
	p.Start = startKindProto(r.Start)
	return p
}

func startKindProto(s string) api.StartKind {
	return map[string]api.StartKind{startWarm: api.StartKind_WARM, startRestore: api.StartKind_RESTORE, startCold: api.StartKind_COLD}[s]
}

// Prewarm boots instances, runs the warm-ups in them, cuts the version's
// warm snapshot where the backend can, and leaves them idle in the
// tenant's pool.
func (d *Daemon) Prewarm(ctx context.Context, req *api.PrewarmRequest) (*api.PrewarmResponse, error) {
	if err := d.refuseIfDraining(); err != nil {
		return nil, err
	}
	if !nameRE.MatchString(req.Function) {
		return nil, invalid("function", "%q is not a function name", req.Function)
	}
	if req.Tenant != "" && !nameRE.MatchString(req.Tenant) {
		return nil, invalid("tenant", "%q: want 1-64 of [A-Za-z0-9_-]", req.Tenant)
	}
	fn, err := d.lookup(req.Function, req.Version)
	if err != nil {
		return nil, err
	}
	n := int(req.Instances)
	if n == 0 {
		n = 1
	}
	if n > int(fn.spec.ConcurrencyLimit) {
		return nil, invalid("instances", "%d is over the function's concurrency_limit %d", n, fn.spec.ConcurrencyLimit)
	}
	tenant := req.Tenant
	if tenant == "" {
		tenant = fn.spec.Tenant
	}
	log := d.log.With("function", fn.key.name, "version", fn.key.version, "tenant", tenant)
	resp := &api.PrewarmResponse{}
	// A prewarm asks for the warm snapshot again, even after one was
	// abandoned.
	d.mu.Lock()
	fn.snapAbandoned = ""
	d.mu.Unlock()
	for i := 0; i < n; i++ {
		d.mu.Lock()
		before := fn.snapshot
		d.mu.Unlock()
		// A cold start runs the warm-ups and cuts the snapshot if the
		// version has none.
		inst, err := d.startInstance(d.ctx, fn, tenant, startCold, "")
		if errors.Is(err, errHostFull) {
			return resp, status.Error(codes.ResourceExhausted, err.Error())
		}
		if err != nil {
			return resp, status.Errorf(codes.Unavailable, "prewarm %s: %v", fn.key, err)
		}
		resp.BootUs += inst.bootTook.Microseconds()
		resp.WarmupUs += inst.warmupTook.Microseconds()
		if i == 0 {
			resp.SnapStart = inst.snapStart
			resp.WarmupsRun = uint32(inst.warmupsRun)
			d.mu.Lock()
			after, abandoned := fn.snapshot, fn.snapAbandoned
			d.mu.Unlock()
			switch {
			case after == "" && abandoned != "":
				resp.SnapshotNote = "warm snapshot abandoned; the version serves without one: " + abandoned
			case !d.backend.CanSnapshot():
				resp.SnapshotNote = fmt.Sprintf("the %s backend cannot snapshot; the prewarmed instances stay warm in the pool instead", d.backend.Name())
			case before == "" && after != "":
				resp.Snapshot, resp.SnapshotUs = after, inst.snapshotTook.Microseconds()
			case inst.snapStart:
				// Its checkpoint was at the end of its init, and this
				// instance is past it: a new cut would have no hooks.
				resp.Snapshot = after
				resp.SnapshotNote = "the task speaks SnapStart: its snapshot is cut at its checkpoint, before warm-ups; the existing one stands"
			default:
				// Replace the version's snapshot with one from after these
				// warm-ups.
				t := time.Now()
				fn.snapMu.Lock()
				dir, err := d.cutSnapshot(d.ctx, inst, log)
				fn.snapMu.Unlock()
				resp.Snapshot, resp.SnapshotUs = dir, time.Since(t).Microseconds()
				if err != nil {
					resp.SnapshotNote = "snapshot failed: " + err.Error()
				}
				if errors.Is(err, errCheckpoint) {
					// Its task may be stuck in a hook: not served from.
					d.discard(inst, err.Error())
					resp.Instances = append(resp.Instances, d.instanceProto(inst))
					continue
				}
			}
		}
		d.mu.Lock()
		inst.fresh = false
		d.mu.Unlock()
		d.release(inst)
		resp.Instances = append(resp.Instances, d.instanceProto(inst))
	}
	return resp, nil
}

// ListInstances lists the sandboxes, optionally of one function.
func (d *Daemon) ListInstances(ctx context.Context, req *api.ListInstancesRequest) (*api.ListInstancesResponse, error) {
	d.mu.Lock()
	var all []*instance
	for _, inst := range d.instances {
		if req.Function == "" || inst.fn.key.name == req.Function {
			all = append(all, inst)
		}
	}
	var standbys []*api.Instance
	for _, fn := range d.functions {
		if req.Function != "" && fn.key.name != req.Function {
			continue
		}
		for _, sv := range fn.standby {
			standbys = append(standbys, &api.Instance{Id: sv.spec.ID, Function: fn.key.name, Version: fn.key.version,
				Backend: sv.sb.Record().Backend, State: api.InstanceState_STANDBY, StartedAs: api.StartKind_RESTORE,
				StartedUnixNano: sv.made.UnixNano(), Pid: int32(sv.sb.Record().PID)})
		}
	}
	d.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].started.Before(all[j].started) })
	resp := &api.ListInstancesResponse{}
	for _, inst := range all {
		resp.Instances = append(resp.Instances, d.instanceProto(inst))
	}
	resp.Instances = append(resp.Instances, standbys...)
	return resp, nil
}

func (d *Daemon) instanceProto(inst *instance) *api.Instance {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := &api.Instance{Id: inst.id, Function: inst.fn.key.name, Version: inst.fn.key.version, Tenant: inst.tenant,
		Backend: d.backend.Name(), StartedAs: startKindProto(inst.startKind), StartedUnixNano: inst.started.UnixNano(),
		Invocations: inst.invocations}
	if !inst.lastUsed.IsZero() {
		p.LastUsedUnixNano = inst.lastUsed.UnixNano()
	}
	if inst.sb != nil {
		p.Pid = int32(inst.sb.Record().PID)
		p.Backend = inst.sb.Record().Backend
	}
	p.State = map[string]api.InstanceState{instStarting: api.InstanceState_STARTING, instIdle: api.InstanceState_IDLE, instBusy: api.InstanceState_BUSY}[inst.state]
	return p
}

// HostStatus reports capacity, the backend in force and why, KVM and
// versions.
func (d *Daemon) HostStatus(ctx context.Context, req *api.HostStatusRequest) (*api.HostStatusResponse, error) {
	resp := &api.HostStatusResponse{Backend: d.backend.Name(), BackendReason: d.cfg.BackendReason, IsolationGrade: d.backend.IsolationGrade(),
		Cpus: uint32(runtime.NumCPU()), MemoryMib: memTotalMiB(), MaxInstances: uint32(d.cfg.MaxInstances),
		KindlingdVersion: d.cfg.Version, GoVersion: runtime.Version(), KernelVersion: kernelRelease(), StateDir: d.cfg.StateDir}
	d.mu.Lock()
	resp.Draining = d.draining
	resp.Instances = uint32(len(d.instances))
	for _, inst := range d.instances {
		resp.MemoryCommittedMib += uint64(inst.fn.spec.MemoryMib)
	}
	fns := make([]*function, 0, len(d.functions))
	for _, fn := range d.functions {
		fns = append(fns, fn)
	}
	d.mu.Unlock()
	for _, fn := range fns {
		r, q := fn.gate.depth()
		resp.Running += uint32(r)
		resp.Queued += uint32(q)
	}
	if h := d.cfg.Host; h != nil {
		k := &api.KVMStatus{Available: h.KVM.OK, Detail: h.KVM.Detail, ApiVersion: int32(h.APIVersion), HostKind: h.HostKind,
			UserSpaceRuns: h.UserSpaceRuns(), UserSpaceDetail: h.UserSyscalls.Detail}
		for _, c := range h.Capabilities {
			if c.Value != 0 {
				k.Capabilities = append(k.Capabilities, c.Name)
			}
		}
		resp.Kvm = k
	}
	return resp, nil
}

func memTotalMiB() uint64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit) >> 20
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return strings.TrimRight(string(u.Release[:]), "\x00")
}
