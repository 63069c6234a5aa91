// Package vmm is Kindling's virtual machine monitor: it builds a KVM VM with
// guest memory, an in-kernel irqchip and PIT, vCPUs on locked OS threads and
// the device models, boots a Linux kernel into it, and runs it until the
// guest or the host stops it, with a typed reason.
//
// Lock order: Machine.mu, then any device lock. vCPU threads never hold
// Machine.mu while in KVM_RUN.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/vmm/devices"
	"github.com/kindlingvm/kindling/vmm/devices/legacy"
	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// State is a VM's lifecycle state.
type State string

const (
	StateCreated State = "created"
	StateRunning State = "running"
	StatePaused  State = "paused"
	StateStopped State = "stopped"
)

// Fixed placement of VMM-internal structures.
const (
	// tssAddr is the three pages below the BIOS area that Intel VMX needs
	// for real-mode emulation (KVM_SET_TSS_ADDR); the address QEMU uses.
	tssAddr = 0xfffb_d000
	// identityMapAddr is the page VMX uses for its identity map, just below.
	identityMapAddr = 0xfffb_c000
)

// kickSignal interrupts a vCPU thread's KVM_RUN. The Go runtime always
// handles SIGURG (it uses it for preemption) and ignores unexpected ones,
// so no handler needs installing and a stray one is harmless.
const kickSignal = unix.SIGURG

// Options are the host-side settings of a VM that are not part of its
// config: where output goes and how it logs.
type Options struct {
	// Console receives the serial console. Nil means the config's Console.
	Console io.Writer
	Logger  *slog.Logger
	// ID names the VM in logs.
	ID string
}

// Machine is one microVM.
type Machine struct {
	cfg   Config
	log   *slog.Logger
	sys   *kvm.System
	vm    *kvm.VM
	mem   *memory.Memory
	vcpus []*vcpuThread

	pio, mmio devices.Bus
	serial    *legacy.Serial
	console   io.Closer // owned console file, if any
	disks     []*virtioSlot
	vsock     *virtioSlot // nil without a vsock device
	nets      []*virtioSlot

	mu       sync.Mutex
	cond     *sync.Cond
	state    State
	pauseReq bool
	parked   int
	exit     *ExitReason
	done     chan struct{}
	running  int // vCPU threads still alive

	created time.Time
	metrics metrics
	// supportedCPUID is KVM_GET_SUPPORTED_CPUID, read once at creation:
	// vCPU setup and the restore compatibility check both need it.
	supportedCPUID []kvm.CPUIDEntry
	// msrsToSave is KVM's MSR index list, less MSRs a vCPU refused to
	// read; snapshots save these.
	msrsToSave []uint32
	// lastSnapshot is the directory of the latest snapshot this VM wrote;
	// dirty logging runs from then on, so a diff snapshot can build on it.
	lastSnapshot string
}

type vcpuThread struct {
	*kvm.VCPU
	tid atomic.Int32
	// cpuid is what the VMM set with KVM_SET_CPUID2: the template in
	// force. KVM_GET_CPUID2 cannot stand in for it: on PVM hosts it reads
	// back the host's CPUID instead.
	cpuid []kvm.CPUIDEntry
}

type metrics struct {
	exitsIO, exitsMMIO, exitsOther atomic.Uint64
	unclaimedPIO, unclaimedMMIO    atomic.Uint64
	firstRun                       atomic.Int64 // ns since creation of the first KVM_RUN
	pauses                         atomic.Uint64
}

// New creates a VM from cfg: KVM objects, memory, devices and, when
// cfg.Kernel is set, the loaded kernel. The VM does not run until Start.
func New(cfg Config, opt Options) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mem, err := memory.New(cfg.MemoryMiB<<20, memory.Options{Memfd: true})
	if err != nil {
		return nil, err
	}
	return create(cfg, opt, mem, cfg.Kernel != "")
}

