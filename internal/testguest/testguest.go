// Package testguest holds bespoke guests that several test packages run:
// a CPL 3 computation that runs at native speed even where guest kernel
// mode is emulated, for snapshot tests in process and across processes.
package testguest

import (
	"strconv"

	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/vmm/boot"
	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Origin is where Load puts the guest.
const Origin = 0x1000

// ResultAddr is where vCPU i stores its result (ResultAddr + 8*i).
const ResultAddr = 0x3000

// Rounds is long enough (hundreds of ms natively) to be caught mid-run.
const Rounds = 400_000_000

// xorshift runs RCX rounds of xorshift64 from a seed that depends on the
// vCPU number in RBX, stores the result and a done flag; vCPU 0 waits for
// all RSI vCPUs, prints every result as 16 hex digits per line on COM1 and
// resets the machine.
const xorshift = `.code64
	mov $0x123456789, %rax
	add %rbx, %rax
1:	mov %rax, %rdx
	shl $13, %rdx
	xor %rdx, %rax
	mov %rax, %rdx
	shr $7, %rdx
	xor %rdx, %rax
	mov %rax, %rdx
	shl $17, %rdx
	xor %rdx, %rax
	dec %rcx
	jnz 1b
	mov %rax, 0x3000(,%rbx,8)
	movq $1, 0x3100(,%rbx,8)
	test %rbx, %rbx
	jnz 9f
	xor %rdi, %rdi
2:	cmpq $0, 0x3100(,%rdi,8)
	je 2b
	inc %rdi
	cmp %rsi, %rdi
	jne 2b
	xor %rdi, %rdi
	lea digits(%rip), %r10
	mov $0x3f8, %dx
3:	mov 0x3000(,%rdi,8), %r9
	mov $16, %r8
4:	rol $4, %r9
	mov %r9, %rax
	and $0xf, %rax
	movb (%r10,%rax), %al
	out %al, %dx
	dec %r8
	jnz 4b
	mov $0x0a, %al
	out %al, %dx
	inc %rdi
	cmp %rsi, %rdi
	jne 3b
	mov $0xfe, %al
	out %al, $0x64
9:	jmp 9b
digits:	.ascii "0123456789abcdef"
`

// LoadXorshift assembles the guest into mem at Origin.
func LoadXorshift(mem *memory.Memory) error {
	code, err := asm.Assemble(xorshift, Origin)
	if err != nil {
		return err
	}
	return mem.WriteAt(code, Origin)
}

// StartUser64 points vCPU c at Origin at CPL 3 in 64-bit mode (IOPL 3, so
// the guest can reach the UART and the i8042) as vCPU number id of n, to
// run rounds rounds.
func StartUser64(c *kvm.VCPU, mem *memory.Memory, id, n int, rounds uint64) error {
	s, err := c.GetSregs()
	if err != nil {
		return err
	}
	if err := boot.SetupLongMode(mem, &s, true); err != nil {
		return err
	}
	s.CS.DPL, s.CS.Selector = 3, s.CS.Selector|3
	for _, seg := range []*kvm.Segment{&s.DS, &s.ES, &s.FS, &s.GS, &s.SS} {
		seg.DPL, seg.Selector = 3, seg.Selector|3
	}
	if err := c.SetSregs(s); err != nil {
		return err
	}
	regs := kvm.Regs{RIP: Origin, RFLAGS: 0x3002, RSP: 0x8000, RBX: uint64(id), RCX: rounds, RSI: uint64(n)}
	if err := c.SetRegs(regs); err != nil {
		return err
	}
	if id > 0 {
		// APs wait for INIT/SIPI; this guest has no BSP to send them.
		return c.SetMPState(kvm.MPState{State: 0})
	}
	return nil
}

// TickTarget is how many LAPIC timer ticks the tick guest counts.
const TickTarget = 300

// TickAddr is where the tick guest counts.
const TickAddr = 0x2000

// ticks arms the LAPIC timer in periodic mode (vector 0x30, 1 ms at KVM's
// 1 GHz APIC clock), counts ticks at TickAddr in the handler, and after
// TickTarget of them prints "ticked\n" on COM1 and resets. It runs at
// CPL 0 (short handler paths are fine where kernel mode is emulated) and
// returns from the interrupt with iretq, which PVM's emulator handles.
var ticks = `.code64
	lidt idtr(%rip)
	mov $0xff, %al
	out %al, $0x21               # mask the 8259s
	out %al, $0xa1
	mov $0xfee00000, %rbx
	movl $0x1ff, 0xf0(%rbx)      # LAPIC on
	movl $0xb, 0x3e0(%rbx)       # divide by 1
	movl $0x20030, 0x320(%rbx)   # LVT timer: periodic, vector 0x30
	movl $1000000, 0x380(%rbx)   # initial count: 1 ms
	sti
1:	hlt
	cmpl $` + strconv.Itoa(TickTarget) + `, 0x2000
	jb 1b
	cli
	lea msg(%rip), %rsi
	mov $0x3f8, %dx
2:	lodsb
	test %al, %al
	jz 3f
	out %al, %dx
	jmp 2b
3:	mov $0xfe, %al
	out %al, $0x64
4:	hlt
	jmp 4b
handler:
	incl 0x2000
	movl $0, 0xb0(%rbx)          # EOI
	iretq
msg:	.asciz "ticked\n"
.align 16
idt:
	.fill 0x30*2, 8, 0
	.word handler, 0x10, 0x8e00, 0
	.long 0, 0
idtr:
	.word 0x31*16-1
	.quad idt
`

// StartTicks loads the tick guest and points vCPU c at it, at CPL 0.
func StartTicks(c *kvm.VCPU, mem *memory.Memory) error {
	code, err := asm.Assemble(ticks, Origin)
	if err != nil {
		return err
	}
	if err := mem.WriteAt(code, Origin); err != nil {
		return err
	}
	s, err := c.GetSregs()
	if err != nil {
		return err
	}
	if err := boot.SetupLongMode(mem, &s, false); err != nil {
		return err
	}
	if err := c.SetSregs(s); err != nil {
		return err
	}
	return c.SetRegs(kvm.Regs{RIP: Origin, RFLAGS: 2, RSP: 0x8000})
}
