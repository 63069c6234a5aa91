package vmm

import (
	"github.com/kindlingvm/kindling/internal/syncbuf"

	"errors"
	"os"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/vmm/boot"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

// syncBuffer is a console that tests can read while vCPUs write.
type syncBuffer = syncbuf.Buffer

// requireKVM skips, saying why, only where /dev/kvm cannot be opened.
func requireKVM(t testing.TB) {
	t.Helper()
	sys, err := kvm.Open()
	if err != nil {
		if errors.Is(err, kvm.ErrNoKVM) {
			if _, statErr := os.Stat(kvm.DevicePath); statErr == nil {
				t.Fatalf("%s exists but cannot be used: %v", kvm.DevicePath, err)
			}
			t.Skipf("skipping: no KVM on this host (%v)", err)
		}
		t.Fatal(err)
	}
	sys.Close()
}

// bareVM creates a kernel-less VM whose guest the test writes itself.
func bareVM(t testing.TB, memMiB uint64, vcpus int) (*Machine, *syncBuffer) {
	t.Helper()
	requireKVM(t)
	if err := asm.Available(); err != nil {
		t.Fatalf("bespoke guests need an assembler: %v", err)
	}
	con := &syncBuffer{}
	m, err := New(Config{MemoryMiB: memMiB, VCPUs: vcpus}, Options{Console: con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Stop()
		m.Close()
	})
	return m, con
}

// loadGuest assembles src at origin into guest memory.
func loadGuest(t testing.TB, m *Machine, src string, origin uint64) {
	t.Helper()
	code, err := asm.Assemble(src, origin)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Memory().WriteAt(code, origin); err != nil {
		t.Fatal(err)
	}
}

// startReal16 points vCPU i at origin in real mode with segments at 0.
func startReal16(t testing.TB, m *Machine, i int, origin uint64) {
	t.Helper()
	c := m.VCPU(i)
	s, err := c.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range []*kvm.Segment{&s.CS, &s.DS, &s.ES, &s.SS, &s.FS, &s.GS} {
		seg.Base, seg.Selector = 0, 0
	}
	if err := c.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(kvm.Regs{RIP: origin, RFLAGS: 2, RSP: 0x7000}); err != nil {
		t.Fatal(err)
	}
}

// runToExit starts the VM and waits for it to stop, failing after timeout.
func runToExit(t testing.TB, m *Machine, timeout time.Duration) ExitReason {
	t.Helper()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(timeout):
		m.Stop()
		t.Fatalf("guest did not stop within %v", timeout)
	}
	return m.Wait()
}

// putsSI writes the NUL-terminated string at (E/R)SI to COM1, in any mode.
const putsSI = `
	mov $0x3f8, %dx
puts:
	lodsb
	test %al, %al
	jz 9f
	out %al, %dx
	jmp puts
9:
`

// Guest epilogue: pulse the i8042 reset line, which stops the VM.
const resetSeq = `
	mov $0xfe, %al
	out %al, $0x64
1:	hlt
	jmp 1b
`

func TestRealModeSerial(t *testing.T) {
	m, con := bareVM(t, 4, 1)
	loadGuest(t, m, `.code16
	mov $msg, %si
`+putsSI+resetSeq+`
msg: .asciz "hello from real mode\n"
`, 0x1000)
	startReal16(t, m, 0, 0x1000)
	r := runToExit(t, m, 30*time.Second)
	if r.Kind != ExitGuestReset {
		t.Fatalf("exit %v, want %s", r, ExitGuestReset)
	}
	if got := con.String(); got != "hello from real mode\n" {
		t.Fatalf("console %q", got)
	}
	if mt := m.Metrics(); mt.SerialBytes != 21 || mt.ExitsIO < 22 {
		t.Fatalf("metrics %+v", mt)
	}
}

func TestTripleFault(t *testing.T) {
	m, _ := bareVM(t, 4, 1)
	// An empty IDT makes the divide error undeliverable: #DE, then #GP,
	// then #DF, then shutdown. (PVM's real-mode emulation ignores the IDT
	// limit, so this runs in protected mode.)
	loadGuest(t, m, `.code32
	lidt idt
	xor %ecx, %ecx
	div %ecx
`+resetSeq+`
idt: .word 0
	.long 0
`, 0x1000)
	startProtected32(t, m, 0, 0x1000)
	r := runToExit(t, m, 30*time.Second)
	if r.Kind != ExitTripleFault {
		t.Fatalf("exit %v, want %s", r, ExitTripleFault)
	}
	if r.Clean() {
		t.Fatal("a triple fault must not count as a clean exit")
	}
}

// startProtected32 points vCPU i at origin in flat 32-bit protected mode,
// paging off, with the boot GDT in guest memory (code selector 0x8) so
// interrupts can reload CS.
func startProtected32(t testing.TB, m *Machine, i int, origin uint64) {
	t.Helper()
	startWith(t, m, i, origin, func(s *kvm.Sregs) error { return boot.SetupProtected32(m.Memory(), s) })
}

