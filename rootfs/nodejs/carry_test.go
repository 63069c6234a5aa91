package nodejs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/testtasks/nodebig"
	"github.com/kindlingvm/kindling/rootfs"
)

// carryModules is nodebig's size here: 1.7 MB of JavaScript.
const carryModules = 400

// tarCacheDir packs dir's contents as the guest agent ships
// guest.ArtifactNodeCompileCache: directories and regular files, names
// relative to dir.
func tarCacheDir(t *testing.T, dir, out string) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: filepath.ToSlash(rel) + "/", Mode: 0o755})
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = os.WriteFile(out, b.Bytes(), 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// buildAndExtract builds task's image and extracts it at root, as the
// process backend does.
func buildAndExtract(t *testing.T, task Task, root string) {
	t.Helper()
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("not a kernel"), 0o644)
	img := filepath.Join(dir, "img")
	m, err := rootfs.BuildImage(rootfs.ImageSpec{Init: "/bin/true", Task: task.Binary, Kernel: kernel, Codec: rootfs.CodecNone,
		Run: task.Run, Trees: task.Trees}, img)
	if err != nil {
		t.Fatal(err)
	}
	if err := rootfs.Extract(img, m, root); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(img)
}

// run is one life of the task: started at root, serving invocations.
type run struct {
	init  time.Duration   // start to the first GET invocation/next
	first time.Duration   // the first invocation, handed out to answered
	rest  []time.Duration // the others
	body  string          // the first answer
	log   string          // its stderr
}

// runTask starts the extracted image at root as kindling-init would (its
// TaskConfig resolved against root, NODE_COMPILE_CACHE pointed at
// cacheDir), serves it invocations, and stops it once it has flushed
// after the last.
func runTask(t *testing.T, root, cacheDir string, invocations int, env ...string) run {
	return runTaskAs(t, 0, root, cacheDir, invocations, env...)
}

