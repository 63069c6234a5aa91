package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/testdaemon"
)

// standbys lists kindlingd's standby restores of fn.
func standbys(t *testing.T, d *testdaemon.Daemon, fn string) []*api.Instance {
	t.Helper()
	l, err := d.API.ListInstances(context.Background(), &api.ListInstancesRequest{Function: fn})
	if err != nil {
		t.Fatal(err)
	}
	var out []*api.Instance
	for _, in := range l.Instances {
		if in.State == api.InstanceState_STANDBY {
			out = append(out, in)
		}
	}
	return out
}

func pidAlive(pid int32) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(int(pid))))
	return err == nil
}

// TestStandbyRestores: once a function has a warm snapshot, kindlingd
// keeps a VM restored from it and not started; a new tenant's
// invocation starts that VM (a RESTORE start, on the standby's
// instance), and a new standby replaces it. Deleting the function and
// stopping kindlingd stop standbys; a kindlingd that died leaves them to
// the next, which stops them.
func TestStandbyRestores(t *testing.T) {
	img, sha := echoImage(t)
	d := startDaemon(t, "--backend", "microvm", "--standby-restores", "1")
	ctx := context.Background()
	register := func(name string) {
		t.Helper()
		_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: name, MemoryMib: 64, TimeoutMs: 10_000,
			Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	register("echo")
	if sb := standbys(t, d, "echo"); len(sb) != 0 {
		t.Fatalf("standbys before any snapshot: %v", sb)
	}
	mustInvoke(t, d, &api.InvokeRequest{Function: "echo", Tenant: "a", Payload: []byte(`{}`)}) // cold: cuts the snapshot
	var sb []*api.Instance
	waitFor(t, "a standby restore", func() bool { sb = standbys(t, d, "echo"); return len(sb) == 1 })
	first := sb[0]
	if first.Pid == 0 || !pidAlive(first.Pid) || first.Tenant != "" {
		t.Fatalf("standby: %v", first)
	}
	r := mustInvoke(t, d, &api.InvokeRequest{Function: "echo", Tenant: "b", Payload: []byte(`{"text":"b"}`)})
	if r.State != api.InvocationState_SUCCEEDED || r.Start != api.StartKind_RESTORE || r.InstanceId != first.Id {
		t.Fatalf("new tenant: %v, want a RESTORE on the standby %s", r, first.Id)
	}
	t.Logf("start from a standby: %d us", r.Phases.StartUs)
	waitFor(t, "a new standby", func() bool { sb = standbys(t, d, "echo"); return len(sb) == 1 && sb[0].Id != first.Id })
	// Deleting the function stops its standby.
	if _, err := d.API.DeleteFunction(ctx, &api.DeleteFunctionRequest{Name: "echo"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted function's standby to stop", func() bool { return !pidAlive(sb[0].Pid) })

	// A standby left by a kindlingd that died is stopped by the next.
	register("echo2")
	mustInvoke(t, d, &api.InvokeRequest{Function: "echo2", Payload: []byte(`{}`)})
	waitFor(t, "a standby of echo2", func() bool { sb = standbys(t, d, "echo2"); return len(sb) == 1 })
	d.Kill()
	if !pidAlive(sb[0].Pid) {
		t.Fatal("the standby died with kindlingd")
	}
	d = restartDaemon(t, d.StateDir, "--backend", "microvm", "--standby-restores", "1")
	waitFor(t, "the dead kindlingd's standby to stop and its directory to go", func() bool {
		_, err := os.Stat(filepath.Join(d.StateDir, "sandboxes", sb[0].Id))
		return !pidAlive(sb[0].Pid) && os.IsNotExist(err)
	})
	// The new kindlingd makes its own; a graceful stop stops it.
	var again []*api.Instance
	waitFor(t, "a new standby after the restart", func() bool { again = standbys(t, d, "echo2"); return len(again) == 1 })
	if code, err := d.Terminate(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("stop: %d %v", code, err)
	}
	if pidAlive(again[0].Pid) {
		t.Fatal("a standby outlived kindlingd's orderly stop")
	}
}