// startLong64 points vCPU i at origin in 64-bit mode at CPL 0, through the
// boot page tables.
func startLong64(t testing.TB, m *Machine, i int, origin uint64) {
	t.Helper()
	startWith(t, m, i, origin, func(s *kvm.Sregs) error { return boot.SetupLongMode(m.Memory(), s, false) })
}

func startWith(t testing.TB, m *Machine, i int, origin uint64, setup func(*kvm.Sregs) error) {
	t.Helper()
	c := m.VCPU(i)
	s, err := c.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	if err := setup(&s); err != nil {
		t.Fatal(err)
	}
	if err := c.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(kvm.Regs{RIP: origin, RFLAGS: 2, RSP: 0x8000}); err != nil {
		t.Fatal(err)
	}
}

func TestLongModeSerial(t *testing.T) {
	m, con := bareVM(t, 4, 1)
	// RIP-relative addressing and a 64-bit immediate only work in long
	// mode; the digit proves the upper half of RAX is real.
	loadGuest(t, m, `.code64
	mov $0x3f8, %dx
	movabs $0x500000000, %rax
	shr $32, %rax
	add $'0', %al
	out %al, %dx
	lea msg(%rip), %rsi
`+putsSI+resetSeq+`
msg: .asciz " hello from long mode\n"
`, 0x1000)
	startLong64(t, m, 0, 0x1000)
	r := runToExit(t, m, 30*time.Second)
	if r.Kind != ExitGuestReset {
		t.Fatalf("exit %v", r)
	}
	if got := con.String(); got != "5 hello from long mode\n" {
		t.Fatalf("console %q", got)
	}
}

func TestTwoVCPUsWriteAPICIDs(t *testing.T) {
	m, _ := bareVM(t, 4, 2)
	// Each vCPU reads its ID from its in-kernel LAPIC (CPUID is not
	// virtualised on every host, the LAPIC is) and stores ID+1 in its
	// slot; vCPU 0 waits for vCPU 1's slot, then resets the machine.
	loadGuest(t, m, `.code32
	mov 0xfee00020, %eax
	shr $24, %eax
	lea 1(%eax), %ebx
	mov %ebx, 0x2000(,%eax,4)
	test %eax, %eax
	jnz ap
wait:
	pause
	cmpl $0, 0x2004
	je wait
`+resetSeq+`
ap:	cli
	hlt
	jmp ap
`, 0x1000)
	for i := 0; i < 2; i++ {
		startProtected32(t, m, i, 0x1000)
	}
	// APs start waiting for INIT/SIPI; this guest has no BSP to send them.
	if err := m.VCPU(1).SetMPState(kvm.MPState{State: 0}); err != nil {
		t.Fatal(err)
	}
	r := runToExit(t, m, 60*time.Second)
	if r.Kind != ExitGuestReset {
		t.Fatalf("exit %v, want %s", r, ExitGuestReset)
	}
	for i := uint64(0); i < 2; i++ {
		v, err := m.Memory().ReadU32(0x2000 + 4*i)
		if err != nil {
			t.Fatal(err)
		}
		if v != uint32(i+1) {
			t.Errorf("vcpu %d wrote %d, want %d (APIC ID + 1)", i, v, i+1)
		}
	}
}

func TestSerialInterruptTakenByGuest(t *testing.T) {
	m, con := bareVM(t, 4, 1)
	// The guest routes IOAPIC pin 4 (COM1) to vector 0x30 on LAPIC 0,
	// enables the UART's transmit-empty interrupt and halts; the handler
	// records the vector's arrival, acknowledges it and resets the machine.
	loadGuest(t, m, `.code32
	lidt idtr
	mov $0xff, %al               # mask the 8259s: LINT0 is ExtINT, and
	out %al, $0x21               # an unprogrammed PIC would deliver IRQ4
	out %al, $0xa1               # as vector 12 too
	movl $0x1ff, 0xfee000f0      # LAPIC on, spurious vector 0xff
	movl $0x19, 0xfec00000       # redirection entry 4, high half
	movl $0, 0xfec00010          # destination APIC 0
	movl $0x18, 0xfec00000       # redirection entry 4, low half
	movl $0x30, 0xfec00010       # vector 0x30, fixed, edge, unmasked
	mov $0x3f9, %dx
	mov $0x02, %al
	out %al, %dx                 # IER: transmit holding register empty
wait:
	sti
	hlt
	jmp wait
handler:
	movl $0x30, 0x2000
	mov $0x3fa, %dx
	in %dx, %al                  # IIR: acknowledges THRE
	movl %eax, 0x2004
	movl $0, 0xfee000b0          # LAPIC EOI
	# No iret: PVM's instruction emulator lacks the 32-bit form, and the
	# test has what it needs.
	mov $0x3f8, %dx
	mov $'I', %al
	out %al, %dx
`+resetSeq+`
.align 8
idt:
	.fill 0x30, 8, 0
	.word handler, 0x8, 0x8e00, 0
idtr:
	.word 0x31*8-1
	.long idt
`, 0x1000)
	startProtected32(t, m, 0, 0x1000)
	r := runToExit(t, m, 30*time.Second)
	if r.Kind != ExitGuestReset {
		t.Fatalf("exit %v, want %s", r, ExitGuestReset)
	}
	if v, _ := m.Memory().ReadU32(0x2000); v != 0x30 {
		t.Fatalf("interrupt vector not taken: marker %#x", v)
	}
	if v, _ := m.Memory().ReadU32(0x2004); v&0x0f != 0x02 {
		t.Fatalf("handler saw IIR %#x, want THRE (0x2)", v&0xff)
	}
	if con.String() != "I" {
		t.Fatalf("console %q", con.String())
	}
}

