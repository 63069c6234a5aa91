package main

// Node.js tasks for kindling image build: node from the npm registry, the
// runtime client and the task's code as trees, a carried compile cache
// (package rootfs/nodejs does the work).

import (
	"context"
	"io"

	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/rootfs/nodejs"
)

// nodeOptions say what Node task to build.
type nodeOptions struct {
	Version string // a Node version or range: "22" (the default), "22.23.3", "latest"
	Src     string // the JS task directory: package.json, node_modules, the handler
	Handler string // "file.export"; "index.handler" by default
	// CompileCache is a tar of a carried compile cache (kindling fetches
	// it from a version's instances), or "".
	CompileCache string
}

// nodeTask is what rootfs.BuildImage needs for a Node task.
type nodeTask struct {
	Binary  string            // node: ImageSpec.Task
	Version string            // the Node version fetched
	Run     rootfs.TaskConfig // ImageSpec.Run
	Trees   []rootfs.Tree     // ImageSpec.Trees
	Cleanup func()            // removes the temporary trees, once the image is built
}

// prepareNodeTask fetches node (reporting a long download to progress)
// and lays out the task's trees.
func prepareNodeTask(ctx context.Context, o nodeOptions, progress io.Writer) (nodeTask, error) {
	t, err := nodejs.PrepareTask(ctx, nodejs.TaskOptions{Version: o.Version, Src: o.Src, Handler: o.Handler, CompileCache: o.CompileCache}, progress)
	if err != nil {
		return nodeTask{Cleanup: func() {}}, err
	}
	return nodeTask{Binary: t.Binary, Version: t.Runtime.Version, Run: t.Run, Trees: t.Trees, Cleanup: t.Cleanup}, nil
}
