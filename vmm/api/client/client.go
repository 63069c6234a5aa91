// Package client talks to a kindling-vmm control socket. It uses net/http,
// which the VMM process itself does not link.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api"
)

// Client talks to one VMM's control socket.
type Client struct {
	sock string
	hc   *http.Client
}

// New returns a client for the socket at path.
func New(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{sock: path, hc: &http.Client{Transport: tr}}
}

// WaitReady waits until the socket answers, for a VMM process just started.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		if _, err := c.Status(ctx); err == nil {
			return nil
		} else if ctx.Err() != nil {
			return fmt.Errorf("vmm api %s did not come up: %w", c.sock, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.doBody(ctx, method, path, nil, out)
}

func (c *Client) doBody(ctx context.Context, method, path string, in, out any) error {
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://vmm"+path, reqBody)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("vmm api %s: %s %s: %w", c.sock, method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("vmm api %s: %s %s: %w", c.sock, method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(body, &e) == nil && e.Message != "" {
			return &StatusError{Code: resp.StatusCode, Message: e.Message}
		}
		return &StatusError{Code: resp.StatusCode, Message: string(body)}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("vmm api %s: %s %s: bad response: %w", c.sock, method, path, err)
		}
	}
	return nil
}

// StatusError is an error answer from the VMM.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return fmt.Sprintf("vmm: %s (HTTP %d)", e.Message, e.Code) }

// IsConflict reports whether err says the VM was in the wrong state.
func IsConflict(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusConflict
}

// Status returns GET /vm.
func (c *Client) Status(ctx context.Context) (vmm.Status, error) {
	var s vmm.Status
	err := c.do(ctx, http.MethodGet, api.PathVM, &s)
	return s, err
}

// WaitStopped blocks until the VM stops and returns its final status.
func (c *Client) WaitStopped(ctx context.Context) (vmm.Status, error) {
	var s vmm.Status
	err := c.do(ctx, http.MethodGet, api.PathVM+"?wait=stopped", &s)
	return s, err
}

// Start boots the VM.
func (c *Client) Start(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, api.PathStart, nil)
}

// Pause pauses the VM.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, api.PathPause, nil)
}

// Resume resumes the VM.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, api.PathResume, nil)
}

// Stop stops the VM; the VMM process exits afterwards.
func (c *Client) Stop(ctx context.Context) (vmm.Status, error) {
	var s vmm.Status
	err := c.do(ctx, http.MethodPut, api.PathStop, &s)
	return s, err
}

// Snapshot writes a full snapshot of the paused VM to dir (a path the VMM
// process can write).
func (c *Client) Snapshot(ctx context.Context, dir string) (vmm.SnapshotInfo, error) {
	return c.snapshot(ctx, dir, "full")
}

// SnapshotDiff writes only what changed since the VM's last snapshot.
func (c *Client) SnapshotDiff(ctx context.Context, dir string) (vmm.SnapshotInfo, error) {
	return c.snapshot(ctx, dir, "diff")
}

func (c *Client) snapshot(ctx context.Context, dir, kind string) (vmm.SnapshotInfo, error) {
	var info vmm.SnapshotInfo
	err := c.doBody(ctx, http.MethodPut, api.PathSnapshot, api.SnapshotRequest{Dir: dir, Kind: kind}, &info)
	return info, err
}

// RecordWorkingSet stores the pages the VM has touched beside the snapshot
// in dir it was restored from, and returns how many.
func (c *Client) RecordWorkingSet(ctx context.Context, dir string) (int, error) {
	var r api.WorkingSetResponse
	err := c.doBody(ctx, http.MethodPut, api.PathWorkingSet, api.SnapshotRequest{Dir: dir}, &r)
	return r.Pages, err
}

// Metrics returns GET /metrics.
func (c *Client) Metrics(ctx context.Context) (vmm.Metrics, error) {
	var m vmm.Metrics
	err := c.do(ctx, http.MethodGet, api.PathMetrics, &m)
	return m, err
}
