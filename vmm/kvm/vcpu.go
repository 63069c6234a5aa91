package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// vCPU register and event structures gokvm wraps correctly.
type (
	Regs       = gokvm.Regs
	Sregs      = gokvm.Sregs
	Segment    = gokvm.Segment
	Descriptor = gokvm.Descriptor
	LAPIC      = gokvm.LAPICState
	VCPUEvents = gokvm.VCPUEvents
	DebugRegs  = gokvm.DebugRegs
	XCRS       = gokvm.XCRS
	MPState    = gokvm.MPState
)

// FPU is struct kvm_fpu, the legacy FPU/SSE state for hosts without XSAVE.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// MSR is one model-specific register value.
type MSR struct {
	Index uint32
	Value uint64
}

// ErrInterrupted is returned by Run when a signal or immediate_exit ended
// KVM_RUN before the guest exited; exit data is not valid then.
var ErrInterrupted = errors.New("KVM_RUN interrupted")

// VCPU is one virtual CPU with its mapped kvm_run area. Its methods must be
// called from the OS thread that runs it, except SetImmediateExit.
type VCPU struct {
	ID  int
	fd  int
	run []byte
	vm  *VM
}

// Close unmaps kvm_run and closes the vCPU fd.
func (c *VCPU) Close() error {
	if c.run != nil {
		unix.Munmap(c.run)
		c.run = nil
	}
	return unix.Close(c.fd)
}

func (c *VCPU) ufd() uintptr { return uintptr(c.fd) }

// Run enters the guest until its next exit.
func (c *VCPU) Run() error {
	_, err := ioctl(c.ufd(), ioctlRun, 0)
	if err == unix.EINTR || err == unix.EAGAIN {
		return ErrInterrupted
	}
	if err != nil {
		return fmt.Errorf("KVM_RUN vcpu %d: %w", c.ID, err)
	}
	return nil
}

// SetImmediateExit sets kvm_run.immediate_exit: while set, KVM_RUN returns
// EINTR at once. Safe to call from any thread.
func (c *VCPU) SetImmediateExit(on bool) {
	p := (*uint8)(unsafe.Pointer(&c.run[1]))
	if on {
		*p = 1
	} else {
		*p = 0
	}
}

// Exit reasons (KVM_EXIT_*).
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitNMI           = 16
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// ExitReason is kvm_run.exit_reason after Run returned nil.
func (c *VCPU) ExitReason() uint32 { return binary.LittleEndian.Uint32(c.run[8:]) }

// IOExit describes a port I/O exit. Data aliases the kvm_run area: for an
// IN, the handler fills it before the next Run.
type IOExit struct {
	Out   bool
	Size  int
	Port  uint16
	Count int
	Data  []byte
}

// IO decodes a KVM_EXIT_IO. The data offset comes from KVM; it is checked
// against the mapping anyway.
func (c *VCPU) IO() (IOExit, error) {
	e := IOExit{
		Out:   c.run[32] == 1,
		Size:  int(c.run[33]),
		Port:  binary.LittleEndian.Uint16(c.run[34:]),
		Count: int(binary.LittleEndian.Uint32(c.run[36:])),
	}
	off := binary.LittleEndian.Uint64(c.run[40:])
	n := uint64(e.Size) * uint64(e.Count)
	if off > uint64(len(c.run)) || n > uint64(len(c.run))-off {
		return e, fmt.Errorf("vcpu %d: io exit data %#x+%d outside kvm_run", c.ID, off, n)
	}
	e.Data = c.run[off : off+n]
	return e, nil
}

// MMIOExit describes a memory-mapped I/O exit. Data aliases kvm_run.
type MMIOExit struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// MMIO decodes a KVM_EXIT_MMIO.
func (c *VCPU) MMIO() MMIOExit {
	n := binary.LittleEndian.Uint32(c.run[48:])
	if n > 8 {
		n = 8
	}
	return MMIOExit{
		Addr:  binary.LittleEndian.Uint64(c.run[32:]),
		Write: c.run[52] != 0,
		Data:  c.run[40 : 40+n],
	}
}

// InternalError is the payload of KVM_EXIT_INTERNAL_ERROR.
type InternalError struct {
	Suberror uint32
	Data     []uint64
}

