package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"

	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// PVH boot (xen/include/public/arch-x86/hvm/start_info.h and the ELF note
// XEN_ELFNOTE_PHYS32_ENTRY the kernel carries when built with CONFIG_PVH).
const (
	xenElfNotePhys32Entry = 18
	startInfoMagic        = 0x336ec578
	startInfoVersion      = 1 // has the memory map fields
	startInfoLen          = 56
	modlistEntryLen       = 32
	memmapEntryLen        = 24
	// pvhCmdlineMax is the x86 kernel's COMMAND_LINE_SIZE (2048): PVH has
	// no header field that says otherwise.
	pvhCmdlineMax = 2047
)

type loadSegment struct {
	paddr uint64
	data  []byte
	memsz uint64
}

type pvhKernel struct {
	path      string
	entry     uint64
	segments  []loadSegment
	top       uint64
	memoryEnd uint64
}

func parsePVH(path string, data []byte, memSize uint64) (*pvhKernel, error) {
	// Name the class before parsing: a 32-bit kernel is a common mistake.
	if len(data) > elf.EI_CLASS && elf.Class(data[elf.EI_CLASS]) != elf.ELFCLASS64 {
		return nil, fmt.Errorf("kernel %s: %s ELF, want a 64-bit x86-64 vmlinux", path, elf.Class(data[elf.EI_CLASS]))
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w: bad ELF: %v", path, ErrNotKernel, err)
	}
	if f.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("kernel %s: %s ELF, want a 64-bit x86-64 vmlinux", path, f.Class)
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("kernel %s: ELF for %s, want x86-64", path, f.Machine)
	}
	k := &pvhKernel{path: path, memoryEnd: lowRAMEnd(memSize)}
	found := false
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_NOTE:
			if p.Off > uint64(len(data)) || p.Filesz > uint64(len(data))-p.Off {
				return nil, fmt.Errorf("kernel %s: %w: note segment %#x+%#x past the end", path, ErrTruncated, p.Off, p.Filesz)
			}
			if e, ok := findPVHEntry(data[p.Off:p.Off+p.Filesz], f.ByteOrder); ok {
				k.entry, found = e, true
			}
		case elf.PT_LOAD:
			if p.Off > uint64(len(data)) || p.Filesz > uint64(len(data))-p.Off {
				return nil, fmt.Errorf("kernel %s: %w: segment at file offset %#x wants %d bytes, the file has %d",
					path, ErrTruncated, p.Off, p.Filesz, len(data))
			}
			if p.Memsz < p.Filesz || p.Paddr+p.Memsz < p.Paddr {
				return nil, fmt.Errorf("kernel %s: segment at %#x has a bad size", path, p.Paddr)
			}
			if p.Paddr < biosEnd || p.Paddr+p.Memsz > lowRAMEnd(memSize) {
				return nil, fmt.Errorf("kernel %s: %w: segment %#x-%#x is outside the guest's RAM from 1 MiB to %d MiB",
					path, ErrTooBig, p.Paddr, p.Paddr+p.Memsz, lowRAMEnd(memSize)>>20)
			}
			k.segments = append(k.segments, loadSegment{paddr: p.Paddr, data: data[p.Off : p.Off+p.Filesz], memsz: p.Memsz})
			k.top = max(k.top, p.Paddr+p.Memsz)
		}
	}
	if !found {
		return nil, fmt.Errorf("kernel %s: %w: ELF vmlinux has no PVH entry note (build it with CONFIG_PVH=y, or boot the bzImage)", path, ErrNotKernel)
	}
	if len(k.segments) == 0 {
		return nil, fmt.Errorf("kernel %s: ELF has no loadable segments", path)
	}
	return k, nil
}

// findPVHEntry walks an ELF note segment for XEN_ELFNOTE_PHYS32_ENTRY.
func findPVHEntry(notes []byte, bo binary.ByteOrder) (uint64, bool) {
	align4 := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(notes) >= 12 {
		namesz, descsz, typ := uint64(bo.Uint32(notes)), uint64(bo.Uint32(notes[4:])), bo.Uint32(notes[8:])
		rest := uint64(len(notes) - 12)
		if align4(namesz) > rest || align4(descsz) > rest-align4(namesz) {
			return 0, false
		}
		name := notes[12 : 12+namesz]
		desc := notes[12+align4(namesz) : 12+align4(namesz)+descsz]
		if typ == xenElfNotePhys32Entry && string(bytes.TrimRight(name, "\x00")) == "Xen" {
			switch len(desc) {
			case 4:
				return uint64(bo.Uint32(desc)), true
			case 8:
				return bo.Uint64(desc), true
			}
		}
		notes = notes[12+align4(namesz)+align4(descsz):]
	}
	return 0, false
}

func (k *pvhKernel) end() uint64       { return k.top }
func (k *pvhKernel) initrdMax() uint64 { return k.memoryEnd }
func (k *pvhKernel) cmdlineMax() int   { return pvhCmdlineMax }

func (k *pvhKernel) load(mem *memory.Memory, p *plan) (*Entry, error) {
	for _, s := range k.segments {
		if err := mem.WriteAt(s.data, s.paddr); err != nil {
			return nil, fmt.Errorf("kernel %s: load segment at %#x: %w", k.path, s.paddr, err)
		}
		// Fresh guest memory is zero, but a reused one need not be.
		if bss := s.memsz - uint64(len(s.data)); bss > 0 {
			z, err := mem.Slice(s.paddr+uint64(len(s.data)), bss)
			if err != nil {
				return nil, err
			}
			clear(z)
		}
	}
	e820 := E820Map(mem.Size())
	if len(e820) > memmapMax {
		return nil, fmt.Errorf("memory map has %d entries, room for %d", len(e820), memmapMax)
	}
	mm := make([]byte, memmapEntryLen*len(e820))
	for i, e := range e820 {
		binary.LittleEndian.PutUint64(mm[memmapEntryLen*i:], e.Addr)
		binary.LittleEndian.PutUint64(mm[memmapEntryLen*i+8:], e.Size)
		binary.LittleEndian.PutUint32(mm[memmapEntryLen*i+16:], e.Type)
	}
	if err := mem.WriteAt(mm, memmapAddr); err != nil {
		return nil, err
	}
	si := make([]byte, startInfoLen)
	binary.LittleEndian.PutUint32(si[0:], startInfoMagic)
	binary.LittleEndian.PutUint32(si[4:], startInfoVersion)
	binary.LittleEndian.PutUint64(si[24:], cmdlineAddr)
	binary.LittleEndian.PutUint64(si[40:], memmapAddr)
	binary.LittleEndian.PutUint32(si[48:], uint32(len(e820)))
	if p.initrdSize > 0 {
		mod := make([]byte, modlistEntryLen)
		binary.LittleEndian.PutUint64(mod[0:], p.initrdAddr)
		binary.LittleEndian.PutUint64(mod[8:], p.initrdSize)
		if err := mem.WriteAt(mod, modlistAddr); err != nil {
			return nil, err
		}
		binary.LittleEndian.PutUint32(si[12:], 1)
		binary.LittleEndian.PutUint64(si[16:], modlistAddr)
	}
	if err := mem.WriteAt(si, startInfoAddr); err != nil {
		return nil, err
	}
	if err := writeGDT(mem); err != nil {
		return nil, err
	}
	return &Entry{Protocol: ProtocolPVH, Regs: kvm.Regs{RIP: k.entry, RBX: startInfoAddr, RFLAGS: 2}}, nil
}
