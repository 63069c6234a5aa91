package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

const hostUsage = `usage: kindling host check [--json]
       kindling host status [--json]

'host check' probes this host's KVM: API version, capabilities, host kind
(VMX, SVM or PVM), and with tiny guests whether guest kernel mode runs
natively, whether a guest's user-mode system calls reach its kernel, and
whether CPUID is virtualised. Prints one plain verdict per line.

'host status' asks kindlingd (--socket PATH, or --addr HOST:PORT with
mutual TLS) which backend it runs, microvm or process, and why; whether
that isolates tenants; its capacity and load; what it found of KVM; and
its versions.
`

func hostMain(d *daemonCLI, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "check":
			return hostCheck(args[1:])
		case "status":
			return d.hostStatus(args[1:])
		case "-h", "--help", "help":
			fmt.Print(hostUsage)
			return nil
		}
	}
	fmt.Fprint(os.Stderr, hostUsage)
	return exitError{2}
}

func hostCheck(args []string) error {
	fs := flag.NewFlagSet("kindling host check", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	r, err := hostcheck.Run()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		r.Print(os.Stdout)
	}
	if !r.KVM.OK {
		return exitError{1}
	}
	return nil
}

// hostStatus prints what kindlingd says of itself and this host.
func (d *daemonCLI) hostStatus(args []string) error {
	fs := d.flagSet("kindling host status", hostUsage)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return d.badInput(fmt.Errorf("host status takes no arguments, got %q", pos))
	}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	s, err := call(dc, "host status", dc.HostStatus, &api.HostStatusRequest{})
	if err != nil {
		return err
	}
	if *asJSON {
		return d.printProto(s)
	}
	writeHostStatus(d.stdout, s)
	return nil
}

func writeHostStatus(w io.Writer, s *api.HostStatusResponse) {
	line := func(k, format string, args ...any) { fmt.Fprintf(w, "%-10s %s\n", k, fmt.Sprintf(format, args...)) }
	backend := s.GetBackend()
	if s.GetBackendReason() != "" {
		backend += ": " + s.GetBackendReason()
	}
	line("backend", "%s", backend)
	if s.GetIsolationGrade() {
		line("isolation", "%s backend: isolation-grade", s.GetBackend())
	} else {
		line("isolation", "%s backend: NOT isolation-grade (its instances are not microVMs: do not mix tenants that distrust each other)", orText(s.GetBackend(), "this"))
	}
	line("capacity", "%d CPUs, %d MiB memory (%d MiB committed), %d of %d instances",
		s.GetCpus(), s.GetMemoryMib(), s.GetMemoryCommittedMib(), s.GetInstances(), s.GetMaxInstances())
	load := fmt.Sprintf("%d running, %d queued", s.GetRunning(), s.GetQueued())
	if s.GetDraining() {
		load += "; DRAINING: new invocations are refused"
	}
	line("load", "%s", load)
	switch k := s.GetKvm(); {
	case k == nil:
		line("kvm", "not reported")
	case !k.GetAvailable():
		line("kvm", "unavailable: %s", orText(k.GetDetail(), "no detail"))
	default:
		line("kvm", "available: API %d, host kind %s", k.GetApiVersion(), orText(k.GetHostKind(), "unknown"))
		if k.GetUserSpaceRuns() {
			line("", "guest user space runs")
		} else {
			line("", "guest user space does NOT run: %s", orText(k.GetUserSpaceDetail(), "no detail"))
		}
		if caps := k.GetCapabilities(); len(caps) > 0 {
			line("", "capabilities: %s", strings.Join(caps, ", "))
		}
	}
	line("versions", "kindlingd %s, %s, kernel %s", orText(s.GetKindlingdVersion(), "-"), orText(s.GetGoVersion(), "go -"), orText(s.GetKernelVersion(), "-"))
	line("state dir", "%s", orText(s.GetStateDir(), "-"))
}

// hostEmulatesCPL0 is the check kernel builds use to decide on the int3
// self-test patch.
func hostEmulatesCPL0() (bool, error) {
	r, err := hostcheck.Run()
	if err != nil {
		return false, err
	}
	if !r.KVM.OK {
		return false, fmt.Errorf("cannot probe KVM: %s", r.KVM.Detail)
	}
	return r.EmulatesCPL0(), nil
}

// parseEmulatedCPL0 reads an --emulated-cpl0 flag: true, false, or auto
// (ask 'kindling host check').
func parseEmulatedCPL0(v, verb string) (bool, error) {
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	case "auto":
		emu, err := hostEmulatesCPL0()
		if err != nil {
			return false, fmt.Errorf("%s: %w (pass --emulated-cpl0=true or false)", verb, err)
		}
		return emu, nil
	}
	return false, badInput(fmt.Errorf("--emulated-cpl0=%q: want auto, true or false", v))
}
