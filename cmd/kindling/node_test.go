package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kindlingvm/kindling/internal/testtasks/nodebig"
	"github.com/kindlingvm/kindling/rootfs/nodejs"
)

// nodeTestTar packs entries (name -> contents; a name ending in / is a
// directory), gzipped if gz.
func nodeTestTar(t *testing.T, gz bool, entries map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	var zw *gzip.Writer
	tw := tar.NewWriter(&b)
	if gz {
		zw = gzip.NewWriter(&b)
		tw = tar.NewWriter(zw)
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		h := &tar.Header{Name: n, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(entries[n]))}
		if strings.HasSuffix(n, "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(entries[n]))
	}
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	return b.Bytes()
}

// A Node task from a mirror named by KINDLING_NPM_REGISTRY into
// XDG_CACHE_HOME, with a carried compile cache: no network.
func TestPrepareNodeTask(t *testing.T) {
	node := "#!/bin/sh\necho v22.23.3\n"
	tarball := nodeTestTar(t, true, map[string]string{"package/bin/node": node})
	sum := sha512.Sum512(tarball)
	var hits atomic.Int32
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/" + nodejs.Package:
			json.NewEncoder(w).Encode(map[string]any{"dist-tags": map[string]string{"latest": "22.23.3"}, "versions": map[string]any{
				"22.23.3": map[string]any{"dist": map[string]string{"integrity": "sha512-" + base64.StdEncoding.EncodeToString(sum[:]),
					"tarball": "http://" + r.Host + "/node.tgz"}}}})
		case "/node.tgz":
			w.Write(tarball)
		default:
			http.NotFound(w, r)
		}
	}))
	defer reg.Close()
	t.Setenv(nodejs.RegistryEnv, reg.URL)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())

	src := t.TempDir()
	if err := nodebig.WriteModuleTree(src, 3); err != nil {
		t.Fatal(err)
	}
	carried := filepath.Join(t.TempDir(), "cache.tar")
	os.WriteFile(carried, nodeTestTar(t, false, map[string]string{
		"v22.23.3-x64-9ac5647c-0/":         "",
		"v22.23.3-x64-9ac5647c-0/87f06276": "entry",
		"v22.22.0-x64-9ac5647c-0/87f06276": "another node's",
		"kindling-index.json":              "{}",
	}), 0o644)
	var progress bytes.Buffer
	nt, err := prepareNodeTask(context.Background(), nodeOptions{Src: src, CompileCache: carried}, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(nt.Binary); err != nil || string(b) != node || nt.Version != "22.23.3" {
		t.Errorf("binary %s (%s): %q %v", nt.Binary, nt.Version, b, err)
	}
	if !slices.Equal(nt.Run.Args, []string{"{root}/runtime/bootstrap.cjs"}) || nt.Run.CompileCache != "var/cache/node-compile-cache" ||
		!slices.Contains(nt.Run.Env, "_HANDLER=index.handler") || !slices.Contains(nt.Run.Env, "LAMBDA_TASK_ROOT={root}/var/task") {
		t.Errorf("run %+v", nt.Run)
	}
	var paths []string
	for _, tr := range nt.Trees {
		paths = append(paths, tr.Path)
	}
	if !slices.Equal(paths, []string{"var/task", "runtime", "var/cache/node-compile-cache"}) || nt.Trees[0].Host != src {
		t.Fatalf("trees %+v", nt.Trees)
	}
	if b, _ := os.ReadFile(filepath.Join(nt.Trees[1].Host, "bootstrap.cjs")); !bytes.Equal(b, nodejs.BootstrapSource()) {
		t.Error("the runtime tree lacks bootstrap.cjs")
	}
	cache := nt.Trees[2].Host
	if b, err := os.ReadFile(filepath.Join(cache, "v22.23.3-x64-9ac5647c-0/87f06276")); err != nil || string(b) != "entry" {
		t.Errorf("carried entry: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(cache, "v22.22.0-x64-9ac5647c-0")); err == nil {
		t.Error("another node version's cache was carried")
	}
	if !strings.Contains(progress.String(), "left out v22.22.0-x64-9ac5647c-0") || !strings.Contains(progress.String(), "sha512 verified") {
		t.Errorf("progress:\n%s", progress.String())
	}
	nt.Cleanup()
	if _, err := os.Stat(cache); err == nil {
		t.Error("Cleanup left the unpacked cache")
	}

	// Once cached, no registry is needed.
	before := hits.Load()
	t.Setenv(nodejs.RegistryEnv, "http://127.0.0.1:1")
	again, err := prepareNodeTask(context.Background(), nodeOptions{Version: "22", Src: src, Handler: nodebig.Handler}, nil)
	if err != nil || again.Binary != nt.Binary || hits.Load() != before {
		t.Errorf("from the cache: %+v %v (%d requests)", again, err, hits.Load()-before)
	}
	again.Cleanup()

	for _, c := range []struct {
		o    nodeOptions
		want string
	}{
		{nodeOptions{Src: src, Handler: "main.handler"}, "no main.js, .mjs or .cjs"},
		{nodeOptions{Src: src, Handler: "index"}, "want file.export"},
		{nodeOptions{Src: src, Handler: "../x.handler"}, "outside"},
		{nodeOptions{Src: filepath.Join(src, "index.js")}, "is not a directory"},
		{nodeOptions{Src: src, Version: "20"}, "need node 22.1.0 or newer"},
		{nodeOptions{Src: src, CompileCache: filepath.Join(src, "package.json")}, "compile cache"},
	} {
		nt, err := prepareNodeTask(context.Background(), c.o, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
		nt.Cleanup()
	}
}
