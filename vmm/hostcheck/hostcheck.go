// Package hostcheck probes what this host's KVM can do, by asking it
// (capabilities, CPUID, modules) and by running tiny probe guests: whether
// guest kernel mode (CPL 0) runs natively or is emulated, whether a guest's
// user-mode SYSCALL reaches its kernel, and whether CPUID is virtualised.
// Tests and the CLI use its verdicts to decide what can run here; it never
// changes the host.
package hostcheck

import (
	"github.com/kindlingvm/kindling/cpuid"

	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

// Finding is one verdict with the evidence behind it.
type Finding struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Capability is one KVM capability as this host reports it.
type Capability struct {
	Name     string `json:"name"`
	Value    int    `json:"value"`
	Required bool   `json:"required"`
	Use      string `json:"use"`
}

// Report is the result of a host check.
type Report struct {
	KVM          Finding      `json:"kvm"`
	APIVersion   int          `json:"api_version"`
	HostKind     string       `json:"host_kind"` // "pvm", "vmx", "svm" or "unknown"
	Vendor       string       `json:"cpu_vendor"`
	KVMSignature string       `json:"kvm_signature"`
	Capabilities []Capability `json:"capabilities"`
	// CPL0Native: guest kernel code runs at hardware speed.
	CPL0Native Finding `json:"cpl0_native"`
	// UserSyscalls: SYSCALL at guest CPL 3 enters the guest kernel.
	UserSyscalls Finding `json:"user_syscalls"`
	// CPUIDVirtualised: a guest's CPUID at CPL 3 returns what the VMM set.
	CPUIDVirtualised Finding `json:"cpuid_virtualised"`
}

// EmulatesCPL0 reports whether guest kernel mode is emulated instruction by
// instruction here (and a stock kernel needs HOST.md's workarounds).
func (r *Report) EmulatesCPL0() bool { return r.KVM.OK && !r.CPL0Native.OK }

// UserSpaceRuns reports whether a Linux guest's user space can run here.
func (r *Report) UserSpaceRuns() bool { return r.KVM.OK && r.UserSyscalls.OK }

var capabilityTable = []struct {
	cap      kvm.Cap
	name     string
	required bool
	use      string
}{
	{kvm.CapIRQChip, "IRQCHIP", true, "in-kernel PIC, IOAPIC and LAPIC"},
	{kvm.CapPIT2, "PIT2", true, "in-kernel i8254 timer"},
	{kvm.CapUserMemory, "USER_MEMORY", true, "guest memory from VMM mappings"},
	{kvm.CapImmediateExit, "IMMEDIATE_EXIT", true, "pause without races"},
	{kvm.CapNrMemSlots, "NR_MEMSLOTS", true, "memory slots per VM"},
	{kvm.CapMaxVCPUs, "MAX_VCPUS", true, "vCPUs per VM"},
	{kvm.CapVCPUEvents, "VCPU_EVENTS", false, "snapshots: pending events"},
	{kvm.CapXSave, "XSAVE", false, "snapshots: extended FPU state"},
	{kvm.CapXCRS, "XCRS", false, "snapshots: XCR0"},
	{kvm.CapDebugRegs, "DEBUGREGS", false, "snapshots: debug registers"},
	{kvm.CapTSCControl, "TSC_CONTROL", false, "restore on a host with another TSC rate"},
	{kvm.CapGetTSCKHz, "GET_TSC_KHZ", false, "snapshots: TSC rate"},
	{kvm.CapKVMClockCtrl, "KVMCLOCK_CTRL", false, "no soft-lockup warnings after pause"},
	{kvm.CapAdjustClock, "ADJUST_CLOCK", false, "snapshots: kvmclock"},
	{kvm.CapManualDirtyLog2, "MANUAL_DIRTY_LOG_PROTECT2", false, "diff snapshots"},
	{kvm.CapGetMSRFeatures, "GET_MSR_FEATURES", false, "CPU templates: feature MSRs"},
	{kvm.CapXSave2, "XSAVE2", false, "snapshots: AMX-sized XSAVE"},
}

// probeIterations is long enough that an emulated CPL 0 (about 0.5 us an
// iteration on PVM, HOST.md) takes ~50 ms, and short enough that a native
// one is lost in VM start-up noise.
const probeIterations = 100_000

// Run performs the whole check. It fails only when it cannot tell; a host
// that lacks something gets a report that says so.
func Run() (*Report, error) {
	r := &Report{HostKind: vmm.HostKind(), Vendor: cpuVendor()}
	sys, err := kvm.Open()
	if err != nil {
		r.KVM = Finding{Detail: err.Error()}
		return r, nil
	}
	defer sys.Close()
	r.APIVersion, _ = sys.APIVersion()
	r.KVM = Finding{OK: true, Detail: fmt.Sprintf("%s opens, API version %d", kvm.DevicePath, r.APIVersion)}
	for _, c := range capabilityTable {
		r.Capabilities = append(r.Capabilities, Capability{Name: c.name, Value: sys.CheckExtension(c.cap), Required: c.required, Use: c.use})
	}
	if cpuid, err := sys.SupportedCPUID(); err == nil {
		for _, e := range cpuid {
			if e.Function == 0x4000_0000 {
				r.KVMSignature = regsString(e.Ebx, e.Ecx, e.Edx)
			}
		}
	}
	for _, c := range r.Capabilities {
		if c.Required && c.Value == 0 {
			r.KVM = Finding{Detail: fmt.Sprintf("KVM lacks KVM_CAP_%s (%s), which Kindling needs", c.Name, c.Use)}
			return r, nil
		}
	}
	if err := r.probeCPL0(); err != nil {
		return nil, err
	}
	if err := r.probeSyscall(); err != nil {
		return nil, err
	}
	if err := r.probeCPUID(); err != nil {
		return nil, err
	}
	return r, nil
}

// probe runs one probe guest to its exit and returns the time it took.
func probe(cpl int, code []byte, setup func(m *vmm.Machine) error, rcx uint64) (*vmm.Machine, vmm.ExitReason, time.Duration, error) {
	return probeWith(nil, cpl, code, setup, rcx)
}

// probeWith runs a probe guest on a CPU template (nil: none).
func probeWith(tmpl *cpuid.Template, cpl int, code []byte, setup func(m *vmm.Machine) error, rcx uint64) (*vmm.Machine, vmm.ExitReason, time.Duration, error) {
	m, err := vmm.New(vmm.Config{MemoryMiB: probeMemMiB, VCPUs: 1, Console: "none", CPUTemplate: tmpl}, vmm.Options{})
	if err != nil {
		return nil, vmm.ExitReason{}, 0, fmt.Errorf("probe VM: %w", err)
	}
	fail := func(err error) (*vmm.Machine, vmm.ExitReason, time.Duration, error) {
		m.Close()
		return nil, vmm.ExitReason{}, 0, fmt.Errorf("probe VM: %w", err)
	}
	if err := m.Memory().WriteAt(code, probeCode); err != nil {
		return fail(err)
	}
	c := m.VCPU(0)
	s, err := c.GetSregs()
	if err != nil {
		return fail(err)
	}
	if err := setupLongMode(m.Memory(), &s, cpl); err != nil {
		return fail(err)
	}
	if err := c.SetSregs(s); err != nil {
		return fail(err)
	}
	// IOPL 3 lets CPL 3 code reach the i8042 to end the probe.
	if err := c.SetRegs(kvm.Regs{RIP: probeCode, RSP: probeStack, RCX: rcx, RFLAGS: 0x3002}); err != nil {
		return fail(err)
	}
	if setup != nil {
		if err := setup(m); err != nil {
			return fail(err)
		}
	}
	start := time.Now()
	if err := m.Start(); err != nil {
		return fail(err)
	}
	select {
	case <-m.Done():
	case <-time.After(60 * time.Second):
		m.Stop()
	}
	took := time.Since(start)
	return m, m.Wait(), took, nil
}

func (r *Report) probeCPL0() error {
	var took [2]time.Duration
	for i, cpl := range []int{0, 3} {
		m, exit, d, err := probe(cpl, loopGuest, nil, probeIterations)
		if err != nil {
			return err
		}
		m.Close()
		if exit.Kind != vmm.ExitGuestReset {
			r.CPL0Native = Finding{Detail: fmt.Sprintf("the CPL %d loop guest did not finish: %s", cpl, exit)}
			return nil
		}
		took[i] = d
	}
	ratio := float64(took[0]) / float64(took[1])
	detail := fmt.Sprintf("%d loop iterations took %v at CPL 0 and %v at CPL 3 (%.0fx)",
		probeIterations, took[0].Round(time.Microsecond), took[1].Round(time.Microsecond), ratio)
	// Emulation is three orders of magnitude slower; anything within 10x
	// (and under 20 ms, VM start-up included) is native.
	r.CPL0Native = Finding{OK: ratio < 10 || took[0] < 20*time.Millisecond, Detail: detail}
	return nil
}

func (r *Report) probeSyscall() error {
	setup := func(m *vmm.Machine) error {
		if err := m.Memory().WriteAt(syscallHandler, probeHandler); err != nil {
			return err
		}
		if err := m.Memory().WriteU32(probeResult, 0xffff_ffff); err != nil {
			return err
		}
		c := m.VCPU(0)
		s, err := c.GetSregs()
		if err != nil {
			return err
		}
		s.EFER |= 1 // SCE: SYSCALL enabled
		if err := c.SetSregs(s); err != nil {
			return err
		}
		return c.SetMSRs([]kvm.MSR{
			{Index: 0xc000_0081, Value: uint64(selUserData-8)<<48 | uint64(selKernelCode)<<32}, // STAR
			{Index: 0xc000_0082, Value: probeHandler},                                          // LSTAR
			{Index: 0xc000_0084, Value: 0},                                                     // SFMASK
		})
	}
	m, exit, _, err := probe(3, syscallGuest, setup, 0)
	if err != nil {
		return err
	}
	defer m.Close()
	cs, err := m.Memory().ReadU32(probeResult)
	if err != nil {
		return err
	}
	switch {
	case exit.Kind != vmm.ExitGuestReset:
		r.UserSyscalls = Finding{Detail: "SYSCALL at CPL 3 crashed the probe guest: " + exit.String()}
	case cs == 0xffff_ffff:
		r.UserSyscalls = Finding{Detail: "SYSCALL at CPL 3 never reached the guest's LSTAR handler"}
	case cs&3 != 0:
		r.UserSyscalls = Finding{Detail: fmt.Sprintf("SYSCALL at CPL 3 jumped to LSTAR but stayed at CPL %d (CS %#x): guest user space cannot make system calls", cs&3, cs&0xffff)}
	default:
		r.UserSyscalls = Finding{OK: true, Detail: fmt.Sprintf("SYSCALL at CPL 3 entered the guest kernel (CS %#x)", cs&0xffff)}
	}
	return nil
}

// probeSignature is what the CPUID probe sets in leaf 0x40000000.
const probeSignature = "KindlingTest"

func (r *Report) probeCPUID() error {
	want := []byte(probeSignature)
	setup := func(m *vmm.Machine) error {
		c := m.VCPU(0)
		entries, err := c.GetCPUID()
		if err != nil {
			return err
		}
		found := false
		for i := range entries {
			if entries[i].Function == 0x4000_0000 {
				entries[i].Ebx = binary.LittleEndian.Uint32(want[0:])
				entries[i].Ecx = binary.LittleEndian.Uint32(want[4:])
				entries[i].Edx = binary.LittleEndian.Uint32(want[8:])
				found = true
			}
		}
		if !found {
			return errors.New("KVM reports no hypervisor CPUID leaf 0x40000000 to modify")
		}
		return c.SetCPUID(entries)
	}
	m, exit, _, err := probe(3, cpuidGuest, setup, 0)
	if err != nil {
		return err
	}
	defer m.Close()
	if exit.Kind != vmm.ExitGuestReset {
		r.CPUIDVirtualised = Finding{Detail: "the CPUID probe guest did not finish: " + exit.String()}
		return nil
	}
	var regs [3]uint32
	for i := range regs {
		regs[i], _ = m.Memory().ReadU32(probeResult + 4*uint64(i))
	}
	got := regsString(regs[0], regs[1], regs[2])
	if got == probeSignature {
		r.CPUIDVirtualised = Finding{OK: true, Detail: fmt.Sprintf("CPUID at CPL 3 returned the signature the VMM set (%q)", got)}
	} else {
		r.CPUIDVirtualised = Finding{Detail: fmt.Sprintf("CPUID at CPL 3 returned %q, not the %q the VMM set: the guest sees the host's CPUID, so CPU templates cannot hide features", got, probeSignature)}
	}
	return nil
}

func regsString(b, c, d uint32) string {
	var buf [12]byte
	binary.LittleEndian.PutUint32(buf[0:], b)
	binary.LittleEndian.PutUint32(buf[4:], c)
	binary.LittleEndian.PutUint32(buf[8:], d)
	return strings.TrimRight(string(buf[:]), "\x00")
}

func cpuVendor() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "vendor_id" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
