package vmm

import (
	"fmt"
	"io"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/blk"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/netdev"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/vsock"
)

// virtio-mmio placement: one 4 KiB window per device from VirtioMMIOBase,
// in the MMIO hole below 4 GiB, and one IOAPIC pin each from
// virtioFirstIRQ (pins 0-4 belong to the PIT, keyboard, cascade and COM
// ports).
const (
	VirtioMMIOBase  = 0xd000_0000
	virtioFirstIRQ  = 5
	virtioLastIRQ   = 23 // the IOAPIC has 24 pins
	virtioMaxDevice = virtioLastIRQ - virtioFirstIRQ + 1
)

// virtioSlot is one virtio-mmio device on the bus.
type virtioSlot struct {
	name      string
	base      uint64
	irq       uint32
	transport *virtio.Transport
	block     *blk.Block
	vsock     *vsock.Device
	net       *netdev.Device
	closer    io.Closer // the device's backing file, socket or tap
}

func (d *virtioSlot) close() {
	if d.closer != nil {
		d.closer.Close()
	}
}

// cmdlineArg announces the device to the guest kernel.
func (d *virtioSlot) cmdlineArg() string {
	return virtio.CmdlineArg(d.base, virtio.WindowSize, d.irq)
}

func (m *Machine) setupVirtio() error {
	if n := m.cfg.virtioDevices(); n > virtioMaxDevice {
		return fmt.Errorf("%d virtio devices, at most %d", n, virtioMaxDevice)
	}
	for i, d := range m.cfg.Disks {
		dev, err := blk.Open(d.Path, blk.Options{ReadOnly: d.ReadOnly})
		if err != nil {
			return fmt.Errorf("disk %d %s: %w", i, d.Path, err)
		}
		slot := &virtioSlot{name: fmt.Sprintf("virtio-blk%d", i), base: VirtioMMIOBase + uint64(i)*virtio.WindowSize,
			irq: uint32(virtioFirstIRQ + i), block: dev, closer: dev}
		m.disks = append(m.disks, slot)
		if slot.transport, err = virtio.NewTransport(m.mem, dev, &irqLine{vm: m.vm, gsi: slot.irq}); err != nil {
			return fmt.Errorf("disk %d %s: %w", i, d.Path, err)
		}
		if err := m.mmio.Insert(slot.name, slot.base, virtio.WindowSize, slot.transport); err != nil {
			return err
		}
	}
	if v := m.cfg.Vsock; v != nil {
		// After the disks, so disk slots (and their IRQs) do not move.
		i := len(m.cfg.Disks)
		dev, err := vsock.New(vsock.Options{GuestCID: v.GuestCID, Path: v.Path})
		if err != nil {
			return err
		}
		slot := &virtioSlot{name: "virtio-vsock", base: VirtioMMIOBase + uint64(i)*virtio.WindowSize,
			irq: uint32(virtioFirstIRQ + i), vsock: dev, closer: dev}
		m.vsock = slot
		if slot.transport, err = virtio.NewTransport(m.mem, dev, &irqLine{vm: m.vm, gsi: slot.irq}); err != nil {
			return fmt.Errorf("vsock: %w", err)
		}
		if err := m.mmio.Insert(slot.name, slot.base, virtio.WindowSize, slot.transport); err != nil {
			return err
		}
	}
	// Network interfaces come after the vsock device, so adding them
	// moves no other device's window or IRQ: snapshots of VMs without
	// them restore as before.
	first := len(m.cfg.Disks)
	if m.cfg.Vsock != nil {
		first++
	}
	for k, n := range m.cfg.Net {
		mac, err := n.MAC(k)
		if err != nil {
			return fmt.Errorf("network interface %d: %w", k, err)
		}
		// The tap is looked up in this thread's network namespace: the
		// VMM's, which its launcher chose.
		dev, err := netdev.Open(netdev.Options{Tap: n.Tap, MAC: mac})
		if err != nil {
			return fmt.Errorf("network interface %d: %w", k, err)
		}
		i := first + k
		slot := &virtioSlot{name: fmt.Sprintf("virtio-net%d", k), base: VirtioMMIOBase + uint64(i)*virtio.WindowSize,
			irq: uint32(virtioFirstIRQ + i), net: dev, closer: dev}
		m.nets = append(m.nets, slot)
		if slot.transport, err = virtio.NewTransport(m.mem, dev, &irqLine{vm: m.vm, gsi: slot.irq}); err != nil {
			return fmt.Errorf("network interface %d: %w", k, err)
		}
		if err := m.mmio.Insert(slot.name, slot.base, virtio.WindowSize, slot.transport); err != nil {
			return err
		}
	}
	return nil
}

// virtioSlots are every virtio device, in bus order.
func (m *Machine) virtioSlots() []*virtioSlot {
	out := append([]*virtioSlot(nil), m.disks...)
	if m.vsock != nil {
		out = append(out, m.vsock)
	}
	return append(out, m.nets...)
}

// pauseNet stops the network devices writing guest memory (frames from
// their taps wait), so a paused VM's memory and rings hold still for a
// snapshot; resumeNet lets them go on.
func (m *Machine) pauseNet() {
	for _, s := range m.nets {
		s.net.Pause()
	}
}

func (m *Machine) resumeNet() {
	for _, s := range m.nets {
		s.net.Resume()
	}
}
