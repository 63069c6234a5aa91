package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Setup header fields (Documentation/arch/x86/boot.rst), as offsets in both
// the bzImage file and boot_params.
const (
	hdrSetupSects    = 0x1f1
	hdrSysSize       = 0x1f4
	hdrBootFlag      = 0x1fe
	hdrJump          = 0x200
	hdrMagic         = 0x202
	hdrVersion       = 0x206
	hdrTypeOfLoader  = 0x210
	hdrLoadFlags     = 0x211
	hdrRamdiskImage  = 0x218
	hdrRamdiskSize   = 0x21c
	hdrHeapEndPtr    = 0x224
	hdrCmdLinePtr    = 0x228
	hdrInitrdAddrMax = 0x22c
	hdrKernelAlign   = 0x230
	hdrRelocatable   = 0x234
	hdrXLoadFlags    = 0x236
	hdrCmdlineSize   = 0x238
	hdrPrefAddress   = 0x258
	hdrInitSize      = 0x260

	// boot_params fields outside the setup header.
	bpE820Entries = 0x1e8
	bpE820Table   = 0x2d0
	bpE820Max     = 128
	bootParamsLen = 4096

	loadedHigh  = 0x01 // loadflags: protected-mode code at 1 MiB
	canUseHeap  = 0x80 // loadflags: heap_end_ptr is valid
	xlfKernel64 = 0x01 // xloadflags: has the 64-bit entry at +0x200
	loaderUndef = 0xff // type_of_loader: a loader with no assigned ID

	// minProtocol is 2.12: the first with xloadflags, which says whether
	// the 64-bit entry exists.
	minProtocol = 0x020c
	// entry64Offset is the 64-bit entry point's offset from the load
	// address (boot.rst, "64-bit BOOT PROTOCOL").
	entry64Offset = 0x200
	// heapEnd is heap_end_ptr: the end of the setup heap, relative to the
	// real-mode code, the value boot.rst recommends (0xe000 - 0x200).
	heapEnd = 0xfe00
)

func isBzImage(data []byte) bool {
	return len(data) >= hdrMagic+4 && binary.LittleEndian.Uint16(data[hdrBootFlag:]) == 0xaa55 &&
		string(data[hdrMagic:hdrMagic+4]) == "HdrS"
}

type bzImage struct {
	path      string
	data      []byte
	version   uint16
	setupLen  int    // bytes of real-mode setup before the protected-mode code
	pmLen     int    // protected-mode code bytes
	initSize  uint64 // memory the kernel needs from where it decompresses
	runAddr   uint64 // where the decompressor puts the kernel
	addrMax   uint64 // initrd_addr_max
	cmdMax    int
	hdrEnd    int // end of the setup header in the file
	loadAddr  uint64
	memoryEnd uint64
}

