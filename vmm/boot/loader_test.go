package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// fakeBzImage builds a bzImage with a valid setup header and payload bytes
// of protected-mode code.
func fakeBzImage(payload []byte) []byte {
	const sects = 4
	b := make([]byte, (sects+1)*512)
	b[hdrSetupSects] = sects
	binary.LittleEndian.PutUint32(b[hdrSysSize:], uint32((len(payload)+15)/16))
	binary.LittleEndian.PutUint16(b[hdrBootFlag:], 0xaa55)
	b[hdrJump+1] = byte(hdrInitSize + 4 - hdrMagic) // header runs to init_size
	copy(b[hdrMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[hdrVersion:], 0x020f)
	b[hdrLoadFlags] = loadedHigh
	binary.LittleEndian.PutUint32(b[hdrInitrdAddrMax:], 0x7fffffff)
	b[hdrRelocatable] = 1
	binary.LittleEndian.PutUint16(b[hdrXLoadFlags:], xlfKernel64)
	binary.LittleEndian.PutUint32(b[hdrCmdlineSize:], 2047)
	binary.LittleEndian.PutUint32(b[hdrKernelAlign:], 2<<20)
	binary.LittleEndian.PutUint64(b[hdrPrefAddress:], 16<<20)
	binary.LittleEndian.PutUint32(b[hdrInitSize:], 4<<20)
	padded := make([]byte, (len(payload)+15)/16*16)
	copy(padded, payload)
	return append(b, padded...)
}

// fakePVH builds an ELF64 x86-64 kernel with one PT_LOAD (filesz < memsz)
// at 1 MiB and, unless noNote, a PVH note.
func fakePVH(class elf.Class, machine elf.Machine, noNote bool, code []byte, memsz uint64) []byte {
	const phoff, ehsize, phsize = 64, 64, 56
	note := new(bytes.Buffer)
	binary.Write(note, binary.LittleEndian, []uint32{4, 4, xenElfNotePhys32Entry})
	note.WriteString("Xen\x00")
	binary.Write(note, binary.LittleEndian, uint32(0x100000))
	nph := 2
	if noNote {
		nph = 1
	}
	dataOff := uint64(phoff + phsize*nph)
	codeOff := dataOff + uint64(note.Len())
	b := new(bytes.Buffer)
	ident := [16]byte{0x7f, 'E', 'L', 'F', byte(class), 1, 1}
	b.Write(ident[:])
	binary.Write(b, binary.LittleEndian, struct {
		Type, Machine                                   uint16
		Version                                         uint32
		Entry, Phoff, Shoff                             uint64
		Flags                                           uint32
		Ehsize, Phentsize, Phnum, Shentsize, Shnum, Shx uint16
	}{2, uint16(machine), 1, 0x100000, phoff, 0, 0, ehsize, phsize, uint16(nph), 0, 0, 0})
	type phdr struct {
		Type, Flags                             uint32
		Off, Vaddr, Paddr, Filesz, Memsz, Align uint64
	}
	binary.Write(b, binary.LittleEndian, phdr{uint32(elf.PT_LOAD), 7, codeOff, 0xffffffff81000000, 0x100000, uint64(len(code)), memsz, 0x1000})
	if !noNote {
		binary.Write(b, binary.LittleEndian, phdr{uint32(elf.PT_NOTE), 4, dataOff, 0, 0, uint64(note.Len()), uint64(note.Len()), 4})
	}
	b.Write(note.Bytes())
	b.Write(code)
	return b.Bytes()
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func newMem(t *testing.T, mib uint64) *memory.Memory {
	t.Helper()
	m, err := memory.New(mib<<20, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestLoadBzImage(t *testing.T) {
	payload := []byte("protected-mode code")
	k := writeFile(t, "bzImage", fakeBzImage(payload))
	initrd := writeFile(t, "initrd", bytes.Repeat([]byte{0xab}, 10000))
	mem := newMem(t, 64)
	e, err := Load(mem, Config{Kernel: k, Initrd: initrd, Cmdline: "console=ttyS0", VCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolLinux || e.Regs.RIP != kernelAddr+entry64Offset || e.Regs.RSI != zeroPageAddr {
		t.Fatalf("entry %+v", e)
	}
	got := make([]byte, len(payload))
	mem.ReadAt(got, kernelAddr)
	if !bytes.Equal(got, payload) {
		t.Fatal("protected-mode code not at 1 MiB")
	}
	zp, _ := mem.Slice(zeroPageAddr, bootParamsLen)
	if zp[hdrTypeOfLoader] != loaderUndef || zp[hdrLoadFlags]&canUseHeap == 0 ||
		binary.LittleEndian.Uint32(zp[hdrCmdLinePtr:]) != cmdlineAddr {
		t.Fatal("zero page loader fields not set")
	}
	rdAddr := uint64(binary.LittleEndian.Uint32(zp[hdrRamdiskImage:]))
	rdSize := binary.LittleEndian.Uint32(zp[hdrRamdiskSize:])
	if rdSize != 10000 || rdAddr%memory.PageSize != 0 || rdAddr+10000 > 64<<20 || rdAddr < 64<<20-2*memory.PageSize-10000 {
		t.Fatalf("initrd at %#x+%d, want page-aligned at the top of 64 MiB", rdAddr, rdSize)
	}
	if b, _ := mem.Slice(rdAddr, 10000); b[0] != 0xab || b[9999] != 0xab {
		t.Fatal("initrd bytes not loaded")
	}
	n := int(zp[bpE820Entries])
	if n != len(E820Map(64<<20)) {
		t.Fatalf("%d e820 entries", n)
	}
	last := bpE820Table + 20*(n-1)
	if binary.LittleEndian.Uint64(zp[last:]) != biosEnd || binary.LittleEndian.Uint64(zp[last+8:]) != 63<<20 {
		t.Fatal("last e820 entry is not RAM from 1 MiB to the end")
	}
	if c, _ := mem.Slice(cmdlineAddr, 14); string(c) != "console=ttyS0\x00" {
		t.Fatalf("cmdline %q", c)
	}
	var s kvm.Sregs
	e.ApplySregs(&s)
	if s.CS.L != 1 || s.CS.Selector != selBootCS || s.EFER&eferLMA == 0 || s.CR0&cr0PG == 0 || s.CR3 != pml4Addr {
		t.Fatalf("sregs not 64-bit: %+v", s)
	}
	// The page tables map the kernel and the top of the 32-bit space 1:1.
	for _, va := range []uint64{kernelAddr, 0xbfe00000, 0xfee00000} {
		if pa, ok := translate(t, mem, va); !ok || pa != va {
			t.Errorf("%#x translates to %#x (%v)", va, pa, ok)
		}
	}
}

// translate walks the boot page tables like the MMU.
func translate(t *testing.T, mem *memory.Memory, va uint64) (uint64, bool) {
	pml4e, _ := mem.ReadU64(pml4Addr + 8*((va>>39)&511))
	if pml4e&ptePresent == 0 {
		return 0, false
	}
	pdpte, _ := mem.ReadU64(pml4e&^0xfff + 8*((va>>30)&511))
	if pdpte&ptePresent == 0 {
		return 0, false
	}
	pde, _ := mem.ReadU64(pdpte&^0xfff + 8*((va>>21)&511))
	if pde&ptePresent == 0 || pde&pteHuge == 0 {
		return 0, false
	}
	return pde&^0x1fffff&^(1<<63) | va&0x1fffff, true
}

// A bzImage loaded at 1 MiB decompresses at pref_address (16 MiB here) and
// needs init_size from there: the initrd must stay above that, and a guest
// too small for it is refused.
func TestBzImageDecompressionAreaIsKeptClear(t *testing.T) {
	k := writeFile(t, "bzImage", fakeBzImage([]byte("x")))
	initrd := writeFile(t, "initrd", make([]byte, 6<<20))
	mem := newMem(t, 28)
	if _, err := Load(mem, Config{Kernel: k, Initrd: initrd, VCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	zp, _ := mem.Slice(zeroPageAddr, bootParamsLen)
	if addr := binary.LittleEndian.Uint32(zp[hdrRamdiskImage:]); addr < 20<<20 {
		t.Fatalf("initrd at %#x overlaps the kernel decompressed at 16 MiB + 4 MiB", addr)
	}
	err := Check(Config{Kernel: k, Initrd: initrd, VCPUs: 1}, 24<<20)
	if !errors.Is(err, ErrTooBig) {
		t.Fatalf("initrd that only fits over the decompressed kernel: %v", err)
	}
	if err := Check(Config{Kernel: k, VCPUs: 1}, 18<<20); !errors.Is(err, ErrTooBig) || !strings.Contains(err.Error(), "decompresses to 16 MiB") {
		t.Fatalf("guest smaller than the decompressed kernel: %v", err)
	}
}

func TestLoadPVH(t *testing.T) {
	code := []byte{0xf4, 0xf4, 0xf4}
	k := writeFile(t, "vmlinux", fakePVH(elf.ELFCLASS64, elf.EM_X86_64, false, code, 0x3000))
	initrd := writeFile(t, "initrd", []byte("cpio"))
	mem := newMem(t, 32)
	// Dirty the bss first: Load must zero it.
	mem.WriteAt([]byte{1, 2, 3}, 0x100000+0x2000)
	e, err := Load(mem, Config{Kernel: k, Initrd: initrd, Cmdline: "x", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolPVH || e.Regs.RIP != 0x100000 || e.Regs.RBX != startInfoAddr {
		t.Fatalf("entry %+v", e)
	}
	if b, _ := mem.Slice(0x100000, 3); !bytes.Equal(b, code) {
		t.Fatal("segment not loaded at its physical address")
	}
	if b, _ := mem.Slice(0x102000, 3); !bytes.Equal(b, []byte{0, 0, 0}) {
		t.Fatal("bss not zeroed")
	}
	si, _ := mem.Slice(startInfoAddr, startInfoLen)
	if binary.LittleEndian.Uint32(si) != startInfoMagic || binary.LittleEndian.Uint32(si[12:]) != 1 ||
		binary.LittleEndian.Uint64(si[24:]) != cmdlineAddr || binary.LittleEndian.Uint64(si[40:]) != memmapAddr ||
		int(binary.LittleEndian.Uint32(si[48:])) != len(E820Map(32<<20)) {
		t.Fatalf("start_info % x", si)
	}
	mod, _ := mem.Slice(modlistAddr, modlistEntryLen)
	if binary.LittleEndian.Uint64(mod[8:]) != 4 {
		t.Fatal("modlist does not carry the initrd")
	}
	var s kvm.Sregs
	e.ApplySregs(&s)
	if s.CR0&cr0PG != 0 || s.CR0&cr0PE == 0 || s.CS.DB != 1 || s.CS.L != 0 || s.EFER != 0 {
		t.Fatalf("sregs not flat 32-bit protected mode: %+v", s)
	}
}

func TestMPTable(t *testing.T) {
	for _, n := range []int{1, 4, MaxVCPUs} {
		mem := newMem(t, 4)
		if err := writeMPTable(mem, n); err != nil {
			t.Fatal(err)
		}
		fl, _ := mem.Slice(ebdaStart, mpFloatLen)
		if string(fl[:4]) != "_MP_" || checksum(fl) != 0 {
			t.Fatalf("%d vcpus: bad floating pointer % x", n, fl)
		}
		hdr, _ := mem.Slice(ebdaStart+mpFloatLen, mpHeaderLen)
		size := binary.LittleEndian.Uint16(hdr[4:])
		cfg, _ := mem.Slice(ebdaStart+mpFloatLen, uint64(size))
		if string(cfg[:4]) != "PCMP" || checksum(cfg) != 0 {
			t.Fatalf("%d vcpus: bad config table checksum", n)
		}
		if got := int(binary.LittleEndian.Uint16(hdr[34:])); got != n+2+ioapicPins+2 {
			t.Fatalf("%d vcpus: %d entries", n, got)
		}
		cpus, bsp := 0, 0
		for off := mpHeaderLen; off < int(size); {
			switch cfg[off] {
			case mpEntryCPU:
				cpus++
				if cfg[off+3]&2 != 0 {
					bsp++
				}
				off += mpCPULen
			default:
				off += mpEntryLen
			}
		}
		if cpus != n || bsp != 1 {
			t.Fatalf("%d vcpus: table lists %d processors, %d BSPs", n, cpus, bsp)
		}
	}
	if err := writeMPTable(newMem(t, 4), MaxVCPUs+1); err == nil {
		t.Fatal("too many vcpus accepted")
	}
}

func TestLayoutDoesNotOverlap(t *testing.T) {
	type area struct {
		name       string
		start, end uint64
	}
	areas := []area{
		{"gdt", gdtAddr, gdtAddr + 8*uint64(len(gdtEntries))}, {"idt", idtAddr, idtAddr + 8},
		{"start_info", startInfoAddr, startInfoAddr + startInfoLen}, {"modlist", modlistAddr, modlistAddr + modlistEntryLen},
		{"memmap", memmapAddr, memmapAddr + memmapEntryLen*memmapMax}, {"zero page", zeroPageAddr, zeroPageAddr + bootParamsLen},
		{"pml4", pml4Addr, pml4Addr + memory.PageSize}, {"pdpt", pdptAddr, pdptAddr + memory.PageSize},
		{"pd", pdAddr, pdAddr + 4*memory.PageSize}, {"cmdline", cmdlineAddr, cmdlineAddr + cmdlineMax},
		{"mp table", ebdaStart, ebdaStart + uint64(mpTableSize(MaxVCPUs))}, {"kernel", kernelAddr, kernelAddr + 1},
	}
	for i, a := range areas {
		for _, b := range areas[i+1:] {
			if a.start < b.end && b.start < a.end {
				t.Errorf("%s [%#x,%#x) overlaps %s [%#x,%#x)", a.name, a.start, a.end, b.name, b.start, b.end)
			}
		}
	}
	if stackTop <= zeroPageAddr+bootParamsLen || stackTop >= pml4Addr {
		t.Errorf("boot stack top %#x not between the zero page and the page tables", stackTop)
	}
	if mpTableSize(MaxVCPUs)+ebdaStart > biosEnd {
		t.Error("the largest MP table overflows the BIOS area")
	}
}

func TestE820AroundTheHole(t *testing.T) {
	m := E820Map(4 << 30)
	last := m[len(m)-1]
	if last.Addr != memory.MMIOHoleEnd || last.Size != 1<<30 || m[len(m)-2].Addr+m[len(m)-2].Size != memory.MMIOHoleStart {
		t.Fatalf("map %+v does not split RAM around the MMIO hole", m)
	}
}

func TestBadInput(t *testing.T) {
	good := fakeBzImage([]byte("x"))
	truncated := fakeBzImage(make([]byte, 64<<10))[:8<<10]
	old := append([]byte(nil), good...)
	binary.LittleEndian.PutUint16(old[hdrVersion:], 0x0204)
	no64 := append([]byte(nil), good...)
	binary.LittleEndian.PutUint16(no64[hdrXLoadFlags:], 0)
	huge := fakeBzImage([]byte("x"))
	binary.LittleEndian.PutUint32(huge[hdrInitSize:], 200<<20)
	pvh := fakePVH(elf.ELFCLASS64, elf.EM_X86_64, false, []byte{0xf4}, 1)
	dir := t.TempDir()
	bigInitrd := filepath.Join(dir, "big")
	f, _ := os.Create(bigInitrd)
	f.Truncate(40 << 20)
	f.Close()
	for _, tc := range []struct {
		name     string
		kernel   []byte
		initrd   string
		cmdline  string
		vcpus    int
		want     string
		sentinel error
	}{
		{name: "empty", kernel: []byte{}, want: "empty file"},
		{name: "random bytes", kernel: []byte("hello, world"), want: "first bytes 68 65", sentinel: ErrNotKernel},
		{name: "truncated bzImage", kernel: truncated, want: "truncated", sentinel: ErrTruncated},
		{name: "old protocol", kernel: old, want: "boot protocol 2.04"},
		{name: "no 64-bit entry", kernel: no64, want: "no 64-bit entry"},
		{name: "kernel bigger than memory", kernel: huge, want: "does not fit", sentinel: ErrTooBig},
		{name: "ELF without PVH note", kernel: fakePVH(elf.ELFCLASS64, elf.EM_X86_64, true, []byte{1}, 1), want: "CONFIG_PVH", sentinel: ErrNotKernel},
		{name: "32-bit ELF", kernel: fakePVH(elf.ELFCLASS32, elf.EM_386, false, []byte{1}, 1), want: "ELFCLASS32"},
		{name: "ARM ELF", kernel: fakePVH(elf.ELFCLASS64, elf.EM_AARCH64, false, []byte{1}, 1), want: "EM_AARCH64"},
		{name: "initrd too big", kernel: pvh, initrd: bigInitrd, want: "does not fit in 32 MiB", sentinel: ErrTooBig},
		{name: "missing initrd", kernel: pvh, initrd: filepath.Join(dir, "nope"), want: "no such file"},
		{name: "cmdline too long", kernel: pvh, cmdline: strings.Repeat("a", 3000), want: "at most 2047"},
		{name: "too many vcpus", kernel: pvh, vcpus: 300, want: "vcpus 300"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			os.WriteFile(k, tc.kernel, 0o644)
			vcpus := tc.vcpus
			if vcpus == 0 {
				vcpus = 1
			}
			cfg := Config{Kernel: k, Initrd: tc.initrd, Cmdline: tc.cmdline, VCPUs: vcpus}
			err := Check(cfg, 32<<20)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check: %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Fatalf("error %v is not %v", err, tc.sentinel)
			}
			if _, lerr := Load(newMem(t, 32), cfg); lerr == nil || lerr.Error() != err.Error() {
				t.Fatalf("Load says %v where Check says %v", lerr, err)
			}
		})
	}
	if err := Check(Config{Kernel: filepath.Join(dir, "missing"), VCPUs: 1}, 32<<20); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing kernel: %v", err)
	}
}