// create builds a VM around mem, which it takes ownership of, loading the
// kernel when loadKernel is set (a restore brings its own state instead).
func create(cfg Config, opt Options, mem *memory.Memory, loadKernel bool) (_ *Machine, err error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opt.ID != "" {
		log = log.With("vm", opt.ID)
	}
	m := &Machine{cfg: cfg, log: log, state: StateCreated, done: make(chan struct{}), created: time.Now(), mem: mem}
	m.cond = sync.NewCond(&m.mu)
	defer func() {
		if err != nil {
			m.Close()
		}
	}()

	if m.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return nil, err
	}
	// VMX needs these for real mode; other KVM flavours may refuse them,
	// which is harmless.
	if err := m.vm.SetTSSAddr(tssAddr); err != nil {
		log.Debug("KVM_SET_TSS_ADDR refused", "err", err)
	}
	if err := m.vm.SetIdentityMapAddr(identityMapAddr); err != nil {
		log.Debug("KVM_SET_IDENTITY_MAP_ADDR refused", "err", err)
	}
	if err := m.vm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err := m.vm.CreatePIT2(); err != nil {
		return nil, err
	}
	for i, r := range m.mem.Regions() {
		if err := m.vm.SetUserMemoryRegion(uint32(i), 0, r.GPA, r.Size, m.mem.HostAddr(r)); err != nil {
			return nil, err
		}
	}
	if err := m.setupDevices(opt.Console); err != nil {
		return nil, err
	}
	if err := m.createVCPUs(); err != nil {
		return nil, err
	}
	if loadKernel {
		if err := m.loadKernel(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Machine) setupDevices(console io.Writer) error {
	if console == nil {
		switch m.cfg.Console {
		case "", "stdout":
			console = os.Stdout
		case "none":
			console = io.Discard
		default:
			f, err := os.OpenFile(m.cfg.Console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				return fmt.Errorf("console file: %w", err)
			}
			m.console = f
			console = f
		}
	}
	m.serial = legacy.NewSerial(console, &irqLine{vm: m.vm, gsi: legacy.COM1IRQ})
	if err := m.pio.Insert("serial0", legacy.COM1Port, legacy.SerialPorts, m.serial); err != nil {
		return err
	}
	kbd := legacy.NewI8042(func() {
		m.requestStop(ExitReason{Kind: ExitGuestReset, Message: "the guest reset the CPU through the i8042 controller"})
	})
	if err := m.pio.Insert("i8042-data", legacy.I8042DataPort, 1, kbd.DataPort()); err != nil {
		return err
	}
	if err := m.pio.Insert("i8042-command", legacy.I8042CommandPort, 1, kbd.CommandPort()); err != nil {
		return err
	}
	return m.setupVirtio()
}

func (m *Machine) createVCPUs() error {
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	m.supportedCPUID = supported
	msrIndex, err := m.sys.MSRIndexList()
	if err != nil {
		return err
	}
	m.msrsToSave = msrIndex
	tmpl := m.cfg.CPUTemplate
	if tmpl == nil {
		tmpl, _ = cpuid.Builtin(cpuid.HostName)
	}
	base, err := tmpl.Apply(cpuid.FromKVM(supported))
	if err != nil {
		return err
	}
	if len(tmpl.MSRs) > 0 {
		features, err := m.sys.MSRFeatureIndexList()
		if err != nil {
			return err
		}
		if err := tmpl.CheckMSRs(append(append([]uint32(nil), msrIndex...), features...)); err != nil {
			return err
		}
	}
	for i := 0; i < m.cfg.VCPUs; i++ {
		c, err := m.vm.CreateVCPU(i)
		if err != nil {
			return err
		}
		t := &vcpuThread{VCPU: c, cpuid: cpuid.Normalize(base, i, m.cfg.VCPUs).KVM()}
		m.vcpus = append(m.vcpus, t)
		if err := c.SetCPUID(t.cpuid); err != nil {
			return err
		}
		if err := setupVCPU(c, msrIndex); err != nil {
			return err
		}
		if err := applyMSRModifiers(c, tmpl); err != nil {
			return err
		}
	}
	return nil
}

// Memory is the guest's RAM.
func (m *Machine) Memory() *memory.Memory { return m.mem }

// VCPU returns vCPU i for callers that set up a bare VM's registers.
func (m *Machine) VCPU(i int) *kvm.VCPU { return m.vcpus[i].VCPU }

// VM returns the KVM VM, for state capture.
func (m *Machine) VM() *kvm.VM { return m.vm }

// Config returns the VM's config.
func (m *Machine) Config() Config { return m.cfg }

// Start runs every vCPU.
func (m *Machine) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != StateCreated {
		return fmt.Errorf("start: VM is %s, not %s", m.state, StateCreated)
	}
	m.state = StateRunning
	m.running = len(m.vcpus)
	for _, v := range m.vcpus {
		go m.runVCPU(v)
	}
	m.log.Info("vm started", "vcpus", len(m.vcpus), "memory_mib", m.cfg.MemoryMiB)
	return nil
}

