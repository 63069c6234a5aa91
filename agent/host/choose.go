package host

import (
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"

	"github.com/kindlingvm/kindling/agent/hostnet"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

// BackendOptions are what kindlingd's flags say about both backends.
type BackendOptions struct {
	StateDir string
	// CgroupParent is the cgroup v2 directory sandboxes' cgroups go under.
	CgroupParent string
	// NoPrefetch restores microVMs without populating their snapshot's
	// recorded working set first.
	NoPrefetch bool
	// Net makes egress sandboxes' networks (nil: none allowed); DNS are
	// the resolvers microVM guests are told of.
	Net    *hostnet.Host
	DNS    []netip.Addr
	Logger *slog.Logger
}

// Backends builds both backends for a state directory: new sandboxes use
// the chosen one, and either can reattach what an earlier kindlingd
// started.
func Backends(o BackendOptions) map[string]Backend {
	return map[string]Backend{
		BackendProcess: NewProcessBackend(ProcessOptions{ImageCache: filepath.Join(o.StateDir, "images"), CgroupParent: o.CgroupParent, Net: o.Net, Logger: o.Logger}),
		BackendMicroVM: NewMicroVMBackend(MicroVMOptions{CgroupParent: o.CgroupParent, NoPrefetch: o.NoPrefetch, Net: o.Net, DNS: o.DNS, Logger: o.Logger}),
	}
}

// ChooseBackend picks the backend from --backend ("auto", "microvm" or
// "process") and the host check, and says why.
func ChooseBackend(flag string, report *hostcheck.Report) (name, reason string, err error) {
	switch flag {
	case "", "auto":
		if report.UserSpaceRuns() {
			return BackendMicroVM, fmt.Sprintf("KVM runs a guest's user space here (%s host)", report.HostKind), nil
		}
		why := report.KVM.Detail
		if report.KVM.OK {
			why = report.UserSyscalls.Detail
		}
		return BackendProcess, fmt.Sprintf("this host cannot run a guest's user space (%s), so sandboxes are jailed host processes: NOT isolation-grade; use a VMX/SVM KVM host (or a PVM guest kernel) for untrusted code", why), nil
	case BackendMicroVM:
		if !report.KVM.OK {
			return "", "", fmt.Errorf("--backend microvm: %s", report.KVM.Detail)
		}
		reason := "--backend microvm"
		if !report.UserSpaceRuns() {
			reason += fmt.Sprintf(" (warning: the host check says guest user space cannot run here: %s)", report.UserSyscalls.Detail)
		}
		return BackendMicroVM, reason, nil
	case BackendProcess:
		return BackendProcess, "--backend process: sandboxes are jailed host processes, NOT isolation-grade", nil
	}
	return "", "", fmt.Errorf("--backend %q: want auto, microvm or process", flag)
}
