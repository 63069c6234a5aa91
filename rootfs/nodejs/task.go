package nodejs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/kindlingvm/kindling/rootfs"
)

// DefaultHandler is the handler a task gets unless told: index.js's
// export handler.
const DefaultHandler = "index.handler"

// TaskOptions say what Node task to prepare.
type TaskOptions struct {
	Version string // a version or range for FetchRuntime; "" is DefaultVersion
	Src     string // the task's directory: package.json, node_modules, the handler
	Handler string // "file.export"; "" is DefaultHandler
	// CompileCache is a tar of a carried compile cache (what the guest
	// agent ships as guest.ArtifactNodeCompileCache), or "".
	CompileCache string
	// Fetcher gets node; nil is a zero Fetcher reporting to progress.
	Fetcher *Fetcher
}

// Task is a Node task ready for rootfs.BuildImage.
type Task struct {
	Runtime Runtime
	Binary  string            // node: ImageSpec.Task
	Run     rootfs.TaskConfig // ImageSpec.Run
	Trees   []rootfs.Tree     // ImageSpec.Trees
	// Cleanup removes the temporary trees; call it once the image is
	// built.
	Cleanup func()
}

// PrepareTask fetches node and lays out the task's trees: Src at TaskDir,
// the runtime client at RuntimeDir, and the carried compile cache, if
// any, at CompileCacheDir.
func PrepareTask(ctx context.Context, o TaskOptions, progress io.Writer) (Task, error) {
	t := Task{Cleanup: func() {}}
	if o.Handler == "" {
		o.Handler = DefaultHandler
	}
	if err := checkHandler(o.Src, o.Handler); err != nil {
		return t, err
	}
	f := o.Fetcher
	if f == nil {
		f = &Fetcher{Progress: progress}
	}
	rt, err := f.FetchRuntime(ctx, o.Version)
	if err != nil {
		return t, err
	}
	tmp, err := os.MkdirTemp("", "kindling-node-")
	if err != nil {
		return t, err
	}
	t.Cleanup = func() { os.RemoveAll(tmp) }
	fail := func(err error) (Task, error) {
		t.Cleanup()
		return Task{Cleanup: func() {}}, err
	}
	runtimeDir := filepath.Join(tmp, "runtime")
	if err := WriteRuntime(runtimeDir); err != nil {
		return fail(err)
	}
	t.Runtime, t.Binary = rt, rt.Binary
	t.Trees = []rootfs.Tree{{Host: o.Src, Path: TaskDir}, {Host: runtimeDir, Path: RuntimeDir}}
	if o.CompileCache != "" {
		cacheDir := filepath.Join(tmp, "compile-cache")
		got, err := UnpackCompileCache(o.CompileCache, cacheDir, rt.Version)
		if err != nil {
			return fail(err)
		}
		if len(got.Dropped) > 0 && progress != nil {
			fmt.Fprintf(progress, "compile cache: left out %s (the image runs node %s)\n", strings.Join(got.Dropped, ", "), rt.Version)
		}
		if progress != nil {
			fmt.Fprintf(progress, "compile cache: %d entries, %.1f MB, carried from %s\n", got.Files, float64(got.Bytes)/1e6, o.CompileCache)
		}
		t.Trees = append(t.Trees, rootfs.Tree{Host: cacheDir, Path: CompileCacheDir})
	}
	t.Run = rootfs.TaskConfig{
		Args: []string{rootfs.RootPlaceholder + RuntimeDir + "/" + Bootstrap},
		Env: []string{
			"_HANDLER=" + o.Handler,
			"LAMBDA_TASK_ROOT=" + rootfs.RootPlaceholder + TaskDir,
			// Node 24.12+ keys its cache by paths relative to it, which the
			// image keeps whatever its root; older nodes ignore it.
			"NODE_COMPILE_CACHE_PORTABLE=1",
		},
		CompileCache: CompileCacheDir,
	}
	return t, nil
}

// checkHandler checks, before anything is fetched, that src is a
// directory holding handler's module.
func checkHandler(src, handler string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("node task: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("node task: %s is not a directory", src)
	}
	slash := strings.LastIndex(handler, "/")
	dot := strings.Index(handler[slash+1:], ".")
	if dot <= 0 || slash+1+dot == len(handler)-1 || strings.HasPrefix(handler, "/") {
		return fmt.Errorf("node task: handler %q: want file.export, such as index.handler", handler)
	}
	mod := filepath.Join(src, filepath.FromSlash(handler[:slash+1+dot]))
	if rel, err := filepath.Rel(src, mod); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("node task: handler %q is outside %s", handler, src)
	}
	for _, ext := range []string{".js", ".mjs", ".cjs"} {
		if _, err := os.Stat(mod + ext); err == nil {
			return nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("node task: %w", err)
		}
	}
	return fmt.Errorf("node task: handler %q: no %s.js, .mjs or .cjs in %s", handler, handler[:slash+1+dot], src)
}