// ErrNotRunning is returned by Pause and Resume in the wrong state.
var ErrNotRunning = errors.New("VM is not in a state that allows this")

// Pause stops every vCPU outside KVM_RUN and returns when all are parked,
// so vCPU and device state are stable.
func (m *Machine) Pause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != StateRunning {
		return fmt.Errorf("pause: %w (state %s)", ErrNotRunning, m.state)
	}
	m.pauseReq = true
	m.kickAll()
	for m.parked < m.running && m.exit == nil {
		m.cond.Wait()
	}
	if m.exit != nil {
		return fmt.Errorf("pause: VM stopped: %s", m.exit)
	}
	// With every vCPU parked, only the network devices' receive
	// goroutines still write guest memory.
	m.pauseNet()
	m.state = StatePaused
	m.metrics.pauses.Add(1)
	for _, v := range m.vcpus {
		if err := v.KVMClockPaused(); err != nil {
			m.log.Warn("kvmclock pause notice failed", "vcpu", v.ID, "err", err)
		}
	}
	m.log.Info("vm paused")
	return nil
}

// Resume continues a paused VM.
func (m *Machine) Resume() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != StatePaused {
		return fmt.Errorf("resume: %w (state %s)", ErrNotRunning, m.state)
	}
	for _, v := range m.vcpus {
		v.SetImmediateExit(false)
	}
	m.resumeNet()
	m.pauseReq = false
	m.state = StateRunning
	m.cond.Broadcast()
	m.log.Info("vm resumed")
	return nil
}

// Stop ends the VM with reason host-stop and waits for its vCPUs.
func (m *Machine) Stop() {
	m.mu.Lock()
	if m.state == StateCreated {
		m.state = StateStopped
		m.exit = &ExitReason{Kind: ExitHostStop, Message: "stopped before it started"}
		close(m.done)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.requestStop(ExitReason{Kind: ExitHostStop, Message: "the host stopped the VM"})
	<-m.done
}

// Wait blocks until the VM has stopped and returns why.
func (m *Machine) Wait() ExitReason {
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return *m.exit
}

// Done is closed when the VM has stopped.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Status is a VM's externally visible state.
type Status struct {
	State State       `json:"state"`
	Exit  *ExitReason `json:"exit,omitempty"`
}

// Status returns the current state and, once stopped, the exit reason.
func (m *Machine) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Status{State: m.state}
	if m.exit != nil && m.state == StateStopped {
		e := *m.exit
		s.Exit = &e
	}
	return s
}

// Metrics are counters for GET /metrics.
type Metrics struct {
	ExitsIO          uint64 `json:"exits_io"`
	ExitsMMIO        uint64 `json:"exits_mmio"`
	ExitsOther       uint64 `json:"exits_other"`
	UnclaimedPIO     uint64 `json:"unclaimed_pio"`
	UnclaimedMMIO    uint64 `json:"unclaimed_mmio"`
	SerialBytes      uint64 `json:"serial_bytes"`
	SerialErrors     uint64 `json:"serial_errors"`
	Pauses           uint64 `json:"pauses"`
	FirstKVMRunMicro int64  `json:"first_kvm_run_us"`
	MemoryMiB        uint64 `json:"memory_mib"`
	VCPUs            int    `json:"vcpus"`
}

// Metrics returns a snapshot of the VM's counters.
func (m *Machine) Metrics() Metrics {
	sb, se := m.serial.Stats()
	return Metrics{
		ExitsIO: m.metrics.exitsIO.Load(), ExitsMMIO: m.metrics.exitsMMIO.Load(),
		ExitsOther: m.metrics.exitsOther.Load(), UnclaimedPIO: m.metrics.unclaimedPIO.Load(),
		UnclaimedMMIO: m.metrics.unclaimedMMIO.Load(), SerialBytes: sb, SerialErrors: se,
		Pauses: m.metrics.pauses.Load(), FirstKVMRunMicro: m.metrics.firstRun.Load() / 1000,
		MemoryMiB: m.cfg.MemoryMiB, VCPUs: m.cfg.VCPUs,
	}
}

