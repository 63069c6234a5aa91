package nodejs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const protocolHandler = `'use strict';
const hooks = [];
exports.handler = async (event, context) => {
  if (event.op === 'throw') throw new TypeError('bad ' + event.x);
  if (event.op === 'ctx') {
    return { id: context.awsRequestId, left: context.getRemainingTimeInMillis() > 0, fn: context.functionName,
      cwd: process.cwd(), trace: process.env._X_AMZN_TRACE_ID };
  }
  if (event.op === 'undefined') return undefined;
  if (event.op === 'crash') {
    setTimeout(() => { throw new RangeError('escaped'); }, 1);
    return new Promise(() => {});
  }
  return { echo: event };
};
exports.nested = { deep: { fn: async () => 'deep' } };
exports.cb = (event, context, callback) => { setTimeout(() => callback(null, { cb: event.x }), 1); };
exports.cberr = (event, context, callback) => callback(new Error('cb failed'));
exports.beforeSnapshot = async () => { hooks.push('before'); };
exports.afterRestore = async () => {
  hooks.push('after');
  if (process.env.FAIL_RESTORE) throw new Error('restore hook failed');
};
exports.hooks = async () => hooks;
`

// protocolTask writes a task root with the runtime client and a handler
// module; it returns the root.
func protocolTask(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"var/task/index.js":           protocolHandler,
		"var/task/esm.mjs":            "export const handler = async (e) => ({ esm: e.x });\n",
		"var/task/broken.js":          "exports.handler = async () => {;\n",
		"var/task/lib/app.js":         "exports.run = async () => 'lib';\n",
		"var/task/requiresmissing.js": "require('not-installed');\nexports.handler = async () => 1;\n",
	}
	for name, data := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteRuntime(filepath.Join(root, RuntimeDir)); err != nil {
		t.Fatal(err)
	}
	return root
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	return m
}

