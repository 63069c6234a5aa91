package vmm

import (
	"errors"
	"fmt"

	"github.com/kindlingvm/kindling/vmm/devices/legacy"
	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/blk"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/netdev"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

// VCPUState is everything KVM holds for one vCPU. Fixed-size kernel byte
// arrays are kept as []byte so they encode compactly.
type VCPUState struct {
	ID        int
	MPState   uint32
	Regs      kvm.Regs
	Sregs     kvm.Sregs
	XSave     []byte   `json:",omitempty"`
	FPU       *kvm.FPU `json:",omitempty"`
	XCRS      *kvm.XCRS
	DebugRegs kvm.DebugRegs
	LAPIC     []byte
	TSCKHz    uint64 `json:",omitempty"`
	CPUID     []kvm.CPUIDEntry
	MSRs      []kvm.MSR
	Events    kvm.VCPUEvents
}

// VMState is the in-kernel devices' state.
type VMState struct {
	PICMaster, PICSlave, IOAPIC []byte
	PIT                         kvm.PITState2
	Clock                       uint64
}

// DeviceState is the VMM's own devices' state; each device saves and
// restores its own part.
type DeviceState struct {
	Serial legacy.SerialState
	Disks  []DiskState
	// Vsock is the vsock device's transport. Its connections are not
	// saved: their host ends belong to other processes. A restored guest
	// is told with a transport-reset event.
	Vsock *virtio.TransportState `json:",omitempty"`
	// Net is the virtio-net devices, in config order. Frames in flight
	// (one held for a receive buffer, others queued in the tap) are not
	// saved: a network drops them too, and the guest's stack recovers.
	Net []NetState `json:",omitempty"`
}

// DiskState is one virtio-blk device: its transport and the device.
type DiskState struct {
	Transport virtio.TransportState
	Block     blk.State
}

// NetState is one virtio-net device: its transport and the device.
type NetState struct {
	Transport virtio.TransportState
	Device    netdev.State
}

// MachineState is a paused VM's complete state, but for its memory.
type MachineState struct {
	// HostKind is the KVM flavour the snapshot was taken on (HostKind()).
	HostKind string
	// Base, for a diff snapshot, is the snapshot directory its unchanged
	// pages come from (itself full or diff).
	Base    string `json:",omitempty"`
	Config  Config
	VCPUs   []VCPUState
	VM      VMState
	Devices DeviceState
}

// savableMSRs is the host's MSR index list less the MSRs this vCPU's KVM
// refuses to read (HOST.md: some hosts list MSRs they then refuse).
func savableMSRs(c *kvm.VCPU, index []uint32) ([]kvm.MSR, []uint32, error) {
	list := append([]uint32(nil), index...)
	for len(list) > 0 {
		msrs, err := c.GetMSRs(list)
		if err == nil {
			return msrs, list, nil
		}
		var bad *kvm.MSRError
		if !errors.As(err, &bad) {
			return nil, nil, err
		}
		list = append(list[:bad.Position], list[bad.Position+1:]...)
	}
	return nil, nil, nil
}

// saveVCPU captures a vCPU, which must not be running. The order follows
// what KVM needs: MP state before events, events last.
func (m *Machine) saveVCPU(v *vcpuThread) (VCPUState, error) {
	c := v.VCPU
	st := VCPUState{ID: c.ID, CPUID: v.cpuid}
	mp, err := c.GetMPState()
	if err != nil {
		return st, err
	}
	st.MPState = mp.State
	if st.Regs, err = c.GetRegs(); err != nil {
		return st, err
	}
	if st.Sregs, err = c.GetSregs(); err != nil {
		return st, err
	}
	if m.sys.CheckExtension(kvm.CapXSave) != 0 {
		if st.XSave, err = c.GetXSave(); err != nil {
			return st, err
		}
	} else {
		fpu, err := c.GetFPU()
		if err != nil {
			return st, err
		}
		st.FPU = &fpu
	}
	if m.sys.CheckExtension(kvm.CapXCRS) != 0 {
		x, err := c.GetXCRS()
		if err != nil {
			return st, err
		}
		st.XCRS = &x
	}
	if st.DebugRegs, err = c.GetDebugRegs(); err != nil {
		return st, err
	}
	lapic, err := c.GetLAPIC()
	if err != nil {
		return st, err
	}
	st.LAPIC = lapic.Regs[:]
	if m.sys.CheckExtension(kvm.CapGetTSCKHz) != 0 {
		if st.TSCKHz, err = c.GetTSCKHz(); err != nil {
			return st, err
		}
	}
	if st.MSRs, m.msrsToSave, err = savableMSRs(c, m.msrsToSave); err != nil {
		return st, err
	}
	if st.Events, err = c.GetEvents(); err != nil {
		return st, err
	}
	return st, nil
}

// restoreVCPU puts saved state into a fresh vCPU, in the order Firecracker
// found KVM needs: CPUID before MSRs and registers, LAPIC before events.
func (m *Machine) restoreVCPU(v *vcpuThread, st VCPUState) error {
	c := v.VCPU
	if st.TSCKHz != 0 {
		if cur, err := c.GetTSCKHz(); err == nil && cur != st.TSCKHz {
			if err := c.SetTSCKHz(st.TSCKHz); err != nil {
				return fmt.Errorf("%w: the snapshot's TSC runs at %d kHz, this host's at %d kHz and KVM cannot scale it: %v",
					ErrIncompatible, st.TSCKHz, cur, err)
			}
		}
	}
	if err := c.SetCPUID(st.CPUID); err != nil {
		return err
	}
	v.cpuid = st.CPUID
	if err := c.SetMPState(kvm.MPState{State: st.MPState}); err != nil {
		return err
	}
	if err := c.SetRegs(st.Regs); err != nil {
		return err
	}
	if err := c.SetSregs(st.Sregs); err != nil {
		return err
	}
	if st.XSave != nil {
		if err := c.SetXSave(st.XSave); err != nil {
			return err
		}
	} else if st.FPU != nil {
		if err := c.SetFPU(*st.FPU); err != nil {
			return err
		}
	}
	if st.XCRS != nil {
		if err := c.SetXCRS(*st.XCRS); err != nil {
			return err
		}
	}
	if err := c.SetDebugRegs(st.DebugRegs); err != nil {
		return err
	}
	var lapic kvm.LAPIC
	if len(st.LAPIC) != len(lapic.Regs) {
		return fmt.Errorf("%w: LAPIC state of %d bytes, want %d", ErrIncompatible, len(st.LAPIC), len(lapic.Regs))
	}
	copy(lapic.Regs[:], st.LAPIC)
	if err := c.SetLAPIC(lapic); err != nil {
		return err
	}
	if err := c.SetMSRs(st.MSRs); err != nil {
		return fmt.Errorf("%w: %v", ErrIncompatible, err)
	}
	return c.SetEvents(st.Events)
}

// ErrIncompatible means a snapshot cannot be restored on this host.
var ErrIncompatible = errors.New("snapshot incompatible with this host")

func (m *Machine) saveVM() (VMState, error) {
	var st VMState
	for id, dst := range []*[]byte{&st.PICMaster, &st.PICSlave, &st.IOAPIC} {
		c, err := m.vm.GetIRQChip(uint32(id))
		if err != nil {
			return st, err
		}
		*dst = append([]byte(nil), c.Chip[:]...)
	}
	var err error
	if st.PIT, err = m.vm.GetPIT2(); err != nil {
		return st, err
	}
	clock, err := m.vm.GetClock()
	if err != nil {
		return st, err
	}
	st.Clock = clock.Clock
	return st, nil
}

func (m *Machine) restoreVM(st VMState) error {
	for id, src := range [][]byte{st.PICMaster, st.PICSlave, st.IOAPIC} {
		c := kvm.IRQChip{ChipID: uint32(id)}
		if len(src) != len(c.Chip) {
			return fmt.Errorf("%w: irqchip %d state of %d bytes, want %d", ErrIncompatible, id, len(src), len(c.Chip))
		}
		copy(c.Chip[:], src)
		if err := m.vm.SetIRQChip(c); err != nil {
			return err
		}
	}
	if err := m.vm.SetPIT2(st.PIT); err != nil {
		return err
	}
	return m.vm.SetClock(kvm.ClockData{Clock: st.Clock})
}

func (m *Machine) saveDevices() DeviceState {
	st := DeviceState{Serial: m.serial.Save()}
	for _, d := range m.disks {
		st.Disks = append(st.Disks, DiskState{Transport: d.transport.Save(), Block: d.block.Save()})
	}
	if m.vsock != nil {
		ts := m.vsock.transport.Save()
		st.Vsock = &ts
	}
	for _, n := range m.nets {
		st.Net = append(st.Net, NetState{Transport: n.transport.Save(), Device: n.net.Save()})
	}
	return st
}

func (m *Machine) restoreDevices(st DeviceState) error {
	m.serial.Restore(st.Serial)
	if len(st.Disks) != len(m.disks) {
		return fmt.Errorf("snapshot has %d disks, the VM %d", len(st.Disks), len(m.disks))
	}
	for i, d := range m.disks {
		if err := d.block.Restore(st.Disks[i].Block); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
		if err := d.transport.Restore(st.Disks[i].Transport); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
	}
	if (st.Vsock != nil) != (m.vsock != nil) {
		return fmt.Errorf("snapshot and VM disagree on having a vsock device")
	}
	if m.vsock != nil {
		if err := m.vsock.transport.Restore(*st.Vsock); err != nil {
			return fmt.Errorf("vsock: %w", err)
		}
		if err := m.vsock.vsock.TransportReset(); err != nil {
			return fmt.Errorf("vsock: %w", err)
		}
	}
	if len(st.Net) != len(m.nets) {
		return fmt.Errorf("snapshot has %d network interfaces, the VM %d", len(st.Net), len(m.nets))
	}
	for i, n := range m.nets {
		// The device first: the transport re-activates it, and from then
		// on it receives.
		if err := n.net.Restore(st.Net[i].Device); err != nil {
			return fmt.Errorf("network interface %d: %w", i, err)
		}
		if err := n.transport.Restore(st.Net[i].Transport); err != nil {
			return fmt.Errorf("network interface %d: %w", i, err)
		}
	}
	return nil
}

// CaptureState returns the paused VM's state, but for its memory.
func (m *Machine) CaptureState() (*MachineState, error) {
	m.mu.Lock()
	state := m.state
	m.mu.Unlock()
	if state != StatePaused {
		return nil, fmt.Errorf("snapshot: %w (state %s; pause it first)", ErrNotRunning, state)
	}
	st := &MachineState{Config: m.cfg, HostKind: HostKind()}
	for _, v := range m.vcpus {
		vs, err := m.saveVCPU(v)
		if err != nil {
			return nil, fmt.Errorf("snapshot vcpu %d: %w", v.ID, err)
		}
		st.VCPUs = append(st.VCPUs, vs)
	}
	var err error
	if st.VM, err = m.saveVM(); err != nil {
		return nil, fmt.Errorf("snapshot vm: %w", err)
	}
	st.Devices = m.saveDevices()
	return st, nil
}

// applyState loads a captured state into a freshly created VM.
func (m *Machine) applyState(st *MachineState) error {
	if len(st.VCPUs) != len(m.vcpus) {
		return fmt.Errorf("snapshot has %d vcpus, the VM %d", len(st.VCPUs), len(m.vcpus))
	}
	if err := checkCompatible(st, m.supportedCPUID); err != nil {
		return err
	}
	if err := m.restoreVM(st.VM); err != nil {
		return fmt.Errorf("restore vm: %w", err)
	}
	for i, v := range m.vcpus {
		if err := m.restoreVCPU(v, st.VCPUs[i]); err != nil {
			return fmt.Errorf("restore vcpu %d: %w", i, err)
		}
	}
	if err := m.restoreDevices(st.Devices); err != nil {
		return fmt.Errorf("restore devices: %w", err)
	}
	return nil
}
