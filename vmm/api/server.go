// Package api is the VMM's control socket: a small HTTP/1.1 + JSON API on a
// Unix socket, in the style operators know from Firecracker and Cloud
// Hypervisor (usable with `curl --unix-socket`). The server drives one VM
// through Controller, with its own minimal HTTP/1.1 implementation so the
// VMM process does not carry net/http; package api/client is what the
// `kindling vm` commands and kindlingd use. Every error is JSON with a
// message a person can act on.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/kindlingvm/kindling/vmm"
)

// Controller is what the API needs of a VM; *vmm.Machine implements it.
type Controller interface {
	Status() vmm.Status
	Start() error
	Pause() error
	Resume() error
	Stop()
	Done() <-chan struct{}
	Metrics() vmm.Metrics
	Snapshot(dir string) (vmm.SnapshotInfo, error)
	SnapshotDiff(dir string) (vmm.SnapshotInfo, error)
	RecordWorkingSet(dir string) (int, error)
}

// WorkingSetResponse is the answer to PUT /vm/workingset.
type WorkingSetResponse struct {
	Pages int `json:"pages"`
}

// SnapshotRequest is the body of PUT /vm/snapshot.
type SnapshotRequest struct {
	Dir  string `json:"dir"`
	Kind string `json:"kind,omitempty"` // "full" (the default) or "diff"
}

// Error is the body of every non-2xx response.
type Error struct {
	Message string `json:"error"`
}

// Routes, for the server and the client alike.
const (
	PathVM         = "/vm"
	PathStart      = "/vm/start"
	PathPause      = "/vm/pause"
	PathResume     = "/vm/resume"
	PathStop       = "/vm/stop"
	PathSnapshot   = "/vm/snapshot"
	PathWorkingSet = "/vm/workingset"
	PathMetrics    = "/metrics"
)

// router returns the API's routes for one VM. delivered is called after
// each response that carried the final, stopped status.
func router(ctl Controller, log *slog.Logger, delivered func()) func(*request) response {
	status := func() response {
		st := ctl.Status()
		if st.State == vmm.StateStopped {
			defer delivered()
		}
		return jsonResponse(200, st)
	}
	action := func(path string, f func() error) response {
		if err := f(); err != nil {
			code := 500
			if errors.Is(err, vmm.ErrNotRunning) || ctl.Status().State == vmm.StateStopped {
				code = 409
			}
			log.Warn("api request failed", "path", path, "err", err)
			return jsonError(code, err.Error())
		}
		log.Info("api request", "path", path)
		return status()
	}
	actions := map[string]func() error{
		PathStart: ctl.Start, PathPause: ctl.Pause, PathResume: ctl.Resume,
		PathStop: func() error { ctl.Stop(); return nil },
	}
	return func(r *request) response {
		want := "GET"
		if _, ok := actions[r.path]; ok || r.path == PathSnapshot || r.path == PathWorkingSet {
			want = "PUT"
		}
		switch {
		case r.path != PathVM && r.path != PathMetrics && r.path != PathSnapshot && r.path != PathWorkingSet && actions[r.path] == nil:
			return jsonError(404, fmt.Sprintf("%s %s: no such endpoint; the API has GET /vm, PUT /vm/{start,pause,resume,stop,snapshot,workingset}, GET /metrics", r.method, r.path))
		case r.method != want:
			return jsonError(405, fmt.Sprintf("%s %s: use %s", r.method, r.path, want))
		case r.path == PathMetrics:
			return jsonResponse(200, ctl.Metrics())
		case r.path == PathSnapshot:
			return snapshot(ctl, log, r.body)
		case r.path == PathWorkingSet:
			return workingSet(ctl, r.body)
		case r.path == PathVM:
			switch w := r.query["wait"]; w {
			case "":
			case "stopped":
				// Long poll: answer once the VM has stopped, so
				// supervisors learn the exit reason without polling.
				<-ctl.Done()
			default:
				return jsonError(400, fmt.Sprintf("wait=%q: the only state to wait for is \"stopped\"", w))
			}
			return status()
		}
		return action(r.path, actions[r.path])
	}
}

func snapshot(ctl Controller, log *slog.Logger, body []byte) response {
	var req SnapshotRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return jsonError(400, fmt.Sprintf("snapshot request: %v; send {\"dir\": \"/path\", \"kind\": \"full\"}", err))
	}
	if req.Dir == "" {
		return jsonError(400, "snapshot request: \"dir\" is required")
	}
	take := ctl.Snapshot
	switch req.Kind {
	case "", "full":
	case "diff":
		take = ctl.SnapshotDiff
	default:
		return jsonError(400, fmt.Sprintf("snapshot kind %q: want \"full\" or \"diff\"", req.Kind))
	}
	info, err := take(req.Dir)
	if err != nil {
		code := 500
		if errors.Is(err, vmm.ErrNotRunning) || errors.Is(err, vmm.ErrNoBase) {
			code = 409
		}
		log.Warn("snapshot failed", "dir", req.Dir, "err", err)
		return jsonError(code, err.Error())
	}
	return jsonResponse(200, info)
}

func workingSet(ctl Controller, body []byte) response {
	var req SnapshotRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Dir == "" {
		return jsonError(400, "working set request: send {\"dir\": \"/snapshot/the/vm/was/restored/from\"}")
	}
	pages, err := ctl.RecordWorkingSet(req.Dir)
	if err != nil {
		return jsonError(500, err.Error())
	}
	return jsonResponse(200, WorkingSetResponse{Pages: pages})
}

func jsonResponse(code int, v any) response {
	b, err := json.Marshal(v)
	if err != nil {
		return jsonError(500, err.Error())
	}
	return response{status: code, body: append(b, '\n')}
}

func jsonError(code int, msg string) response {
	b, _ := json.Marshal(Error{Message: msg})
	return response{status: code, body: append(b, '\n')}
}

// Listen opens the control socket at path. A socket file left by a dead
// process is replaced; one that still answers is an error.
func Listen(path string) (net.Listener, error) {
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("api socket %s: another process is serving it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("api socket %s: remove stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	return l, nil
}

// DefaultLinger is how long Serve keeps answering after the VM stopped when
// nobody has asked for the final status yet: a guest can stop within
// milliseconds of starting, before its supervisor's long poll is in.
const DefaultLinger = 2 * time.Second

// Serve runs the API on l until the VM stops and a client has received the
// final status (or linger has passed), finishes the requests in flight and
// returns.
func Serve(ctl Controller, l net.Listener, log *slog.Logger, linger time.Duration) error {
	delivered := make(chan struct{})
	var once sync.Once
	srv := newHTTPServer(router(ctl, log, func() { once.Do(func() { close(delivered) }) }))
	errc := make(chan error, 1)
	go func() { errc <- srv.serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctl.Done():
	}
	select {
	case <-delivered:
	case <-time.After(linger):
	}
	srv.shutdown(l, 2*time.Second)
	return nil
}