// Internal error suberrors (KVM_INTERNAL_ERROR_*).
const (
	InternalErrorEmulation   = 1
	InternalErrorSimulEx     = 2
	InternalErrorDeliveryEv  = 3
	InternalErrorUnexpExitRe = 4
)

// Internal decodes a KVM_EXIT_INTERNAL_ERROR.
func (c *VCPU) Internal() InternalError {
	nd := binary.LittleEndian.Uint32(c.run[36:])
	if nd > 16 {
		nd = 16
	}
	ie := InternalError{Suberror: binary.LittleEndian.Uint32(c.run[32:])}
	for i := uint32(0); i < nd; i++ {
		ie.Data = append(ie.Data, binary.LittleEndian.Uint64(c.run[40+8*i:]))
	}
	return ie
}

// SystemEvent decodes KVM_EXIT_SYSTEM_EVENT's type (KVM_SYSTEM_EVENT_*).
func (c *VCPU) SystemEvent() uint32 { return binary.LittleEndian.Uint32(c.run[32:]) }

// FailEntry decodes KVM_EXIT_FAIL_ENTRY's hardware reason.
func (c *VCPU) FailEntry() uint64 { return binary.LittleEndian.Uint64(c.run[32:]) }

// GetRegs reads the general-purpose registers.
func (c *VCPU) GetRegs() (Regs, error) {
	r, err := gokvm.GetRegs(c.ufd())
	if err != nil {
		return Regs{}, fmt.Errorf("KVM_GET_REGS vcpu %d: %w", c.ID, err)
	}
	return *r, nil
}

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r Regs) error {
	if err := gokvm.SetRegs(c.ufd(), &r); err != nil {
		return fmt.Errorf("KVM_SET_REGS vcpu %d: %w", c.ID, err)
	}
	return nil
}

// GetSregs reads the segment and control registers.
func (c *VCPU) GetSregs() (Sregs, error) {
	s, err := gokvm.GetSregs(c.ufd())
	if err != nil {
		return Sregs{}, fmt.Errorf("KVM_GET_SREGS vcpu %d: %w", c.ID, err)
	}
	return *s, nil
}

// SetSregs writes the segment and control registers.
func (c *VCPU) SetSregs(s Sregs) error {
	if err := gokvm.SetSregs(c.ufd(), &s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS vcpu %d: %w", c.ID, err)
	}
	return nil
}

// GetFPU reads the legacy FPU state.
func (c *VCPU) GetFPU() (FPU, error) {
	var f FPU
	if _, err := ioctl(c.ufd(), ioctlGetFPU, uintptr(unsafe.Pointer(&f))); err != nil {
		return f, fmt.Errorf("KVM_GET_FPU vcpu %d: %w", c.ID, err)
	}
	return f, nil
}

// SetFPU writes the legacy FPU state.
func (c *VCPU) SetFPU(f FPU) error {
	if _, err := ioctl(c.ufd(), ioctlSetFPU, uintptr(unsafe.Pointer(&f))); err != nil {
		return fmt.Errorf("KVM_SET_FPU vcpu %d: %w", c.ID, err)
	}
	return nil
}

// XSaveSize is the size of the XSAVE area this VM uses: KVM_CAP_XSAVE2's
// answer when it exceeds the legacy 4 KiB struct kvm_xsave (AMX state).
func (c *VCPU) XSaveSize() int {
	if n := c.vm.CheckExtension(CapXSave2); n > 4096 {
		return n
	}
	return 4096
}

// GetXSave reads the XSAVE area.
func (c *VCPU) GetXSave() ([]byte, error) {
	n := c.XSaveSize()
	buf := make([]byte, n)
	req := ioctlGetXSave
	if n > 4096 {
		req = ioctlGetXSave2
	}
	if _, err := ioctl(c.ufd(), req, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return nil, fmt.Errorf("KVM_GET_XSAVE vcpu %d: %w", c.ID, err)
	}
	return buf, nil
}

// SetXSave writes an XSAVE area of at least 4 KiB.
func (c *VCPU) SetXSave(buf []byte) error {
	if len(buf) < 4096 || len(buf) < c.XSaveSize() {
		return fmt.Errorf("KVM_SET_XSAVE vcpu %d: area of %d bytes, want %d", c.ID, len(buf), c.XSaveSize())
	}
	if _, err := ioctl(c.ufd(), ioctlSetXSave, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE vcpu %d: %w", c.ID, err)
	}
	return nil
}

