/*
 * The echo guest's kernel half: everything that runs at CPL 0.
 *
 * Where guest kernel mode is emulated (PVM hosts, HOST.md) every instruction
 * here costs about a microsecond, so this file does the least it can and
 * never waits in a loop: the 32-bit PVH entry switches to long mode with
 * page tables built by the assembler, loads a GDT, TSS and IDT, masks the
 * 8259s and drops to CPL 3 with iretq, where echo.c runs at native speed.
 *
 * Afterwards CPL 0 is entered only through the IDT:
 *   - HLT executed at CPL 3 raises #GP; the handler turns it into "sleep
 *     until an interrupt" (sti; hlt) unless one arrived since user mode
 *     cleared irq_seen, then returns past the HLT.
 *   - OUT %al, (%dx) at CPL 3 raises #GP too, even with IOPL 3: PVM runs
 *     user mode with IOPL 0 (pvm-spec.rst, "Underlying RFLAGS"). The
 *     handler does the OUT for it: that is how echo.c logs on COM1.
 *   These two are user mode's system calls.
 *   - external interrupts (the vsock device's IOAPIC pin, the LAPIC timer)
 *     set irq_seen, count timer ticks, EOI and return.
 *   - any other exception prints what and where on COM1 and stops the VM
 *     with a triple fault, which the VMM reports with the RIP.
 */

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_CS   0x1b /* 0x18 | RPL 3 */
#define USER_DS   0x23 /* 0x20 | RPL 3 */
#define TSS_SEL   0x28

#define NVECTORS  64   /* exceptions, the 8259s' 32-47, ours 48-63 */
#define VEC_TIMER 0x31 /* echo.c programs the LAPIC timer with it */
#define VEC_SPURIOUS 0x3f

#define COM1      0x3f8
#define LAPIC_EOI 0xfee000b0

	.section .text.entry, "ax"
	.code32
	.globl _start
_start:
	cli
	movl %ebx, start_info_paddr	/* the PVH start_info, for user mode */

	/* Remap the 8259s to vectors 32-47 (so a stray IRQ is never taken
	 * for an exception) and mask every line: nothing uses them. */
	movb $0x11, %al
	outb %al, $0x20
	outb %al, $0xa0
	movb $0x20, %al
	outb %al, $0x21
	movb $0x28, %al
	outb %al, $0xa1
	movb $0x04, %al
	outb %al, $0x21
	movb $0x02, %al
	outb %al, $0xa1
	movb $0x01, %al
	outb %al, $0x21
	outb %al, $0xa1
	movb $0xff, %al
	outb %al, $0x21
	outb %al, $0xa1

	/* The TSS descriptor's base (the TSS is below 16 MiB). */
	movl $tss, %eax
	movw %ax, gdt_tss + 2
	shrl $16, %eax
	movb %al, gdt_tss + 4
	movb %ah, gdt_tss + 7

	lgdt gdtr
	movl $pml4, %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $0xc0000080, %ecx		/* EFER */
	rdmsr
	orl $0x100, %eax		/* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax		/* PG | PE */
	movl %eax, %cr0
	ljmp $KERNEL_CS, $long_mode

	.code64
long_mode:
	movw $KERNEL_DS, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	xorl %eax, %eax
	movw %ax, %fs
	movw %ax, %gs
	movq $kstack_top, %rsp

	/* IDT: gate i points at stubs + 16*i. */
	leaq idt(%rip), %rdi
	leaq stubs(%rip), %rsi
	movl $NVECTORS, %ecx
1:	movq %rsi, %rax
	movw %ax, (%rdi)
	movw $KERNEL_CS, 2(%rdi)
	movw $0x8e00, 4(%rdi)		/* present, DPL 0, interrupt gate */
	shrq $16, %rax
	movw %ax, 6(%rdi)
	shrq $16, %rax
	movl %eax, 8(%rdi)
	movl $0, 12(%rdi)
	addq $16, %rdi
	addq $16, %rsi
	decl %ecx
	jnz 1b
	lidt idtr(%rip)
	movw $TSS_SEL, %ax
	ltr %ax

	/* To CPL 3, with IOPL 3 (it lets user mode reach COM1 where KVM
	 * honours it; PVM does not) and IF set (PVM keeps it set in user
	 * mode anyway), though no interrupt source is unmasked yet. */
	movl start_info_paddr(%rip), %edi
	pushq $USER_DS
	pushq $ustack_top - 8		/* as if called: rsp+8 is 16-byte aligned */
	pushq $0x3202
	pushq $USER_CS
	pushq $user_main
	iretq

/*
 * Interrupt and exception stubs, 16 bytes apart. Each pushes a zero error
 * code where the CPU pushes none, then its vector.
 */
	.align 16
stubs:
	.set vec, 0
	.rept NVECTORS
	.align 16
	.if vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30
	.else
	pushq $0
	.endif
	pushq $vec
	jmp common
	.set vec, vec + 1
	.endr

/* Frame after the pushes below: 0 rdx, 8 rcx, 16 rax, 24 vector,
 * 32 error code, 40 rip, 48 cs, 56 rflags, 64 rsp, 72 ss. */
common:
	pushq %rax
	pushq %rcx
	pushq %rdx
	movq 24(%rsp), %rax
	cmpq $32, %rax
	jae irq
	cmpq $13, %rax			/* #GP: is it user mode's HLT? */
	jne fatal
	testb $3, 48(%rsp)
	jz fatal
	movq 40(%rsp), %rcx
	cmpb $0xee, (%rcx)
	je user_out
	cmpb $0xf4, (%rcx)
	jne fatal
	cmpb $0, irq_seen(%rip)
	jne 2f
	sti				/* the HLT runs in STI's shadow: no lost wake-up */
	hlt
	cli