// runTaskAs is runTask as uid.
func runTaskAs(t *testing.T, uid int, root, cacheDir string, invocations int, env ...string) run {
	t.Helper()
	c, err := rootfs.ReadTaskConfig(root)
	if err != nil {
		t.Fatal(err)
	}
	var args, cenv []string
	for _, a := range c.Args {
		args = append(args, rootfs.Resolve(root, a))
	}
	for _, e := range c.Env {
		cenv = append(cenv, rootfs.Resolve(root, e))
	}
	cenv = append(append(cenv, "NODE_COMPILE_CACHE="+cacheDir), env...)
	a := newFakeAPI(t)
	tk := startTask(t, a, filepath.Join(root, "task"), args, cenv, uid)
	var r run
	r.init = a.waitNext().Sub(tk.started)
	for i := range invocations {
		inv := a.invoke(fmt.Sprintf(`{"seed": %d}`, i+1))
		if inv.kind != "response" {
			t.Fatalf("invocation %d: %s %s; log:\n%s", i, inv.kind, inv.body, tk.log())
		}
		if i == 0 {
			r.first, r.body = inv.ended.Sub(inv.served), string(inv.body)
		} else {
			r.rest = append(r.rest, inv.ended.Sub(inv.served))
		}
		a.waitNext() // it has flushed
	}
	tk.stop()
	r.log = tk.log()
	return r
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestCompileCacheCarriesToAnotherRoot is the life of a compile cache:
// version 1's instance fills it, the host fetches it as a tar, version 2
// is built with it, and version 2's instances, extracted elsewhere, load
// every module from it (Node's own debug output says so): node 22 through
// the runtime client's re-keying, node 24 through its portable mode.
func TestCompileCacheCarriesToAnotherRoot(t *testing.T) {
	for _, v := range []string{DefaultVersion, "24"} {
		t.Run("node-"+v, func(t *testing.T) { carryAcrossRoots(t, v) })
	}
}

func carryAcrossRoots(t *testing.T, spec string) {
	rt := realNode(t, spec)
	work := t.TempDir()
	src := filepath.Join(work, "src")
	if err := nodebig.WriteModuleTree(src, carryModules); err != nil {
		t.Fatal(err)
	}
	fetcher := &Fetcher{Progress: testWriter{t}}
	ctx := context.Background()

	// Version 1: no cache to carry.
	v1, err := PrepareTask(ctx, TaskOptions{Version: spec, Src: src, Handler: nodebig.Handler, Fetcher: fetcher}, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	defer v1.Cleanup()
	root1 := filepath.Join(work, "roots", "v1")
	buildAndExtract(t, v1, root1)
	cache1 := filepath.Join(root1, CompileCacheDir)
	// The first run fills the cache that is carried.
	first := runTask(t, root1, cache1, 3)
	want := fmt.Sprintf(`{"modules":%d,"checksum":`, carryModules)
	if len(first.body) < len(want) || first.body[:len(want)] != want {
		t.Fatalf("answer %s, want %s...", first.body, want)
	}

	// The host fetches the cache; version 2 carries it, at another root.
	carried := filepath.Join(work, "cache.tar")
	tarCacheDir(t, cache1, carried)
	st, _ := os.Stat(carried)
	v2, err := PrepareTask(ctx, TaskOptions{Version: spec, Src: src, Handler: nodebig.Handler, CompileCache: carried, Fetcher: fetcher}, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Cleanup()
	if got := v2.Trees[len(v2.Trees)-1]; got.Path != CompileCacheDir {
		t.Fatalf("trees %+v", v2.Trees)
	}
	root2 := filepath.Join(work, "roots", "v2")
	buildAndExtract(t, v2, root2)
	cache2 := filepath.Join(root2, CompileCacheDir)
	pristine := filepath.Join(work, "carried")
	if err := os.CopyFS(pristine, os.DirFS(cache2)); err != nil {
		t.Fatal(err)
	}
	// fresh puts the carried cache back as the image has it, so that
	// every warm run re-keys it as a new instance of version 2 would.
	fresh := func() {
		if err := os.RemoveAll(cache2); err == nil {
			err = os.CopyFS(cache2, os.DirFS(pristine))
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	// Node's own account: every module hits the carried cache.
	fresh()
	debug := runTask(t, root2, cache2, 1, "NODE_DEBUG_NATIVE=COMPILE_CACHE")
	// Node 22 keys entries by absolute path: the runtime client re-keys
	// them; node 24.12+ keys them relative to the cache, needing nothing.
	v, _ := parseVersion(rt.Version)
	portable := !v.less(version{24, 12, 0, ""})
	checkHits(t, debug.log, root2, !portable)

	// A cache made as root, used by another user: node's cache directory
	// is per uid, and the runtime client moves the carried entries into
	// the new user's.
	if os.Geteuid() == 0 {
		const nobody = 65534
		fresh()
		// The test's own directories are 0700; nothing above them is
		// touched.
		for _, d := range []string{filepath.Dir(work), work} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		filepath.Walk(root2, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, nobody, nobody) })
		other := runTaskAs(t, nobody, root2, cache2, 1, "NODE_DEBUG_NATIVE=COMPILE_CACHE")
		checkHits(t, other.log, root2, !portable)
		tags, _ := filepath.Glob(filepath.Join(cache2, "v*-"+fmt.Sprint(nobody)))
		if len(tags) != 1 {
			t.Errorf("no cache directory for uid %d: %v", nobody, tags)
		}
		filepath.Walk(root2, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, 0, 0) })
	}

	// Figures: cold runs (version 1's root, each with an empty cache of
	// its own) and warm ones (version 2's, the carried cache each time),
	// alternated so that the machine's load falls on both alike.
	const runs = 5
	var cold, warm []run
	for i := range runs {
		cold = append(cold, runTask(t, root1, filepath.Join(work, fmt.Sprintf("empty-cache-%d", i)), 3))
		fresh()
		warm = append(warm, runTask(t, root2, cache2, 3))
		if warm[i].body != first.body || cold[i].body != first.body {
			t.Errorf("answers differ: %s, %s, first %s", cold[i].body, warm[i].body, first.body)
		}
	}
	t.Logf("node %s, %d modules (1.7 MB of JS), carried cache %d kB; median (min) of %d runs:", rt.Version, carryModules, st.Size()/1000, runs)
	for _, c := range []struct {
		name string
		runs []run
	}{{"no cache     ", cold}, {"carried cache", warm}} {
		var init, first, rest []time.Duration
		for _, r := range c.runs {
			init, first, rest = append(init, r.init), append(first, r.first), append(rest, r.rest...)
		}
		t.Logf("  %s: init (start to first invocation/next) %v (%v), first invocation %v (%v), later ones %v",
			c.name, median(init).Round(time.Millisecond), slices.Min(init).Round(time.Millisecond),
			median(first).Round(time.Millisecond), slices.Min(first).Round(time.Millisecond), median(rest).Round(100*time.Microsecond))
	}
}

// checkHits checks Node's own account of a run at root: every nodebig
// module and the handler were loaded from the carried cache, and the
// runtime client re-keyed the entries for this root.
func checkHits(t *testing.T, log, root string, rekeyed bool) {
	t.Helper()
	real, _ := filepath.EvalSymlinks(root)
	accepted := regexp.MustCompile(`cache for (?:CommonJS )?(\S+) was accepted`)
	missed := regexp.MustCompile(`reading cache from \S+ for CommonJS (\S+)\.\.\. no such file`)
	hits := map[string]bool{}
	for _, m := range accepted.FindAllStringSubmatch(log, -1) {
		hits[m[1]] = true
	}
	var misses []string
	for _, m := range missed.FindAllStringSubmatch(log, -1) {
		misses = append(misses, m[1])
	}
	sort.Strings(misses)
	want := []string{filepath.Join(real, TaskDir, "index.js")}
	for i := range carryModules {
		want = append(want, filepath.Join(real, TaskDir, "node_modules", nodebig.Module(i), "lib", "index.js"))
	}
	var lacking []string
	for _, w := range want {
		if !hits[w] {
			lacking = append(lacking, w)
		}
	}
	if len(lacking) > 0 || regexp.MustCompile(`re-keyed \d+ of \d+ entries`).MatchString(log) != rekeyed {
		head := log
		if len(head) > 4000 {
			head = head[:4000]
		}
		t.Errorf("%d of %d modules did not hit the carried cache (first: %v); misses %v; log:\n%s", len(lacking), len(want), lacking[:min(3, len(lacking))], misses, head)
	}
	rekey := regexp.MustCompile(`re-keyed .*`).FindString(log)
	t.Logf("node's debug output: %d modules loaded from the carried cache, misses: %v; %s", len(hits), misses, rekey)
}