// requestStop records the first stop reason and kicks every vCPU out.
func (m *Machine) requestStop(r ExitReason) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exit != nil {
		return
	}
	m.exit = &r
	if r.Clean() {
		m.log.Info("vm stopping", "reason", r.Kind, "message", r.Message)
	} else {
		m.log.Error("vm stopping", "reason", r.Kind, "detail", r.String())
	}
	m.kickAll()
	m.cond.Broadcast()
}

// kickAll makes every vCPU leave KVM_RUN soon: immediate_exit covers a
// thread about to enter, the signal one already inside. Caller holds m.mu.
func (m *Machine) kickAll() {
	pid := unix.Getpid()
	for _, v := range m.vcpus {
		v.SetImmediateExit(true)
		if tid := v.tid.Load(); tid != 0 {
			_ = unix.Tgkill(pid, int(tid), kickSignal)
		}
	}
}

// Close releases every KVM and memory resource. The VM must be stopped or
// never started.
func (m *Machine) Close() error {
	for _, v := range m.vcpus {
		v.Close()
	}
	m.vcpus = nil
	for _, d := range m.virtioSlots() {
		d.close()
	}
	if m.vm != nil {
		m.vm.Close()
	}
	if m.sys != nil {
		m.sys.Close()
	}
	if m.mem != nil {
		m.mem.Close()
	}
	if m.console != nil {
		m.console.Close()
	}
	return nil
}

// runVCPU is a vCPU thread: it owns its OS thread for its whole life, as
// KVM requires a vCPU's ioctls to come from one thread.
func (m *Machine) runVCPU(v *vcpuThread) {
	runtime.LockOSThread()
	// The thread stays locked: when the goroutine ends the runtime
	// discards it, along with any signal state left on it.
	v.tid.Store(int32(unix.Gettid()))
	defer m.vcpuExited()
	m.metrics.firstRun.CompareAndSwap(0, int64(time.Since(m.created)))
	for {
		err := v.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			if !m.park() {
				return
			}
			continue
		}
		if err != nil {
			m.requestStop(ExitReason{Kind: ExitVCPUError, VCPU: v.ID, Message: err.Error()})
			return
		}
		if !m.handleExit(v) {
			return
		}
	}
}

// park holds a vCPU while a pause is requested. It reports false when the
// VM is stopping and the thread must end.
func (m *Machine) park() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exit != nil {
		return false
	}
	if !m.pauseReq {
		return true
	}
	m.parked++
	m.cond.Broadcast()
	for m.pauseReq && m.exit == nil {
		m.cond.Wait()
	}
	m.parked--
	return m.exit == nil
}

func (m *Machine) vcpuExited() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.running--
	m.cond.Broadcast()
	if m.running == 0 {
		if m.exit == nil {
			m.exit = &ExitReason{Kind: ExitVCPUError, Message: "all vCPU threads ended without a reason"}
		}
		m.state = StateStopped
		close(m.done)
	}
}

