package hostcheck

import (
	"encoding/binary"

	"github.com/kindlingvm/kindling/vmm/boot"
	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Probe guests are a few instructions each, kept as bytes so the check needs
// no assembler; guests_test.go assembles the source beside each one and
// fails if they differ.
//
// Placement in probe guest memory.
const (
	probeCode    = 0x1000 // the guest's entry point
	probeHandler = 0x1800 // LSTAR target for the syscall probe
	probeResult  = 0x3000 // where guests store what they saw
	probeGDT     = 0x600  // after the boot GDT, before the probe code
	probeStack   = 0x8000
	probeMemMiB  = 4
)

// loopGuest counts RCX down to zero, then resets the machine through the
// i8042. Started at CPL 0 or CPL 3 (with IOPL 3, so the OUT is allowed).
const loopGuestSrc = `.code64
1:	dec %rcx
	jnz 1b
	mov $0xfe, %al
	out %al, $0x64
	jmp .
`

var loopGuest = []byte{0x48, 0xff, 0xc9, 0x75, 0xfb, 0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe}

// syscallGuest, at CPL 3, executes SYSCALL; whatever happens, it then
// resets. syscallHandler (LSTAR) stores its CS selector, whose low two bits
// are the privilege level it runs at, and resets.
const syscallGuestSrc = `.code64
	syscall
	mov $0xfe, %al
	out %al, $0x64
	jmp .
`

var syscallGuest = []byte{0x0f, 0x05, 0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe}

const syscallHandlerSrc = `.code64
	mov %cs, %eax
	mov %eax, 0x3000
	mov $0xfe, %al
	out %al, $0x64
	jmp .
`

var syscallHandler = []byte{0x8c, 0xc8, 0x89, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00, 0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe}

// cpuidGuest reads the hypervisor signature leaf and stores EBX, ECX, EDX.
const cpuidGuestSrc = `.code64
	mov $0x40000000, %eax
	cpuid
	mov %ebx, 0x3000
	mov %ecx, 0x3004
	mov %edx, 0x3008
	mov $0xfe, %al
	out %al, $0x64
	jmp .
`

var cpuidGuest = []byte{
	0xb8, 0x00, 0x00, 0x00, 0x40, 0x0f, 0xa2,
	0x89, 0x1c, 0x25, 0x00, 0x30, 0x00, 0x00,
	0x89, 0x0c, 0x25, 0x04, 0x30, 0x00, 0x00,
	0x89, 0x14, 0x25, 0x08, 0x30, 0x00, 0x00,
	0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe,
}

// GDT selectors, laid out as SYSCALL/SYSRET require: kernel code, kernel
// data, then user data and user code (STAR[63:48] + 8 and + 16).
const (
	selKernelCode = 0x08
	selKernelData = 0x10
	selUserData   = 0x18
	selUserCode   = 0x20
)

var probeGDTEntries = []uint64{
	0,
	0x00af9b000000ffff, // kernel code: 64-bit, DPL 0
	0x00cf93000000ffff, // kernel data
	0x00cff3000000ffff, // user data: DPL 3
	0x00affb000000ffff, // user code: 64-bit, DPL 3
}

// setupLongMode puts s in 64-bit mode at privilege level cpl, through the
// boot page tables with user-accessible pages, and loads a GDT laid out
// for SYSCALL.
func setupLongMode(mem *memory.Memory, s *kvm.Sregs, cpl int) error {
	if err := boot.SetupLongMode(mem, s, true); err != nil {
		return err
	}
	gdt := make([]byte, 8*len(probeGDTEntries))
	for i, d := range probeGDTEntries {
		binary.LittleEndian.PutUint64(gdt[8*i:], d)
	}
	if err := mem.WriteAt(gdt, probeGDT); err != nil {
		return err
	}
	s.GDT = kvm.Descriptor{Base: probeGDT, Limit: uint16(len(gdt) - 1)}
	code := kvm.Segment{Limit: 0xffffffff, Selector: selKernelCode, Typ: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := kvm.Segment{Limit: 0xffffffff, Selector: selKernelData, Typ: 0x3, Present: 1, DB: 1, S: 1, G: 1}
	if cpl == 3 {
		code.Selector, code.DPL = selUserCode|3, 3
		data.Selector, data.DPL = selUserData|3, 3
	}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	return nil
}