func TestBootstrapServesInvocations(t *testing.T) {
	rt := realNode(t, DefaultVersion)
	root := protocolTask(t)
	run := func(t *testing.T, handler string, env ...string) (*fakeAPI, *task) {
		a := newFakeAPI(t)
		tk := startTask(t, a, rt.Binary, []string{filepath.Join(root, RuntimeDir, Bootstrap)},
			append([]string{"_HANDLER=" + handler, "LAMBDA_TASK_ROOT=" + filepath.Join(root, TaskDir)}, env...), 0)
		return a, tk
	}
	t.Run("async", func(t *testing.T) {
		a, tk := run(t, "index.handler")
		inv := a.invoke(`{"x": 1}`)
		if inv.kind != "response" || string(inv.body) != `{"echo":{"x":1}}` {
			t.Errorf("echo: %s %s", inv.kind, inv.body)
		}
		inv = a.invoke(`{"op": "throw", "x": 2}`)
		doc := decode(t, inv.body)
		if inv.kind != "error" || doc["errorType"] != "TypeError" || doc["errorMessage"] != "bad 2" || inv.errorType != "TypeError" {
			t.Errorf("throw: %s %s (header %q)", inv.kind, inv.body, inv.errorType)
		}
		if st, ok := doc["stackTrace"].([]any); !ok || len(st) == 0 || !strings.Contains(st[0].(string), "index.js") {
			t.Errorf("stack trace %v", doc["stackTrace"])
		}
		inv = a.invoke(`{"op": "ctx"}`)
		got := decode(t, inv.body)
		if got["id"] != inv.id || got["left"] != true || got["fn"] != "test" || got["cwd"] != filepath.Join(root, TaskDir) || got["trace"] != "Root=1-"+inv.id {
			t.Errorf("context: %s", inv.body)
		}
		if inv = a.invoke(`{"op": "undefined"}`); string(inv.body) != "null" {
			t.Errorf("undefined: %s", inv.body)
		}
		if tk.log() != "" {
			t.Errorf("log:\n%s", tk.log())
		}
	})
	t.Run("callback", func(t *testing.T) {
		a, _ := run(t, "index.cb")
		if inv := a.invoke(`{"x": 3}`); string(inv.body) != `{"cb":3}` {
			t.Errorf("callback: %s", inv.body)
		}
		a, _ = run(t, "index.cberr")
		if inv := a.invoke(`{}`); inv.kind != "error" || decode(t, inv.body)["errorMessage"] != "cb failed" {
			t.Errorf("callback error: %s %s", inv.kind, inv.body)
		}
	})
	t.Run("paths", func(t *testing.T) {
		for handler, want := range map[string]string{"esm.handler": `{"esm":4}`, "index.nested.deep.fn": `"deep"`, "lib/app.run": `"lib"`} {
			a, _ := run(t, handler)
			if inv := a.invoke(`{"x": 4}`); inv.kind != "response" || string(inv.body) != want {
				t.Errorf("%s: %s %s", handler, inv.kind, inv.body)
			}
		}
	})
	t.Run("init-errors", func(t *testing.T) {
		for handler, want := range map[string]string{
			"missing.handler":         "Runtime.ImportModuleError",
			"requiresmissing.handler": "Runtime.ImportModuleError",
			"index.nothere":           "Runtime.HandlerNotFound",
			"broken.handler":          "Runtime.UserCodeSyntaxError",
			"index":                   "Runtime.MalformedHandlerName",
		} {
			a, tk := run(t, handler)
			select {
			case body := <-a.initErr:
				if doc := decode(t, body); doc["errorType"] != want {
					t.Errorf("%s: %s, want %s", handler, body, want)
				}
			case <-time.After(time.Minute):
				t.Fatalf("%s: no init error; log:\n%s", handler, tk.log())
			}
			if err := tk.wait(t); err == nil {
				t.Errorf("%s: the task exited 0 after an init error", handler)
			}
		}
	})
	t.Run("uncaught", func(t *testing.T) {
		a, tk := run(t, "index.handler")
		inv := a.invoke(`{"op": "crash"}`)
		if doc := decode(t, inv.body); inv.kind != "error" || doc["errorType"] != "Runtime.UncaughtException" || doc["errorMessage"] != "escaped" {
			t.Errorf("crash: %s %s", inv.kind, inv.body)
		}
		if err := tk.wait(t); err == nil {
			t.Error("the task carried on after an uncaught exception")
		}
	})
	t.Run("snap-start", func(t *testing.T) {
		a, tk := run(t, "index.hooks", "AWS_LAMBDA_INITIALIZATION_TYPE=snap-start")
		select {
		case <-a.restoreAsked:
		case <-time.After(time.Minute):
			t.Fatalf("no restore/next; log:\n%s", tk.log())
		}
		select {
		case <-a.nexts:
			t.Fatal("the task asked for an invocation before it was restored")
		case <-time.After(200 * time.Millisecond):
		}
		close(a.release)
		if inv := a.invoke(`{}`); string(inv.body) != `["before","after"]` {
			t.Errorf("hooks ran: %s", inv.body)
		}
	})
	t.Run("snap-start-restore-error", func(t *testing.T) {
		a, tk := run(t, "index.hooks", "AWS_LAMBDA_INITIALIZATION_TYPE=snap-start", "FAIL_RESTORE=1")
		<-a.restoreAsked
		close(a.release)
		select {
		case body := <-a.restoreErr:
			if doc := decode(t, body); doc["errorType"] != "Runtime.AfterRestoreError" || doc["errorMessage"] != "restore hook failed" {
				t.Errorf("restore error %s", body)
			}
		case <-time.After(time.Minute):
			t.Fatalf("no restore/error; log:\n%s", tk.log())
		}
		if err := tk.wait(t); err == nil {
			t.Error("the task carried on after its restore hook failed")
		}
	})
}
