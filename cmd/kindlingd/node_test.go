package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/testdaemon"
	"github.com/kindlingvm/kindling/internal/testtasks/nodebig"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/rootfs/nodejs"
)

// nodeImage packs a Node task (the nodebig module tree) with node from
// the npm registry (cached), carrying cache (a compile cache tar) if set.
func nodeImage(t *testing.T, src, cache string) (img, sha string) {
	t.Helper()
	task, err := nodejs.PrepareTask(context.Background(), nodejs.TaskOptions{Src: src, Handler: nodebig.Handler, CompileCache: cache}, os.Stderr)
	if err != nil {
		t.Fatalf("prepare the Node task (needs the npm registry, or node in the cache): %v", err)
	}
	defer task.Cleanup()
	img, sha, _, err = testdaemon.ProcessImage(t.TempDir(), rootfs.ImageSpec{Init: bins.Init, Task: task.Binary, Run: task.Run, Trees: task.Trees})
	if err != nil {
		t.Fatal(err)
	}
	return img, sha
}

// TestNodeCompileCacheCarried: a Node task's warm-ups fill its compile
// cache; kindlingd collects it; the next version's image carries it, and
// its fresh environment loads its modules from it, by Node's own account
// (NODE_DEBUG_NATIVE=COMPILE_CACHE).
func TestNodeCompileCacheCarried(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: fetches node from the npm registry and builds two 130 MB images")
	}
	src := t.TempDir()
	if err := nodebig.WriteModuleTree(src, 200); err != nil {
		t.Fatal(err)
	}
	img1, sha1 := nodeImage(t, src, "")
	d := startDaemon(t, "-v")
	ctx := context.Background()
	env := map[string]string{"NODE_DEBUG_NATIVE": "COMPILE_CACHE"}
	if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "node", Version: "1",
		Environment: env, WarmupPayloads: [][]byte{[]byte(`{"n":1}`), []byte(`{"n":2}`)},
		Image: &api.ImageRef{Path: img1, ManifestSha256: sha1}}}); err != nil {
		t.Fatal(err)
	}
	if r := mustInvoke(t, d, &api.InvokeRequest{Function: "node", Payload: []byte(`{"n":3}`)}); r.State != api.InvocationState_SUCCEEDED {
		t.Fatalf("node v1: %v", r)
	}
	// Collected off the invocation's path.
	waitFor(t, "version 1's compile cache collected", func() bool {
		fs, err := d.API.ListFunctions(ctx, &api.ListFunctionsRequest{})
		return err == nil && len(fs.Functions) == 1 && len(fs.Functions[0].GetUsage().GetArtifacts()) == 1
	})
	var tarball bytes.Buffer
	st, err := d.API.GetArtifact(ctx, &api.GetArtifactRequest{Function: "node", Version: "1", Name: guest.ArtifactNodeCompileCache})
	if err != nil {
		t.Fatal(err)
	}
	for {
		c, err := st.Recv()
		if err != nil {
			break
		}
		tarball.Write(c.Data)
	}
	if tarball.Len() == 0 {
		t.Fatalf("no compile cache collected from version 1's warm-ups; kindlingd's log:\n%s", tail(d.Log.String(), 40))
	}
	cache := filepath.Join(t.TempDir(), "cache.tar")
	os.WriteFile(cache, tarball.Bytes(), 0o644)
	img2, sha2 := nodeImage(t, src, cache)
	if _, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "node", Version: "2",
		Environment: env, Image: &api.ImageRef{Path: img2, ManifestSha256: sha2}}}); err != nil {
		t.Fatal(err)
	}
	mark := len(d.Log.String())
	if r := mustInvoke(t, d, &api.InvokeRequest{Function: "node", Version: "2", Payload: []byte(`{"n":3}`)}); r.State != api.InvocationState_SUCCEEDED || r.Start != api.StartKind_COLD {
		t.Fatalf("node v2: %v", r)
	}
	// Node's account of version 2's first environment.
	log := d.Log.String()[mark:]
	accepted := regexp.MustCompile(`cache for (?:CommonJS )?\S+mod\S*\.js was accepted`)
	hits := len(accepted.FindAllString(log, -1))
	t.Logf("version 2's first environment: %d modules loaded from the carried compile cache (%d bytes)", hits, tarball.Len())
	if hits < 150 {
		t.Fatalf("only %d of 200 modules hit the carried cache; kindlingd's log:\n%s", hits, tail(log, 40))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
