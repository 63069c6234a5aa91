// Package taskconfig is how kindling-init runs an image's task: the file
// `kindling image build` packs beside it. It is apart from package rootfs
// so that kindling-init, which reads it in every guest, links none of
// the image builder.
package taskconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Path is where an image keeps its Config, relative to the
// image root: kindling-init reads it beside the task it is given.
const Path = "kindling/task.json"

// Config is how kindling-init runs an image's task. Paths in it are
// relative to the image root ("/" in a microVM, the extracted rootfs
// under the process backend); kindling-init resolves them.
type Config struct {
	// Args follow the task's path in its argv; an argument that starts
	// with "{root}/" names a file in the image.
	Args []string `json:"args,omitempty"`
	// Env is added to the task's environment (NAME=value); values may
	// start with "{root}/" too.
	Env []string `json:"env,omitempty"`
	// Profiling: the guest agent samples the task's CPU and ships pprof
	// profiles (the kernel has PERF_EVENTS for it).
	Profiling bool `json:"profiling,omitempty"`
	// CompileCache is a writable directory (relative to the root) the
	// agent points NODE_COMPILE_CACHE at and ships to the host on
	// request; it may be baked in from a previous version.
	CompileCache string `json:"compile_cache,omitempty"`
}

// RootPlaceholder starts a Config path that is in the image.
const RootPlaceholder = "{root}/"

// Read reads root's TaskConfig; an image without one runs its
// task with no arguments.
func Read(root string) (Config, error) {
	var c Config
	b, err := os.ReadFile(filepath.Join(root, Path))
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", Path, err)
	}
	return c, nil
}

// Resolve replaces a leading RootPlaceholder in s with root.
func Resolve(root, s string) string {
	if rest, ok := strings.CutPrefix(s, RootPlaceholder); ok {
		return filepath.Join(root, rest)
	}
	if i := strings.Index(s, "="+RootPlaceholder); i >= 0 { // NAME={root}/...
		return s[:i+1] + filepath.Join(root, s[i+1+len(RootPlaceholder):])
	}
	return s
}
