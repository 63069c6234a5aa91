package rootfs_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/kindlingvm/kindling/rootfs"
)

// writeTree makes a small task tree: nested directories, an executable,
// an empty directory and links that stay inside.
func writeTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string]string{
		"index.js":                       "exports.handler = async () => 1;\n",
		"node_modules/a/package.json":    `{"main":"lib/a.js"}`,
		"node_modules/a/lib/a.js":        "module.exports = 2;\n",
		"node_modules/.bin/tool.sh":      "#!/bin/sh\n",
		"node_modules/b/README":          "",
		"node_modules/c/dangling-target": "x",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "node_modules/.bin/tool.sh"), 0o700)
	os.Mkdir(filepath.Join(dir, "empty"), 0o700)
	os.Symlink("../a/lib/a.js", filepath.Join(dir, "node_modules/.bin/a"))
	os.Symlink("node_modules/a", filepath.Join(dir, "a-link"))
	os.Symlink("a-link/lib/../package.json", filepath.Join(dir, "through-link"))
	os.Symlink("missing/file", filepath.Join(dir, "dangling"))
	return dir
}

// treeImage builds an image of /bin/true and /bin/echo with spec's Run
// and Trees.
func treeImage(t *testing.T, run rootfs.TaskConfig, trees []rootfs.Tree, img string) (*rootfs.Manifest, error) {
	t.Helper()
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("not a kernel"), 0o644)
	return rootfs.BuildImage(rootfs.ImageSpec{Init: "/bin/true", Task: "/bin/echo", Kernel: kernel, Codec: rootfs.CodecNone,
		Run: run, Trees: trees}, img)
}

func TestImageTreesAndTaskConfig(t *testing.T) {
	src := writeTree(t)
	cache := t.TempDir()
	os.WriteFile(filepath.Join(cache, "entry"), []byte("cached"), 0o600)
	run := rootfs.TaskConfig{Args: []string{"{root}/runtime/bootstrap.cjs"}, Env: []string{"LAMBDA_TASK_ROOT={root}/var/task"},
		CompileCache: "var/cache/node-compile-cache"}
	trees := []rootfs.Tree{{Host: src, Path: "var/task"}, {Host: cache, Path: "var/cache/node-compile-cache/"}}
	a := filepath.Join(t.TempDir(), "a")
	m, err := treeImage(t, run, trees, a)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Trees) != 2 || m.Trees[0].Name != "var/task" || m.Trees[1].Name != "var/cache/node-compile-cache" {
		t.Fatalf("manifest trees %+v", m.Trees)
	}
	if want := int64(len("exports.handler = async () => 1;\n") + len(`{"main":"lib/a.js"}`) + len("module.exports = 2;\n") + len("#!/bin/sh\n") + 1); m.Trees[0].Size != want {
		t.Errorf("var/task size %d, want %d", m.Trees[0].Size, want)
	}

	// Host modes, times and the umask do not reach the image.
	filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if info.Mode().Type() == 0 || info.IsDir() {
			os.Chmod(p, info.Mode().Perm()|0o064)
			os.Chtimes(p, time.Unix(1, 0), time.Unix(1, 0))
		}
		return nil
	})
	b := filepath.Join(t.TempDir(), "b")
	if _, err := treeImage(t, run, trees, b); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{rootfs.InitramfsName(rootfs.CodecNone), "manifest.json"} {
		x, _ := os.ReadFile(filepath.Join(a, f))
		y, _ := os.ReadFile(filepath.Join(b, f))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two builds", f)
		}
	}

	recs := unpack(t, a, rootfs.CodecNone)
	for name, want := range map[string]uint64{
		"var/task": cpio.S_IFDIR | 0o755, "var/task/empty": cpio.S_IFDIR | 0o755, "var/task/index.js": cpio.S_IFREG | 0o644,
		"var/task/node_modules/.bin/tool.sh": cpio.S_IFREG | 0o755, "var/task/node_modules/.bin/a": cpio.S_IFLNK | 0o777,
		"var/cache/node-compile-cache/entry": cpio.S_IFREG | 0o644, "var": cpio.S_IFDIR | 0o755, rootfs.TaskConfigPath: cpio.S_IFREG | 0o644,
	} {
		r, ok := recs[name]
		if !ok {
			t.Errorf("initramfs lacks %s", name)
			continue
		}
		if r.Mode != want || r.MTime != 0 || r.UID != 0 {
			t.Errorf("%s: mode %o mtime %d uid %d, want mode %o", name, r.Mode, r.MTime, r.UID, want)
		}
	}

	dest := filepath.Join(t.TempDir(), "rootfs")
	if err := rootfs.Extract(a, m, dest); err != nil {
		t.Fatal(err)
	}
	got, err := rootfs.ReadTaskConfig(dest)
	if err != nil || strings.Join(got.Args, " ") != run.Args[0] || strings.Join(got.Env, " ") != run.Env[0] || got.CompileCache != run.CompileCache {
		t.Errorf("task config %+v %v, want %+v", got, err, run)
	}
	if data, err := os.ReadFile(filepath.Join(dest, "var/task/through-link")); err != nil || string(data) != `{"main":"lib/a.js"}` {
		t.Errorf("through-link: %q %v", data, err)
	}
	if target, err := os.Readlink(filepath.Join(dest, "var/task/dangling")); err != nil || target != "missing/file" {
		t.Errorf("dangling -> %q %v", target, err)
	}
	if st, err := os.Stat(filepath.Join(dest, "var/task/node_modules/.bin/tool.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("tool.sh: %v %v", st, err)
	}
	manifest, _ := os.ReadFile(filepath.Join(a, "manifest.json"))
	var raw map[string]json.RawMessage
	json.Unmarshal(manifest, &raw)
	if _, ok := raw["run"]; !ok {
		t.Error(`manifest lacks "run"`)
	}
}

