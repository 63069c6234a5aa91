package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/host"
	"github.com/kindlingvm/kindling/internal/echoguest"
)

// TestWarmSnapshotHooks: the echo guest as a task with SnapStart-style
// hooks under kindlingd's microVM backend. A prewarm runs the warm-up
// invocations, then the checkpoint (the guest's before-snapshot hook),
// then cuts the snapshot; every restore runs the after-restore hook before
// its first invocation; two restores of one snapshot draw different
// random values.
func TestWarmSnapshotHooks(t *testing.T) {
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm", "--standby-restores", "0")
	ctx := context.Background()
	_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "warm", Tenant: "acme",
		MemoryMib: 128, TimeoutMs: 10_000, ConcurrencyLimit: 4,
		WarmupPayloads: [][]byte{[]byte(`{"text":"warm-a"}`), []byte(`{"text":"warm-b"}`)},
		Image:          &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "warm"})
	if err != nil || p.Snapshot == "" {
		t.Fatalf("prewarm: %v %v", p, err)
	}
	if p.WarmupsRun != 2 {
		t.Fatalf("prewarm ran %d warm-ups before the snapshot, want 2", p.WarmupsRun)
	}
	if _, err := os.Stat(filepath.Join(p.Snapshot, host.CheckpointMarker)); err != nil {
		t.Fatalf("the snapshot was not cut after a checkpoint: %v", err)
	}
	// Two other tenants: two restores of the one snapshot.
	var randoms []string
	for _, tenant := range []string{"globex", "initech"} {
		r := mustInvoke(t, d, &api.InvokeRequest{Function: "warm", Tenant: tenant, Payload: []byte(echoguest.EventsOp)})
		if r.State != api.InvocationState_SUCCEEDED || r.Start != api.StartKind_RESTORE {
			t.Fatalf("%s: %v", tenant, r)
		}
		events := strings.Split(string(r.Response), "\n")
		var kinds []string
		for _, e := range events {
			switch {
			case strings.HasPrefix(e, echoguest.EventInvokePrefix+"warmup-"):
				kinds = append(kinds, "warm-up")
			case strings.HasPrefix(e, echoguest.EventInvokePrefix):
				kinds = append(kinds, "invoke")
			default:
				kinds = append(kinds, e)
			}
		}
		want := []string{"warm-up", "warm-up", echoguest.EventBeforeSnapshot, echoguest.EventAfterRestore, "invoke"}
		if strings.Join(kinds, ",") != strings.Join(want, ",") {
			t.Fatalf("%s: events %q, want %v", tenant, events, want)
		}
		r = mustInvoke(t, d, &api.InvokeRequest{Function: "warm", Tenant: tenant, Payload: []byte(echoguest.RandomOp)})
		if r.State != api.InvocationState_SUCCEEDED {
			t.Fatalf("%s random: %v", tenant, r)
		}
		randoms = append(randoms, string(r.Response))
	}
	if randoms[0] == randoms[1] {
		t.Fatalf("two restores of one snapshot drew the same random value %q", randoms[0])
	}
}

// TestHangingBeforeSnapshotHook: a task whose before-snapshot hook hangs
// has its warm snapshot abandoned at the checkpoint deadline; the version
// serves without one, from a new instance.
func TestHangingBeforeSnapshotHook(t *testing.T) {
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm", "--standby-restores", "0")
	ctx := context.Background()
	_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "hang", Tenant: "acme",
		MemoryMib: 128, TimeoutMs: 10_000, CheckpointTimeoutMs: 500,
		WarmupPayloads: [][]byte{[]byte(echoguest.HangCheckpointOp)},
		Image:          &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	r := mustInvoke(t, d, &api.InvokeRequest{Function: "hang", Payload: []byte(`{"text":"still served"}`)})
	if r.State != api.InvocationState_SUCCEEDED || !strings.Contains(string(r.Response), "still served") {
		t.Fatalf("invocation after an abandoned snapshot: %v", r)
	}
	fs, err := d.API.ListFunctions(ctx, &api.ListFunctionsRequest{})
	if err != nil || len(fs.Functions) != 1 || fs.Functions[0].Snapshot != "" {
		t.Fatalf("functions: %v %v", fs, err)
	}
	p, err := d.API.Prewarm(ctx, &api.PrewarmRequest{Function: "hang"})
	if err != nil || p.Snapshot != "" || !strings.Contains(p.SnapshotNote, "abandoned") {
		t.Fatalf("prewarm: %v %v", p, err)
	}
	// No instance is left stuck in its hook: every instance answers.
	for i := range 3 {
		r := mustInvoke(t, d, &api.InvokeRequest{Function: "hang", Payload: []byte(`{"text":"again"}`)})
		if r.State != api.InvocationState_SUCCEEDED {
			t.Fatalf("invocation %d: %v", i, r)
		}
	}
}