2:	incq 40(%rsp)			/* past the HLT */
	jmp done

/* out %al, (%dx) from user mode: PVM runs CPL 3 with IOPL 0 whatever
 * iretq loaded, so COM1 output comes here. */
user_out:
	movq 0(%rsp), %rdx
	movq 16(%rsp), %rax
	outb %al, %dx
	incq 40(%rsp)
	jmp done

irq:
	movb $1, irq_seen(%rip)
	cmpq $48, %rax
	jb pic
	cmpq $VEC_SPURIOUS, %rax
	je done				/* spurious: no EOI */
	cmpq $VEC_TIMER, %rax
	jne 3f
	incl ticks(%rip)
3:	movl $LAPIC_EOI, %ecx
	movl $0, (%rcx)
	jmp done
pic:					/* masked, so never; but be correct */
	movb $0x20, %dl
	cmpq $40, %rax
	jb 4f
	movb %dl, %al
	outb %al, $0xa0
4:	movb %dl, %al
	outb %al, $0x20

done:
	popq %rdx
	popq %rcx
	popq %rax
	addq $16, %rsp			/* vector, error code */
	iretq

/* An exception nobody handles: say so on COM1, then triple-fault. */
fatal:
	leaq msg_exc(%rip), %rcx
	call puts
	movq 24(%rsp), %rax
	call puthex
	leaq msg_err(%rip), %rcx
	call puts
	movq 32(%rsp), %rax
	call puthex
	leaq msg_rip(%rip), %rcx
	call puts
	movq 40(%rsp), %rax
	call puthex
	leaq msg_cs(%rip), %rcx
	call puts
	movq 48(%rsp), %rax
	call puthex
	leaq msg_flags(%rip), %rcx
	call puts
	movq 56(%rsp), %rax
	call puthex
	leaq msg_cr2(%rip), %rcx
	call puts
	movq %cr2, %rax
	call puthex
	movb $'\n', %al
	movw $COM1, %dx
	outb %al, %dx
	lidt null_idtr(%rip)
	ud2

/* puts writes the NUL-terminated string at rcx to COM1. */
puts:
	movw $COM1, %dx
5:	movb (%rcx), %al
	testb %al, %al
	jz 6f
	outb %al, %dx
	incq %rcx
	jmp 5b
6:	ret

/* puthex writes rax as 16 hex digits to COM1. */
puthex:
	movq %rax, %rcx
	movw $COM1, %dx
	pushq %rbx
	movl $16, %ebx
7:	rolq $4, %rcx
	movl %ecx, %eax
	andl $0xf, %eax
	cmpb $10, %al
	jb 8f
	addb $('a' - '0' - 10), %al
8:	addb $'0', %al
	outb %al, %dx
	decl %ebx
	jnz 7b
	popq %rbx
	ret

	.section .rodata
msg_exc: .asciz "\nechoguest: fatal exception "
msg_err: .asciz " error "
msg_rip: .asciz " rip "
msg_cs:  .asciz " cs "
msg_flags: .asciz " rflags "
msg_cr2: .asciz " cr2 "

	.data
	.align 16
gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x08 kernel code, 64-bit */
	.quad 0x00cf92000000ffff	/* 0x10 kernel data */
	.quad 0x00affa000000ffff	/* 0x18 user code, 64-bit */
	.quad 0x00cff2000000ffff	/* 0x20 user data */
gdt_tss:				/* 0x28 64-bit TSS, base filled in */
	.word 0x67, 0
	.byte 0, 0x89, 0, 0
	.long 0, 0
gdt_end:

	.align 8
gdtr:
	.word gdt_end - gdt - 1
	.quad gdt
idtr:
	.word NVECTORS * 16 - 1
	.quad idt
null_idtr:
	.word 0
	.quad 0

	.align 16
tss:
	.long 0
	.quad kstack_top		/* rsp0: where CPL 3 enters CPL 0 */
	.fill 21, 4, 0
	.word 0, 104			/* no I/O bitmap: IOPL alone governs port I/O */

	.globl start_info_paddr
start_info_paddr:
	.long 0

/*
 * Identity-mapped page tables for the first 4 GiB in 2 MiB pages, all
 * user-accessible: CPL 3 reaches RAM, the start_info and command line, the
 * virtio-mmio windows, the IOAPIC and the LAPIC. The top GiB (the MMIO
 * hole's devices) is uncached.
 */
	.section .data.pagetables, "aw"
	.align 4096
pml4:
	.quad pdpt + 0x7
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x0000 + 0x7
	.quad pd + 0x1000 + 0x7
	.quad pd + 0x2000 + 0x7
	.quad pd + 0x3000 + 0x7
	.fill 508, 8, 0
pd:
	.set page, 0
	.rept 1536
	.quad (page << 21) | 0x87	/* present, writable, user, 2 MiB */
	.set page, page + 1
	.endr
	.rept 512
	.quad (page << 21) | 0x9f	/* ... and PWT | PCD */
	.set page, page + 1
	.endr

	.bss
	.align 4096
idt:
	.skip NVECTORS * 16
	.align 16
kstack:
	.skip 16384
kstack_top:
ustack:
	.skip 65536
ustack_top:

	.section .note.GNU-stack, "", @progbits

/* The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY). */
	.pushsection .note.Xen, "a", @note
	.align 4
	.long 4, 4, 18
	.asciz "Xen"
	.align 4
	.long _start
	.popsection
