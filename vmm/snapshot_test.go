package vmm

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/vmm/boot"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

// xorshiftGuest runs N rounds of xorshift64 at CPL 3 on a seed that
// depends on the LAPIC-free vCPU number in RBX, stores the result at
// 0x3000+8*RBX and a done flag at 0x3100+8*RBX; vCPU 0 waits for every
// vCPU's flag (RSI = vCPU count), then resets the machine. At CPL 3 it runs
// at native speed even where guest kernel mode is emulated.
const xorshiftGuest = `.code64
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
	jnz 3f
	xor %rdi, %rdi
2:	cmpq $0, 0x3100(,%rdi,8)
	je 2b
	inc %rdi
	cmp %rsi, %rdi
	jne 2b
	mov $0xfe, %al
	out %al, $0x64
3:	jmp 3b
`

// startUser64 points vCPU i at origin at CPL 3 in 64-bit mode, with IOPL 3
// so the guest can reach the i8042, and the given RBX, RCX and RSI.
func startUser64(t testing.TB, m *Machine, i int, origin, rbx, rcx, rsi uint64) {
	t.Helper()
	c := m.VCPU(i)
	s, err := c.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	if err := boot.SetupLongMode(m.Memory(), &s, true); err != nil {
		t.Fatal(err)
	}
	s.CS.DPL, s.CS.Selector = 3, s.CS.Selector|3
	for _, seg := range []*kvm.Segment{&s.DS, &s.ES, &s.FS, &s.GS, &s.SS} {
		seg.DPL, seg.Selector = 3, seg.Selector|3
	}
	if err := c.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(kvm.Regs{RIP: origin, RFLAGS: 0x3002, RSP: 0x8000, RBX: rbx, RCX: rcx, RSI: rsi}); err != nil {
		t.Fatal(err)
	}
	if i > 0 {
		if err := c.SetMPState(kvm.MPState{State: 0}); err != nil {
			t.Fatal(err)
		}
	}
}

func results(t testing.TB, m *Machine, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i], _ = m.Memory().ReadU64(0x3000 + 8*uint64(i))
	}
	return out
}

// xorshiftRounds runs long enough (hundreds of ms natively) to be caught
// mid-run.
const xorshiftRounds = 400_000_000

func TestSnapshotMidRunRestoresToTheSameResult(t *testing.T) {
	for _, vcpus := range []int{1, 2} {
		t.Run(map[int]string{1: "1 vcpu", 2: "2 vcpus"}[vcpus], func(t *testing.T) {
			// Uninterrupted reference run.
			ref, _ := bareVM(t, 8, vcpus)
			loadGuest(t, ref, xorshiftGuest, 0x1000)
			for i := 0; i < vcpus; i++ {
				startUser64(t, ref, i, 0x1000, uint64(i), xorshiftRounds, uint64(vcpus))
			}
			start := time.Now()
			if r := runToExit(t, ref, 60*time.Second); r.Kind != ExitGuestReset {
				t.Fatalf("reference run: %v", r)
			}
			took := time.Since(start)
			want := results(t, ref, vcpus)

			// Interrupted run: pause a third of the way in and snapshot.
			m, _ := bareVM(t, 8, vcpus)
			loadGuest(t, m, xorshiftGuest, 0x1000)
			for i := 0; i < vcpus; i++ {
				startUser64(t, m, i, 0x1000, uint64(i), xorshiftRounds, uint64(vcpus))
			}
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(took / 3)
			if err := m.Pause(); err != nil {
				t.Fatal(err)
			}
			if got := results(t, m, vcpus); got[0] != 0 {
				t.Skipf("the guest finished before the pause (reference run took %v); nothing to test", took)
			}
			dir := filepath.Join(t.TempDir(), "snap")
			info, err := m.Snapshot(dir)
			if err != nil {
				t.Fatal(err)
			}
			m.Stop()
			t.Logf("reference run %v; snapshot of %d MiB wrote %d KiB in %v", took, info.MemoryBytes>>20, info.WrittenBytes>>10, info.Took)
			memBefore, _ := os.ReadFile(filepath.Join(dir, "memory"))

			restored, err := Restore(dir, RestoreOverrides{Console: "none"}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer restored.Close()
			if r := runToExit(t, restored, 60*time.Second); r.Kind != ExitGuestReset {
				t.Fatalf("restored run: %v", r)
			}
			got := results(t, restored, vcpus)
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("vcpu %d: restored run computed %#x, uninterrupted run %#x", i, got[i], want[i])
				}
			}
			memAfter, _ := os.ReadFile(filepath.Join(dir, "memory"))
			if string(memBefore) != string(memAfter) {
				t.Error("running the restored VM changed the snapshot's memory file")
			}
		})
	}
}
