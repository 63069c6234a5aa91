package nodejs

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

// Where a Node task's parts sit in its image, relative to the root.
const (
	// TaskDir holds the task's code (LAMBDA_TASK_ROOT).
	TaskDir = "var/task"
	// RuntimeDir holds the runtime client, Bootstrap.
	RuntimeDir = "runtime"
	// Bootstrap is the runtime client, node's main script.
	Bootstrap = "bootstrap.cjs"
	// CompileCacheDir is NODE_COMPILE_CACHE: kindling-init points node
	// at it (rootfs.TaskConfig.CompileCache) and ships it on request.
	CompileCacheDir = "var/cache/node-compile-cache"
)

//go:embed bootstrap.cjs
var bootstrap []byte

// BootstrapSource is the runtime client's source.
func BootstrapSource() []byte { return append([]byte(nil), bootstrap...) }

// WriteRuntime writes the runtime client into dir, the tree packed at
// RuntimeDir.
func WriteRuntime(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("node runtime: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, Bootstrap), bootstrap, 0o644); err != nil {
		return fmt.Errorf("node runtime: %w", err)
	}
	return nil
}