// An image without a task config or trees has neither in its archive or
// its manifest: its bytes are what they were before either existed.
func TestImageWithoutTaskConfig(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img")
	m, err := treeImage(t, rootfs.TaskConfig{Args: []string{}}, nil, img)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := unpack(t, img, rootfs.CodecNone)[rootfs.TaskConfigPath]; ok {
		t.Error("an empty task config was packed")
	}
	manifest, _ := os.ReadFile(filepath.Join(img, "manifest.json"))
	if bytes.Contains(manifest, []byte(`"run"`)) || bytes.Contains(manifest, []byte(`"trees"`)) {
		t.Errorf("manifest names run or trees:\n%s", manifest)
	}
	if err := rootfs.Extract(img, m, filepath.Join(t.TempDir(), "r")); err != nil {
		t.Fatal(err)
	}
}

func TestImageRefusesBadTrees(t *testing.T) {
	outside := t.TempDir()
	for _, c := range []struct {
		name  string
		setup func(dir string) // adds to a good tree
		path  string
		want  string
	}{
		{"absolute-link", func(d string) { os.Symlink("/etc/passwd", filepath.Join(d, "passwd")) }, "var/task", "passwd -> /etc/passwd points outside the tree (absolute)"},
		{"dotdot-link", func(d string) { os.Symlink("../../x", filepath.Join(d, "node_modules/x")) }, "var/task", "points outside the tree (above its root)"},
		{"dotdot-to-host", func(d string) { os.Symlink("..", filepath.Join(d, "up")) }, "var/task", "up -> .. points outside"},
		// A link to the tree's root, then ".." from it: lexically inside,
		// really above the root.
		{"link-then-dotdot", func(d string) {
			os.Symlink(".", filepath.Join(d, "self"))
			os.Symlink("self/../secret", filepath.Join(d, "sneaky"))
		}, "var/task", "sneaky -> self/../secret points outside the tree (above its root)"},
		{"through-absolute-link", func(d string) {
			os.Symlink(outside, filepath.Join(d, "out"))
		}, "var/task", "out -> " + outside + " points outside"},
		{"fifo", func(d string) { syscall.Mkfifo(filepath.Join(d, "pipe"), 0o600) }, "var/task", "pipe: a p--------- cannot be packed"},
		{"absolute-path", func(string) {}, "/var/task", `tree path "/var/task"`},
		{"root", func(string) {}, ".", `tree path "."`},
		{"dotdot-path", func(string) {}, "../x", `tree path "../x"`},
		{"over-task-config", func(string) {}, "kindling", "tree at kindling overlaps /kindling/task.json"},
		{"over-a-library", func(string) {}, "lib", "tree at lib overlaps /lib"},
		{"over-init", func(string) {}, "init/x", "tree at init/x overlaps /init"},
		{"over-dev", func(string) {}, "dev", "overlaps /dev/console"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := writeTree(t)
			c.setup(dir)
			_, err := treeImage(t, rootfs.TaskConfig{}, []rootfs.Tree{{Host: dir, Path: c.path}}, filepath.Join(t.TempDir(), "img"))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	dir := writeTree(t)
	_, err := treeImage(t, rootfs.TaskConfig{}, []rootfs.Tree{{Host: dir, Path: "var/task"}, {Host: dir, Path: "var/task/node_modules"}}, filepath.Join(t.TempDir(), "img"))
	if err == nil || !strings.Contains(err.Error(), "trees at var/task and var/task/node_modules overlap") {
		t.Errorf("nested trees: %v", err)
	}
	os.WriteFile(filepath.Join(outside, "file"), nil, 0o644)
	if _, err := treeImage(t, rootfs.TaskConfig{}, []rootfs.Tree{{Host: filepath.Join(outside, "file"), Path: "x"}}, filepath.Join(t.TempDir(), "img")); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("a file as a tree: %v", err)
	}
}

// Extract checks trees and the task config as it checks the task.
func TestExtractRefusesTamperedTrees(t *testing.T) {
	src := writeTree(t)
	run := rootfs.TaskConfig{Args: []string{"{root}/var/task/index.js"}}
	img := filepath.Join(t.TempDir(), "img")
	m, err := treeImage(t, run, []rootfs.Tree{{Host: src, Path: "var/task"}}, img)
	if err != nil {
		t.Fatal(err)
	}
	orig := unpack(t, img, rootfs.CodecNone)
	records := func(change func(map[string]cpio.Record)) []cpio.Record {
		recs := map[string]cpio.Record{}
		for k, v := range orig {
			recs[k] = v
		}
		change(recs)
		var out []cpio.Record
		for _, r := range recs {
			out = append(out, r)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out
	}
	for _, c := range []struct {
		name   string
		change func(map[string]cpio.Record)
		want   string
	}{
		{"file-changed", func(r map[string]cpio.Record) {
			r["var/task/index.js"] = cpio.StaticFile("var/task/index.js", "evil()", 0o644)
		}, "tree /var/task does not match the manifest"},
		{"mode-changed", func(r map[string]cpio.Record) {
			data, _ := os.ReadFile(filepath.Join(src, "index.js"))
			r["var/task/index.js"] = cpio.StaticFile("var/task/index.js", string(data), 0o755)
		}, "tree /var/task does not match the manifest"},
		{"file-added", func(r map[string]cpio.Record) {
			r["var/task/extra.js"] = cpio.StaticFile("var/task/extra.js", "", 0o644)
		}, "tree /var/task does not match the manifest"},
		{"link-retargeted", func(r map[string]cpio.Record) {
			r["var/task/a-link"] = cpio.Symlink("var/task/a-link", "node_modules/b")
		}, "tree /var/task does not match the manifest"},
		{"link-escapes", func(r map[string]cpio.Record) {
			r["var/task/a-link"] = cpio.Symlink("var/task/a-link", "/etc")
		}, "points outside the tree"},
		{"tree-is-a-link", func(r map[string]cpio.Record) {
			for k := range r {
				if strings.HasPrefix(k, "var/task") {
					delete(r, k)
				}
			}
			r["var/task"] = cpio.Symlink("var/task", src)
		}, "tree /var/task: /var/task is not a directory"},
		{"task-config-changed", func(r map[string]cpio.Record) {
			r[rootfs.TaskConfigPath] = cpio.StaticFile(rootfs.TaskConfigPath, `{"args":["{root}/evil"]}`+"\n", 0o644)
		}, "/kindling/task.json does not match the manifest's run"},
		{"task-config-missing", func(r map[string]cpio.Record) { delete(r, rootfs.TaskConfigPath) }, "kindling/task.json: no such file"},
		{"task-config-dir-is-a-link", func(r map[string]cpio.Record) {
			delete(r, rootfs.TaskConfigPath)
			r["kindling"] = cpio.Symlink("kindling", "var/task")
		}, "/kindling/task.json: /kindling is not a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			writeArchive(t, img, records(c.change)...)
			if err := rootfs.Extract(img, m, filepath.Join(t.TempDir(), "r")); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	// A task config the manifest does not name is refused too.
	bare := *m
	bare.Run = rootfs.TaskConfig{}
	writeArchive(t, img, records(func(map[string]cpio.Record) {})...)
	if err := rootfs.Extract(img, &bare, filepath.Join(t.TempDir(), "r")); err == nil || !strings.Contains(err.Error(), "in the image but not in the manifest") {
		t.Errorf("unnamed task config: %v", err)
	}
	if err := rootfs.Extract(img, m, filepath.Join(t.TempDir(), "r")); err != nil {
		t.Errorf("the untouched archive: %v", err)
	}
}
