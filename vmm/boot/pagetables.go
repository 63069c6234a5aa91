package boot

import (
	"encoding/binary"

	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Boot GDT: the 64-bit boot protocol wants __BOOT_CS at 0x10 and __BOOT_DS
// at 0x18 (boot.rst); PVH only needs flat 32-bit segments, given here at
// 0x08 and 0x18.
const (
	selCode32 = 0x08
	selBootCS = 0x10
	selBootDS = 0x18
)

var gdtEntries = []uint64{
	0,
	0x00cf9b000000ffff, // 0x08: 32-bit code, flat
	0x00af9b000000ffff, // 0x10: 64-bit code
	0x00cf93000000ffff, // 0x18: data, flat
}

// Page-table entry bits.
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	pteUser     = 1 << 2
	pteHuge     = 1 << 7 // a 2 MiB page in a page directory
)

// Control register bits.
const (
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// identityMapped is how much the boot page tables map 1:1: all of the
// 32-bit space, so the kernel, boot tables, initrd and MMIO are reachable
// from the 64-bit entry, with four directories of 2 MiB pages.
const identityMapped = 4 << 30

func writeGDT(mem *memory.Memory) error {
	b := make([]byte, 8*len(gdtEntries))
	for i, d := range gdtEntries {
		binary.LittleEndian.PutUint64(b[8*i:], d)
	}
	return mem.WriteAt(b, gdtAddr)
}

// writePageTables identity-maps the first 4 GiB with 2 MiB pages.
func writePageTables(mem *memory.Memory) error {
	return writeIdentityMap(mem, 0)
}

func writeIdentityMap(mem *memory.Memory, extra uint64) error {
	flags := uint64(ptePresent|pteWritable) | extra
	if err := mem.WriteU64(pml4Addr, pdptAddr|flags); err != nil {
		return err
	}
	const dirs = identityMapped >> 30
	for d := uint64(0); d < dirs; d++ {
		if err := mem.WriteU64(pdptAddr+8*d, (pdAddr+d*memory.PageSize)|flags); err != nil {
			return err
		}
		pd, err := mem.Slice(pdAddr+d*memory.PageSize, memory.PageSize)
		if err != nil {
			return err
		}
		for i := uint64(0); i < 512; i++ {
			binary.LittleEndian.PutUint64(pd[8*i:], (d<<30|i<<21)|flags|pteHuge)
		}
	}
	return nil
}

func segment(sel uint16, typ uint8, long bool) kvm.Segment {
	s := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: sel, Typ: typ, Present: 1, S: 1, G: 1}
	if long {
		s.L = 1
	} else {
		s.DB = 1
	}
	return s
}

func setDescriptorTables(s *kvm.Sregs) {
	s.GDT = kvm.Descriptor{Base: gdtAddr, Limit: uint16(8*len(gdtEntries) - 1)}
	s.IDT = kvm.Descriptor{Base: idtAddr, Limit: 0}
}

// setupLong puts s in 64-bit mode with paging through the boot page tables.
func setupLong(s *kvm.Sregs, cs, ds uint16) {
	setDescriptorTables(s)
	s.CS = segment(cs, 0xb, true)
	data := segment(ds, 0x3, false)
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.CR3 = pml4Addr
	s.CR4 = cr4PAE
	s.CR0 = cr0PE | cr0ET | cr0PG
	s.EFER = eferLME | eferLMA
}

// setupFlat32 puts s in 32-bit protected mode with flat segments and no
// paging, as PVH requires.
func setupFlat32(s *kvm.Sregs) {
	setDescriptorTables(s)
	s.CS = segment(selCode32, 0xb, false)
	data := segment(selBootDS, 0x3, false)
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.CR0 = cr0PE | cr0ET
	s.CR3, s.CR4, s.EFER = 0, 0, 0
}

// SetupLongMode prepares a bespoke guest (tests, probes) for 64-bit entry
// at CPL 0: the boot GDT and a 4 GiB identity map, with user-accessible
// pages when user is set so CPL 3 code can run in it.
func SetupLongMode(mem *memory.Memory, s *kvm.Sregs, user bool) error {
	extra := uint64(0)
	if user {
		extra = pteUser
	}
	if err := writeGDT(mem); err != nil {
		return err
	}
	if err := writeIdentityMap(mem, extra); err != nil {
		return err
	}
	setupLong(s, selBootCS, selBootDS)
	return nil
}

// SetupProtected32 prepares a bespoke guest for flat 32-bit protected mode
// without paging, with the boot GDT in memory so interrupts can reload CS.
func SetupProtected32(mem *memory.Memory, s *kvm.Sregs) error {
	if err := writeGDT(mem); err != nil {
		return err
	}
	setupFlat32(s)
	return nil
}
