package kvm

import (
	"fmt"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// Kernel structures gokvm wraps correctly, re-exported under our names.
type (
	ClockData  = gokvm.ClockData
	PITState2  = gokvm.PITState2
	IRQChip    = gokvm.IRQChip
	CPUIDEntry = gokvm.CPUIDEntry2
)

// IRQ chip IDs for GetIRQChip/SetIRQChip (KVM_IRQCHIP_*).
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// Memory region flags (KVM_MEM_*).
const (
	MemLogDirtyPages = 1 << 0
	MemReadOnly      = 1 << 1
)

// VM is a KVM virtual machine file descriptor.
type VM struct {
	fd      int
	runSize int
}

// Close closes the VM fd. vCPUs must be closed first.
func (v *VM) Close() error { return unix.Close(v.fd) }

// CheckExtension asks the VM (not the system) for a capability; some answers,
// such as CapXSave2's buffer size, are per VM.
func (v *VM) CheckExtension(c Cap) int {
	r, err := ioctl(uintptr(v.fd), ioctlCheckExt, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// SetUserMemoryRegion maps host memory at hva into guest physical memory.
func (v *VM) SetUserMemoryRegion(slot uint32, flags uint32, gpa, size uint64, hva uintptr) error {
	r := &gokvm.UserspaceMemoryRegion{
		Slot: slot, Flags: flags, GuestPhysAddr: gpa, MemorySize: size, UserspaceAddr: uint64(hva),
	}
	if err := gokvm.SetUserMemoryRegion(uintptr(v.fd), r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d gpa %#x size %#x: %w", slot, gpa, size, err)
	}
	return nil
}

// SetTSSAddr places the three-page TSS region VMX needs for real mode.
func (v *VM) SetTSSAddr(addr uint32) error {
	if err := gokvm.SetTSSAddr(uintptr(v.fd), addr); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places VMX's identity-map page. gokvm passes a pointer
// to a uint32 for this __u64 argument, so KVM reads four bytes past it; this
// one passes a uint64.
func (v *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctl(uintptr(v.fd), ioctlSetIdentMap, uintptr(unsafe.Pointer(&addr))); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and per-vCPU LAPICs.
func (v *VM) CreateIRQChip() error {
	if err := gokvm.CreateIRQChip(uintptr(v.fd)); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// pitSpeakerDummy (KVM_PIT_SPEAKER_DUMMY) makes KVM answer port 0x61 too,
// which Linux reads while calibrating; gokvm's CreatePIT2 passes no flags.
const pitSpeakerDummy = 1

// CreatePIT2 creates the in-kernel i8254 with its speaker port.
func (v *VM) CreatePIT2() error {
	cfg := struct {
		Flags uint32
		_     [15]uint32
	}{Flags: pitSpeakerDummy}
	if _, err := ioctl(uintptr(v.fd), gokvm.IIOW(0x77, unsafe.Sizeof(cfg)), uintptr(unsafe.Pointer(&cfg))); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line of the in-kernel irqchip.
func (v *VM) IRQLine(irq uint32, high bool) error {
	lv := struct{ IRQ, Level uint32 }{IRQ: irq}
	if high {
		lv.Level = 1
	}
	if _, err := ioctl(uintptr(v.fd), ioctlIRQLine, uintptr(unsafe.Pointer(&lv))); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE %d: %w", irq, err)
	}
	return nil
}

// GetIRQChip reads one in-kernel interrupt controller's state.
func (v *VM) GetIRQChip(id uint32) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	if err := gokvm.GetIRQChip(uintptr(v.fd), &c); err != nil {
		return c, fmt.Errorf("KVM_GET_IRQCHIP %d: %w", id, err)
	}
	return c, nil
}

// SetIRQChip writes one in-kernel interrupt controller's state.
func (v *VM) SetIRQChip(c IRQChip) error {
	if err := gokvm.SetIRQChip(uintptr(v.fd), &c); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP %d: %w", c.ChipID, err)
	}
	return nil
}

// GetPIT2 reads the in-kernel PIT state.
func (v *VM) GetPIT2() (PITState2, error) {
	var s PITState2
	if err := gokvm.GetPIT2(uintptr(v.fd), &s); err != nil {
		return s, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return s, nil
}

// SetPIT2 writes the in-kernel PIT state.
func (v *VM) SetPIT2(s PITState2) error {
	if err := gokvm.SetPIT2(uintptr(v.fd), &s); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// GetClock reads kvmclock.
func (v *VM) GetClock() (ClockData, error) {
	var c ClockData
	if err := gokvm.GetClock(uintptr(v.fd), &c); err != nil {
		return c, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock writes kvmclock.
func (v *VM) SetClock(c ClockData) error {
	if err := gokvm.SetClock(uintptr(v.fd), &c); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}

// GetDirtyLog fills bitmap (one bit per page of the slot, which the caller
// sizes) with the pages written since the last call, and clears KVM's copy.
func (v *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	if len(bitmap) == 0 {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: empty bitmap", slot)
	}
	dl := struct {
		Slot   uint32
		_      uint32
		Bitmap uintptr
	}{Slot: slot, Bitmap: uintptr(unsafe.Pointer(&bitmap[0]))}
	if _, err := ioctl(uintptr(v.fd), gokvm.IIOW(0x42, unsafe.Sizeof(dl)), uintptr(unsafe.Pointer(&dl))); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w", slot, err)
	}
	return nil
}

// EnableCap enables a VM capability with up to four arguments.
func (v *VM) EnableCap(c Cap, args ...uint64) error {
	ec := enableCap{Cap: uint32(c)}
	copy(ec.Args[:], args)
	if _, err := ioctl(uintptr(v.fd), ioctlEnableCap, uintptr(unsafe.Pointer(&ec))); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP %d: %w", c, err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its kvm_run area.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := gokvm.CreateVCPU(uintptr(v.fd), id)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, v.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vcpu %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), run: run, vm: v}, nil
}
