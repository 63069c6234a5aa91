package host

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/hostnet"
)

// setupNet makes an egress sandbox's network namespace (with the
// microVM's tap when uid is not 0) and notes it in rec.
func setupNet(h *hostnet.Host, spec Spec, uid, gid int) (*hostnet.Sandbox, error) {
	if h == nil {
		return nil, fmt.Errorf("sandbox %s: network egress: this kindlingd has no host network (its start-up log says why)", spec.ID)
	}
	n, err := h.Setup(hostnet.Options{ID: spec.ID, Dir: spec.Dir, Policy: hostnet.Egress, Tap: uid != 0, TapUID: uid, TapGID: gid})
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: network: %w", spec.ID, err)
	}
	return n, nil
}

// reattachNet finds a reattached sandbox's network namespace.
func reattachNet(h *hostnet.Host, rec Record) (*hostnet.Sandbox, error) {
	if rec.Network == "" {
		return nil, nil
	}
	if h == nil {
		return nil, fmt.Errorf("sandbox %s: its network: this kindlingd has no host network", rec.ID)
	}
	return h.Reattach(rec.ID, rec.Dir)
}

// closeNet removes a sandbox's network, logging what it could not.
func closeNet(n *hostnet.Sandbox, log *slog.Logger) {
	if n == nil {
		return
	}
	if err := n.Close(); err != nil {
		log.Warn("removing the sandbox's network", "error", err)
	}
}

// startInNetNS starts cmd inside the network namespace bound at path: a
// fork inherits the forking thread's namespaces, so the start runs on a
// thread of its own that joins the namespace first and is never given
// back to the Go scheduler (it ends with its goroutine).
func startInNetNS(path string, cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no UnlockOSThread: the thread dies with us
		f, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("network namespace: %w", err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("join the network namespace %s: %w", path, err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}
