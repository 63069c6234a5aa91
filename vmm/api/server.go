// Package api is the VMM's control socket: a small HTTP/1.1 + JSON API on a
// Unix socket, in the style operators know from Firecracker and Cloud
// Hypervisor (usable with `curl --unix-socket`). The server side drives one
// VM through Controller; Client is what the `kindling vm` commands and
// kindlingd use. Every error is JSON with a message a person can act on.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
}

// Error is the body of every non-2xx response.
type Error struct {
	Message string `json:"error"`
}

// Routes, for the server and the client alike.
const (
	PathVM      = "/vm"
	PathStart   = "/vm/start"
	PathPause   = "/vm/pause"
	PathResume  = "/vm/resume"
	PathStop    = "/vm/stop"
	PathMetrics = "/metrics"
)

// Handler serves the API for one VM.
func Handler(ctl Controller, log *slog.Logger) http.Handler {
	return newHandler(ctl, log, func() {})
}

// newHandler calls delivered after each response that carried the final,
// stopped status.
func newHandler(ctl Controller, log *slog.Logger, delivered func()) http.Handler {
	mux := http.NewServeMux()
	writeStatus := func(w http.ResponseWriter) {
		st := ctl.Status()
		writeJSON(w, http.StatusOK, st)
		if st.State == vmm.StateStopped {
			delivered()
		}
	}
	mux.HandleFunc("GET "+PathVM, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("wait") {
		case "":
		case "stopped":
			// Long poll: answer once the VM has stopped, so supervisors
			// learn the exit reason without polling.
			select {
			case <-ctl.Done():
			case <-r.Context().Done():
				return
			}
		default:
			writeError(w, http.StatusBadRequest, fmt.Errorf("wait=%q: the only state to wait for is \"stopped\"", r.URL.Query().Get("wait")))
			return
		}
		writeStatus(w)
	})
	action := func(path string, f func() error) {
		mux.HandleFunc("PUT "+path, func(w http.ResponseWriter, r *http.Request) {
			if err := f(); err != nil {
				code := http.StatusInternalServerError
				if errors.Is(err, vmm.ErrNotRunning) || ctl.Status().State == vmm.StateStopped {
					code = http.StatusConflict
				}
				log.Warn("api request failed", "path", path, "err", err)
				writeError(w, code, err)
				return
			}
			log.Info("api request", "path", path)
			writeStatus(w)
		})
	}
	action(PathStart, ctl.Start)
	action(PathPause, ctl.Pause)
	action(PathResume, ctl.Resume)
	action(PathStop, func() error { ctl.Stop(); return nil })
	mux.HandleFunc("GET "+PathMetrics, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, ctl.Metrics())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("%s %s: no such endpoint; the API has GET /vm, PUT /vm/{start,pause,resume,stop}, GET /metrics", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, Error{Message: err.Error()})
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
	srv := &http.Server{
		Handler:           newHandler(ctl, log, func() { once.Do(func() { close(delivered) }) }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctl.Done():
	}
	select {
	case <-delivered:
	case <-time.After(linger):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}