// handleExit serves one VM exit; it reports false when the thread must end.
func (m *Machine) handleExit(v *vcpuThread) bool {
	switch r := v.ExitReason(); r {
	case kvm.ExitIO:
		m.metrics.exitsIO.Add(1)
		io, err := v.IO()
		if err != nil {
			m.requestStop(ExitReason{Kind: ExitVCPUError, VCPU: v.ID, Message: err.Error()})
			return false
		}
		for i := 0; i < io.Count; i++ {
			chunk := io.Data[i*io.Size : (i+1)*io.Size]
			if io.Out {
				if !m.pio.Write(uint64(io.Port), chunk) {
					m.metrics.unclaimedPIO.Add(1)
				}
			} else if !m.pio.Read(uint64(io.Port), chunk) {
				m.metrics.unclaimedPIO.Add(1)
				for j := range chunk {
					chunk[j] = 0xff // an empty ISA bus floats high
				}
			}
		}
	case kvm.ExitMMIO:
		m.metrics.exitsMMIO.Add(1)
		e := v.MMIO()
		if e.Write {
			if !m.mmio.Write(e.Addr, e.Data) {
				m.metrics.unclaimedMMIO.Add(1)
			}
		} else if !m.mmio.Read(e.Addr, e.Data) {
			m.metrics.unclaimedMMIO.Add(1)
			for j := range e.Data {
				e.Data[j] = 0xff
			}
		}
	case kvm.ExitIntr, kvm.ExitIRQWindowOpen:
		m.metrics.exitsOther.Add(1)
	case kvm.ExitHLT:
		// Only without an in-kernel LAPIC; ours has one, so this is a
		// guest halted with nothing left to wake it.
		m.requestStop(ExitReason{Kind: ExitGuestShutdown, VCPU: v.ID, Message: "the guest halted"})
		return false
	case kvm.ExitShutdown:
		r := ExitReason{Kind: ExitTripleFault, VCPU: v.ID, Message: "the guest triple-faulted (KVM_EXIT_SHUTDOWN)"}
		m.locate(v, &r)
		m.requestStop(r)
		return false
	case kvm.ExitSystemEvent:
		switch v.SystemEvent() {
		case 1:
			m.requestStop(ExitReason{Kind: ExitGuestShutdown, VCPU: v.ID, Message: "the guest powered off"})
		case 2:
			m.requestStop(ExitReason{Kind: ExitGuestReset, VCPU: v.ID, Message: "the guest reset"})
		default:
			m.requestStop(ExitReason{Kind: ExitGuestCrash, VCPU: v.ID, Message: fmt.Sprintf("the guest crashed (system event %d)", v.SystemEvent())})
		}
		return false
	case kvm.ExitInternalError:
		ie := v.Internal()
		r := ExitReason{Kind: ExitInternalError, VCPU: v.ID, Suberror: ie.Suberror,
			Message: "KVM internal error: " + internalErrorText(ie.Suberror)}
		m.locate(v, &r)
		m.requestStop(r)
		return false
	case kvm.ExitFailEntry:
		m.requestStop(ExitReason{Kind: ExitFailEntry, VCPU: v.ID,
			Message: fmt.Sprintf("the CPU refused to enter the guest (hardware reason %#x)", v.FailEntry())})
		return false
	default:
		r2 := ExitReason{Kind: ExitVCPUError, VCPU: v.ID, Message: fmt.Sprintf("unhandled KVM exit reason %d", r)}
		m.locate(v, &r2)
		m.requestStop(r2)
		return false
	}
	return true
}

// locate adds the guest's RIP and the instruction bytes there to r.
func (m *Machine) locate(v *vcpuThread, r *ExitReason) {
	regs, err := v.GetRegs()
	if err != nil {
		return
	}
	sregs, err := v.GetSregs()
	if err != nil {
		return
	}
	r.RIP = regs.RIP
	mode := 16
	switch {
	case sregs.EFER&(1<<10) != 0 && sregs.CS.L != 0:
		mode = 64
	case sregs.CR0&1 != 0 && sregs.CS.DB != 0:
		mode = 32
	}
	linear := regs.RIP
	if mode != 64 {
		linear = (sregs.CS.Base + regs.RIP) & 0xffff_ffff
	}
	gpa := linear
	if sregs.CR0&(1<<31) != 0 {
		p, ok, err := v.Translate(linear)
		if err != nil || !ok {
			return
		}
		gpa = p
	}
	// x86 instructions are at most 15 bytes; take what memory allows.
	for n := uint64(15); n > 0; n-- {
		if b, err := m.mem.Slice(gpa, n); err == nil {
			r.describeInstruction(append([]byte(nil), b...), mode)
			return
		}
	}
}

// irqLine drives one in-kernel irqchip input.
type irqLine struct {
	vm  *kvm.VM
	gsi uint32
}

// Trigger pulses the line: one edge for an edge-triggered IOAPIC pin.
func (l *irqLine) Trigger() error {
	if err := l.vm.IRQLine(l.gsi, true); err != nil {
		return err
	}
	return l.vm.IRQLine(l.gsi, false)
}

// SetLevel holds the line high or low.
func (l *irqLine) SetLevel(high bool) error { return l.vm.IRQLine(l.gsi, high) }
