package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/kindlingvm/kindling/vmm/memory"
)

// The MP table (Intel MultiProcessor Specification 1.4) is how a Linux guest
// without ACPI finds its vCPUs, its IOAPIC and how ISA interrupts reach it.
const (
	// MaxVCPUs: APIC IDs are 8 bits, 0xff is broadcast, and the IOAPIC
	// takes the ID after the last vCPU.
	MaxVCPUs = 254

	mpFloatLen   = 16
	mpHeaderLen  = 44
	mpCPULen     = 20
	mpEntryLen   = 8 // bus, IOAPIC, I/O and local interrupt entries
	mpSpecRev    = 4 // 1.4
	mpEntryCPU   = 0
	mpEntryBus   = 1
	mpEntryIOAPI = 2
	mpEntryIRQ   = 3
	mpEntryLINT  = 4
	mpIRQINT     = 0
	mpIRQNMI     = 1
	mpIRQExtINT  = 3

	ioapicAddr    = 0xfec0_0000
	lapicAddr     = 0xfee0_0000
	ioapicPins    = 24
	lapicVersion  = 0x14
	ioapicVersion = 0x11
	// cpuSignature is family 6, the feature flags FPU and APIC: what a
	// guest reads from the table, never used to pick code paths.
	cpuSignature = 0x600
	cpuFeatures  = 1<<0 | 1<<9
)

// mpTableSize is the table's size for n vCPUs.
func mpTableSize(n int) int {
	return mpFloatLen + mpHeaderLen + n*mpCPULen + mpEntryLen*(2+ioapicPins+2)
}

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

func writeMPTable(mem *memory.Memory, vcpus int) error {
	if vcpus < 1 || vcpus > MaxVCPUs {
		return fmt.Errorf("mp table: %d vcpus, want 1..%d", vcpus, MaxVCPUs)
	}
	b := make([]byte, mpTableSize(vcpus))
	if ebdaStart+uint64(len(b)) > biosEnd {
		return fmt.Errorf("mp table of %d bytes overflows the BIOS area", len(b))
	}
	fl, cfg := b[:mpFloatLen], b[mpFloatLen:]
	copy(fl, "_MP_")
	binary.LittleEndian.PutUint32(fl[4:], ebdaStart+mpFloatLen)
	fl[8] = 1 // length in 16-byte units
	fl[9] = mpSpecRev
	fl[10] = checksum(fl)

	copy(cfg, "PCMP")
	cfg[6] = mpSpecRev
	copy(cfg[8:16], "KINDLING")
	copy(cfg[16:28], "MICROVM     ")
	binary.LittleEndian.PutUint32(cfg[36:], lapicAddr)
	off := mpHeaderLen
	entries := 0
	ioapicID := byte(vcpus)
	for i := 0; i < vcpus; i++ {
		e := cfg[off : off+mpCPULen]
		e[0], e[1], e[2] = mpEntryCPU, byte(i), lapicVersion
		e[3] = 1 // enabled
		if i == 0 {
			e[3] |= 2 // bootstrap processor
		}
		binary.LittleEndian.PutUint32(e[4:], cpuSignature)
		binary.LittleEndian.PutUint32(e[8:], cpuFeatures)
		off += mpCPULen
		entries++
	}
	add := func(f func(e []byte)) {
		f(cfg[off : off+mpEntryLen])
		off += mpEntryLen
		entries++
	}
	add(func(e []byte) { e[0], e[1] = mpEntryBus, 0; copy(e[2:], "ISA   ") })
	add(func(e []byte) {
		e[0], e[1], e[2], e[3] = mpEntryIOAPI, ioapicID, ioapicVersion, 1
		binary.LittleEndian.PutUint32(e[4:], ioapicAddr)
	})
	// Every IOAPIC pin is an ISA interrupt with the bus's default polarity
	// and trigger (edge, active high); virtio-mmio devices use pins 5-23.
	for pin := 0; pin < ioapicPins; pin++ {
		add(func(e []byte) {
			e[0], e[1] = mpEntryIRQ, mpIRQINT
			e[4], e[5], e[6], e[7] = 0, byte(pin), ioapicID, byte(pin)
		})
	}
	add(func(e []byte) { e[0], e[1], e[4], e[5], e[6], e[7] = mpEntryLINT, mpIRQExtINT, 0, 0, 0xff, 0 })
	add(func(e []byte) { e[0], e[1], e[4], e[5], e[6], e[7] = mpEntryLINT, mpIRQNMI, 0, 0, 0xff, 1 })
	binary.LittleEndian.PutUint16(cfg[4:], uint16(off))
	binary.LittleEndian.PutUint16(cfg[34:], uint16(entries))
	cfg[7] = checksum(cfg[:off])
	return mem.WriteAt(b, ebdaStart)
}