// GetXCRS reads the extended control registers.
func (c *VCPU) GetXCRS() (XCRS, error) {
	var x XCRS
	if err := gokvm.GetXCRS(c.ufd(), &x); err != nil {
		return x, fmt.Errorf("KVM_GET_XCRS vcpu %d: %w", c.ID, err)
	}
	return x, nil
}

// SetXCRS writes the extended control registers.
func (c *VCPU) SetXCRS(x XCRS) error {
	if err := gokvm.SetXCRS(c.ufd(), &x); err != nil {
		return fmt.Errorf("KVM_SET_XCRS vcpu %d: %w", c.ID, err)
	}
	return nil
}

// msrBuffer lays out struct kvm_msrs followed by its entries.
func msrBuffer(msrs []MSR) []byte {
	buf := make([]byte, 8+16*len(msrs))
	binary.LittleEndian.PutUint32(buf, uint32(len(msrs)))
	for i, m := range msrs {
		binary.LittleEndian.PutUint32(buf[8+16*i:], m.Index)
		binary.LittleEndian.PutUint64(buf[8+16*i+8:], m.Value)
	}
	return buf
}

// MSRError is a partial KVM_GET_MSRS or KVM_SET_MSRS: KVM stopped at the
// MSR at Position.
type MSRError struct {
	Op       string
	VCPU     int
	Position int
	Index    uint32
	Total    int
}

func (e *MSRError) Error() string {
	return fmt.Sprintf("%s vcpu %d: KVM handled %d of %d MSRs, refused %#x", e.Op, e.VCPU, e.Position, e.Total, e.Index)
}

// GetMSRs reads the MSRs named by indices. KVM stops at the first MSR it
// cannot read; that is an *MSRError naming it.
func (c *VCPU) GetMSRs(indices []uint32) ([]MSR, error) {
	if len(indices) == 0 {
		return nil, nil
	}
	msrs := make([]MSR, len(indices))
	for i, idx := range indices {
		msrs[i].Index = idx
	}
	buf := msrBuffer(msrs)
	n, err := ioctl(c.ufd(), ioctlGetMSRs, uintptr(unsafe.Pointer(&buf[0])))
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSRS vcpu %d: %w", c.ID, err)
	}
	if int(n) != len(msrs) {
		return nil, &MSRError{Op: "KVM_GET_MSRS", VCPU: c.ID, Position: int(n), Index: msrs[n].Index, Total: len(msrs)}
	}
	for i := range msrs {
		msrs[i].Value = binary.LittleEndian.Uint64(buf[8+16*i+8:])
	}
	return msrs, nil
}

// SetMSRs writes MSRs; a partial write is an error naming the refused MSR.
func (c *VCPU) SetMSRs(msrs []MSR) error {
	if len(msrs) == 0 {
		return nil
	}
	buf := msrBuffer(msrs)
	n, err := ioctl(c.ufd(), ioctlSetMSRs, uintptr(unsafe.Pointer(&buf[0])))
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS vcpu %d: %w", c.ID, err)
	}
	if int(n) != len(msrs) {
		return &MSRError{Op: "KVM_SET_MSRS", VCPU: c.ID, Position: int(n), Index: msrs[n].Index, Total: len(msrs)}
	}
	return nil
}

// GetLAPIC reads the local APIC registers.
func (c *VCPU) GetLAPIC() (LAPIC, error) {
	var l LAPIC
	if err := gokvm.GetLocalAPIC(c.ufd(), &l); err != nil {
		return l, fmt.Errorf("KVM_GET_LAPIC vcpu %d: %w", c.ID, err)
	}
	return l, nil
}

// SetLAPIC writes the local APIC registers.
func (c *VCPU) SetLAPIC(l LAPIC) error {
	if err := gokvm.SetLocalAPIC(c.ufd(), &l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC vcpu %d: %w", c.ID, err)
	}
	return nil
}

// GetEvents reads pending exceptions, interrupts and NMIs.
func (c *VCPU) GetEvents() (VCPUEvents, error) {
	var e VCPUEvents
	if err := gokvm.GetVCPUEvents(c.ufd(), &e); err != nil {
		return e, fmt.Errorf("KVM_GET_VCPU_EVENTS vcpu %d: %w", c.ID, err)
	}
	return e, nil
}