func parseBzImage(path string, data []byte, memSize uint64) (*bzImage, error) {
	b := &bzImage{path: path, data: data, loadAddr: kernelAddr}
	b.version = binary.LittleEndian.Uint16(data[hdrVersion:])
	if b.version < minProtocol {
		return nil, fmt.Errorf("kernel %s: boot protocol %d.%02d, need at least 2.12 (a Linux 3.8 or newer bzImage)", path, b.version>>8, b.version&0xff)
	}
	if len(data) < hdrInitSize+4 {
		return nil, fmt.Errorf("kernel %s: %w: %d bytes, shorter than its own setup header", path, ErrTruncated, len(data))
	}
	b.hdrEnd = hdrMagic + int(data[hdrJump+1])
	if b.hdrEnd > len(data) || b.hdrEnd > bootParamsLen {
		return nil, fmt.Errorf("kernel %s: setup header end %#x outside the file", path, b.hdrEnd)
	}
	sects := int(data[hdrSetupSects])
	if sects == 0 {
		sects = 4 // boot.rst: "If this field is 0, the real value is 4."
	}
	b.setupLen = (sects + 1) * 512
	b.pmLen = int(binary.LittleEndian.Uint32(data[hdrSysSize:])) * 16
	if b.setupLen > len(data) || b.pmLen > len(data)-b.setupLen {
		return nil, fmt.Errorf("kernel %s: %w: the header promises %d KiB of kernel after %d bytes of setup, the file has %d KiB",
			path, ErrTruncated, b.pmLen>>10, b.setupLen, len(data)>>10)
	}
	if binary.LittleEndian.Uint16(data[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return nil, fmt.Errorf("kernel %s: bzImage has no 64-bit entry point (not an x86-64 kernel?)", path)
	}
	if data[hdrLoadFlags]&loadedHigh == 0 {
		return nil, fmt.Errorf("kernel %s: a zImage that loads below 1 MiB is not supported", path)
	}
	b.initSize = uint64(binary.LittleEndian.Uint32(data[hdrInitSize:]))
	// The decompressor does not run the kernel where it was loaded: a
	// relocatable kernel moves to the load address aligned up to
	// kernel_alignment but never below pref_address (LOAD_PHYSICAL_ADDR,
	// 16 MiB on x86-64), and a fixed one runs at pref_address. The kernel
	// then needs init_size bytes from there, which is what the initrd
	// must stay clear of.
	pref := binary.LittleEndian.Uint64(data[hdrPrefAddress:])
	b.runAddr = pref
	if data[hdrRelocatable] != 0 {
		align := uint64(binary.LittleEndian.Uint32(data[hdrKernelAlign:]))
		run := b.loadAddr
		if align != 0 && align&(align-1) == 0 {
			run = (run + align - 1) &^ (align - 1)
		}
		b.runAddr = max(run, pref)
	}
	b.runAddr = max(b.runAddr, b.loadAddr)
	b.addrMax = uint64(binary.LittleEndian.Uint32(data[hdrInitrdAddrMax:]))
	b.cmdMax = int(binary.LittleEndian.Uint32(data[hdrCmdlineSize:]))
	b.memoryEnd = lowRAMEnd(memSize)
	if b.end() > b.memoryEnd {
		return nil, fmt.Errorf("kernel %s: %w: it decompresses to %d MiB and needs RAM up to %d MiB, the guest has %d MiB",
			path, ErrTooBig, b.runAddr>>20, (b.end()+(1<<20)-1)>>20, memSize>>20)
	}
	return b, nil
}

// end is the first address above everything the kernel occupies: the
// loaded image at 1 MiB and the decompressed kernel at runAddr.
func (b *bzImage) end() uint64 {
	return max(b.loadAddr+uint64(b.pmLen), b.runAddr+b.initSize)
}
func (b *bzImage) initrdMax() uint64 { return min(b.addrMax+1, b.memoryEnd) }
func (b *bzImage) cmdlineMax() int {
	return min(max(b.cmdMax, 0), cmdlineMax-1)
}

func (b *bzImage) load(mem *memory.Memory, p *plan) (*Entry, error) {
	if err := mem.WriteAt(b.data[b.setupLen:b.setupLen+b.pmLen], b.loadAddr); err != nil {
		return nil, fmt.Errorf("kernel %s: load at %#x: %w", b.path, b.loadAddr, err)
	}
	zp := make([]byte, bootParamsLen)
	copy(zp[hdrSetupSects:b.hdrEnd], b.data[hdrSetupSects:b.hdrEnd])
	zp[hdrTypeOfLoader] = loaderUndef
	zp[hdrLoadFlags] |= canUseHeap
	binary.LittleEndian.PutUint16(zp[hdrHeapEndPtr:], heapEnd)
	binary.LittleEndian.PutUint32(zp[hdrCmdLinePtr:], cmdlineAddr)
	binary.LittleEndian.PutUint32(zp[hdrRamdiskImage:], uint32(p.initrdAddr))
	binary.LittleEndian.PutUint32(zp[hdrRamdiskSize:], uint32(p.initrdSize))
	e820 := E820Map(mem.Size())
	if len(e820) > bpE820Max {
		return nil, fmt.Errorf("e820 map has %d entries, boot_params holds %d", len(e820), bpE820Max)
	}
	zp[bpE820Entries] = byte(len(e820))
	for i, e := range e820 {
		off := bpE820Table + 20*i
		binary.LittleEndian.PutUint64(zp[off:], e.Addr)
		binary.LittleEndian.PutUint64(zp[off+8:], e.Size)
		binary.LittleEndian.PutUint32(zp[off+16:], e.Type)
	}
	if err := mem.WriteAt(zp, zeroPageAddr); err != nil {
		return nil, err
	}
	if err := writePageTables(mem); err != nil {
		return nil, err
	}
	if err := writeGDT(mem); err != nil {
		return nil, err
	}
	return &Entry{
		Protocol: ProtocolLinux,
		long:     true,
		Regs: kvm.Regs{
			RIP: b.loadAddr + entry64Offset, RSI: zeroPageAddr,
			RSP: stackTop, RBP: stackTop, RFLAGS: 2,
		},
	}, nil
}
