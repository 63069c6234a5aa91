package host

import (
	"fmt"
	"log/slog"

	"github.com/kindlingvm/kindling/agent/hostnet"
)

// setupNet makes an egress sandbox's network namespace (with the
// microVM's tap, owned by uid and gid, when uid is not 0).
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
