package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/snapshot"
)

// TestChangedSnapshotRefused: a warm snapshot whose files were changed
// after it was cut is refused by its seal (a stat per restore, digests on
// first use and on any difference), both while kindlingd runs and across
// a restart; the invocation boots cold instead, which cuts a new snapshot
// that later restores use.
func TestChangedSnapshotRefused(t *testing.T) {
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm")
	ctx := context.Background()
	_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "echo", MemoryMib: 64, TimeoutMs: 10_000,
		Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	run := func(tenant string, want api.StartKind) {
		t.Helper()
		r := mustInvoke(t, d, &api.InvokeRequest{Function: "echo", Tenant: tenant, Payload: []byte(`{"text":"` + tenant + `"}`)})
		if r.State != api.InvocationState_SUCCEEDED || !strings.Contains(string(r.Response), tenant) {
			t.Fatalf("tenant %s: %v", tenant, r)
		}
		if r.Start != want {
			t.Fatalf("tenant %s started %v, want %v", tenant, r.Start, want)
		}
	}
	run("first", api.StartKind_COLD)
	run("restored", api.StartKind_RESTORE)
	dirs, _ := filepath.Glob(filepath.Join(d.StateDir, "snapshots", "echo", "*"))
	if len(dirs) != 1 {
		t.Fatalf("snapshot dirs: %v", dirs)
	}
	mem := filepath.Join(dirs[0], snapshot.MemoryFile)
	poke := func() {
		t.Helper()
		f, err := os.OpenFile(mem, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Into guest memory the guest never used: a hole becomes a page.
		if _, err := f.WriteAt([]byte{0xcc}, 40<<20); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	poke()
	run("after-change", api.StartKind_COLD)
	if !strings.Contains(d.Log.String(), "warm snapshot refused") || !strings.Contains(d.Log.String(), mem+": snapshot changed after it was cut") {
		t.Fatalf("kindlingd's log does not name the changed file %s", mem)
	}
	run("recut", api.StartKind_RESTORE)

	// Changed while kindlingd was down, with its times set back: the
	// digests on first use after the restart catch it.
	if code, err := d.Terminate(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("stop kindlingd: %d %v", code, err)
	}
	fi, err := os.Stat(mem)
	if err != nil {
		t.Fatal(err)
	}
	poke()
	os.Chtimes(mem, fi.ModTime(), fi.ModTime())
	d = restartDaemon(t, d.StateDir, "--backend", "microvm")
	run("after-restart", api.StartKind_COLD)
	if !strings.Contains(d.Log.String(), "warm snapshot refused") {
		t.Fatal("kindlingd's log does not say the snapshot was refused after the restart")
	}
	run("after-restart-recut", api.StartKind_RESTORE)
}