func TestPauseResumeStop(t *testing.T) {
	m, _ := bareVM(t, 4, 2)
	// Both vCPUs count forever in their own word.
	loadGuest(t, m, `.code32
	mov 0xfee00020, %ebx
	shr $24, %ebx
loop:
	incl 0x2000(,%ebx,4)
	jmp loop
`, 0x1000)
	for i := 0; i < 2; i++ {
		startProtected32(t, m, i, 0x1000)
	}
	if err := m.VCPU(1).SetMPState(kvm.MPState{State: 0}); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	counters := func() [2]uint32 {
		var c [2]uint32
		for i := range c {
			c[i], _ = m.Memory().ReadU32(0x2000 + 4*uint64(i))
		}
		return c
	}
	waitAdvance := func(from [2]uint32) [2]uint32 {
		deadline := time.Now().Add(20 * time.Second)
		for {
			c := counters()
			if c[0] != from[0] && c[1] != from[1] {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("counters stuck at %v", c)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitAdvance([2]uint32{})
	for round := 0; round < 3; round++ {
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		if st := m.Status().State; st != StatePaused {
			t.Fatalf("state %s after pause", st)
		}
		a := counters()
		time.Sleep(20 * time.Millisecond)
		if b := counters(); a != b {
			t.Fatalf("round %d: guest ran while paused: %v then %v", round, a, b)
		}
		if err := m.Pause(); err == nil {
			t.Fatal("pausing a paused VM must fail")
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		waitAdvance(a)
	}
	m.Stop()
	st := m.Status()
	if st.State != StateStopped || st.Exit == nil || st.Exit.Kind != ExitHostStop {
		t.Fatalf("status after stop: %+v", st)
	}
	if err := m.Resume(); err == nil {
		t.Fatal("resuming a stopped VM must fail")
	}
	if got := m.Metrics().Pauses; got != 3 {
		t.Fatalf("pauses metric %d, want 3", got)
	}
}

func TestVirtioMMIORegistersRoundTrip(t *testing.T) {
	requireKVM(t)
	disk := t.TempDir() + "/disk.img"
	if err := os.WriteFile(disk, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	con := &syncBuffer{}
	m, err := New(Config{MemoryMiB: 4, VCPUs: 1, Disks: []Disk{{Path: disk}}}, Options{Console: con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(); m.Close() })
	// The guest reads the identification registers of the disk's
	// virtio-mmio window, writes Status and reads it back, reads the
	// capacity from config space, and stores what it saw.
	loadGuest(t, m, `.code32
	mov $0xd0000000, %ebx
	mov 0x000(%ebx), %eax        # MagicValue
	mov %eax, 0x2000
	mov 0x004(%ebx), %eax        # Version
	mov %eax, 0x2004
	mov 0x008(%ebx), %eax        # DeviceID
	mov %eax, 0x2008
	movl $3, 0x070(%ebx)         # Status = ACKNOWLEDGE | DRIVER
	mov 0x070(%ebx), %eax
	mov %eax, 0x200c
	mov 0x100(%ebx), %eax        # config: capacity, low half
	mov %eax, 0x2010
`+resetSeq, 0x1000)
	startProtected32(t, m, 0, 0x1000)
	r := runToExit(t, m, 30*time.Second)
	if r.Kind != ExitGuestReset {
		t.Fatalf("exit %v", r)
	}
	for _, c := range []struct {
		addr uint64
		want uint32
		what string
	}{
		{0x2000, 0x74726976, "magic"}, {0x2004, 2, "version"}, {0x2008, 2, "device id (block)"},
		{0x200c, 3, "status read back"}, {0x2010, 128, "capacity in sectors"},
	} {
		if got, _ := m.Memory().ReadU32(c.addr); got != c.want {
			t.Errorf("%s: guest saw %#x, want %#x", c.what, got, c.want)
		}
	}
	if mt := m.Metrics(); mt.ExitsMMIO < 6 || mt.UnclaimedMMIO != 0 {
		t.Errorf("metrics %+v", mt)
	}
}