// SetEvents writes pending exceptions, interrupts and NMIs.
func (c *VCPU) SetEvents(e VCPUEvents) error {
	if err := gokvm.SetVCPUEvents(c.ufd(), &e); err != nil {
		return fmt.Errorf("KVM_SET_VCPU_EVENTS vcpu %d: %w", c.ID, err)
	}
	return nil
}

// GetMPState reads the multiprocessing state.
func (c *VCPU) GetMPState() (MPState, error) {
	var m MPState
	if err := gokvm.GetMPState(c.ufd(), &m); err != nil {
		return m, fmt.Errorf("KVM_GET_MP_STATE vcpu %d: %w", c.ID, err)
	}
	return m, nil
}

// SetMPState writes the multiprocessing state.
func (c *VCPU) SetMPState(m MPState) error {
	if err := gokvm.SetMPState(c.ufd(), &m); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE vcpu %d: %w", c.ID, err)
	}
	return nil
}

// GetDebugRegs reads the debug registers.
func (c *VCPU) GetDebugRegs() (DebugRegs, error) {
	var d DebugRegs
	if err := gokvm.GetDebugRegs(c.ufd(), &d); err != nil {
		return d, fmt.Errorf("KVM_GET_DEBUGREGS vcpu %d: %w", c.ID, err)
	}
	return d, nil
}

// SetDebugRegs writes the debug registers.
func (c *VCPU) SetDebugRegs(d DebugRegs) error {
	if err := gokvm.SetDebugRegs(c.ufd(), &d); err != nil {
		return fmt.Errorf("KVM_SET_DEBUGREGS vcpu %d: %w", c.ID, err)
	}
	return nil
}

// GetTSCKHz reads the guest TSC frequency.
func (c *VCPU) GetTSCKHz() (uint64, error) {
	f, err := gokvm.GetTSCKHz(c.ufd())
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ vcpu %d: %w", c.ID, err)
	}
	return f, nil
}

// SetTSCKHz sets the guest TSC frequency.
func (c *VCPU) SetTSCKHz(khz uint64) error {
	if err := gokvm.SetTSCKHz(c.ufd(), khz); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ vcpu %d %d kHz: %w", c.ID, khz, err)
	}
	return nil
}

// SetCPUID sets the CPUID the guest is meant to see.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	cp := &gokvm.CPUID{Nent: uint32(len(entries)), Entries: entries}
	if err := gokvm.SetCPUID2(c.ufd(), cp); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d (%d entries): %w", c.ID, len(entries), err)
	}
	return nil
}

// GetCPUID reads back the CPUID set on this vCPU.
func (c *VCPU) GetCPUID() ([]CPUIDEntry, error) {
	cp := &gokvm.CPUID{Nent: maxCPUIDEntries, Entries: make([]gokvm.CPUIDEntry2, maxCPUIDEntries)}
	if err := gokvm.GetCPUID2(c.ufd(), cp); err != nil {
		return nil, fmt.Errorf("KVM_GET_CPUID2 vcpu %d: %w", c.ID, err)
	}
	return cp.Entries[:cp.Nent], nil
}

// Translate maps a guest virtual address through the vCPU's current paging.
func (c *VCPU) Translate(gva uint64) (gpa uint64, ok bool, err error) {
	t := gokvm.Translation{LinearAddress: gva}
	if err := gokvm.Translate(c.ufd(), &t); err != nil {
		return 0, false, fmt.Errorf("KVM_TRANSLATE vcpu %d %#x: %w", c.ID, gva, err)
	}
	return t.PhysicalAddress, t.Valid != 0, nil
}

// KVMClockPaused tells the guest's kvmclock that the VM was paused, so its
// watchdogs do not report the gap as a soft lockup. ENOTSUP is not an error:
// the guest may not use kvmclock.
func (c *VCPU) KVMClockPaused() error {
	if _, err := ioctl(c.ufd(), ioctlKVMClockCtrl, 0); err != nil && err != unix.EINVAL && err != unix.EOPNOTSUPP {
		return fmt.Errorf("KVM_KVMCLOCK_CTRL vcpu %d: %w", c.ID, err)
	}
	return nil
}
