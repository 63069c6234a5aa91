package analyze

import (
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/asm"
	"golang.org/x/arch/x86/x86asm"
)

// segmentOf assembles 64-bit code and decodes it as one function.
func segmentOf(t *testing.T, src string) *segment {
	t.Helper()
	if err := asm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	code, err := asm.Assemble(".code64\n.globl _start\n_start:\n"+src, 0x1000)
	if err != nil {
		t.Fatal(err)
	}
	seg := &segment{fn: "f"}
	for pc := 0; pc < len(code); {
		in, err := x86asm.Decode(code[pc:], 64)
		if err != nil {
			t.Fatalf("decode at %d: %v", pc, err)
		}
		seg.insts = append(seg.insts, inst{uint64(0x1000 + pc), in})
		pc += in.Len
	}
	return seg
}

func lastSyscall(seg *segment) int {
	for i := len(seg.insts) - 1; i >= 0; i-- {
		if seg.insts[i].Op == x86asm.SYSCALL {
			return i
		}
	}
	return -1
}

func TestConstInFollowsPaths(t *testing.T) {
	for _, c := range []struct {
		name, src string
		want      []int64
		why       string
	}{
		{"straight", "mov $1, %eax\nmov $2, %edi\nsyscall\n", []int64{1}, ""},
		{"copy", "mov $60, %edx\nmov %edx, %eax\nsyscall\n", []int64{60}, ""},
		{"xor", "xor %eax, %eax\nsyscall\n", []int64{0}, ""},
		{"both branches", "test %edi, %edi\nje 1f\nmov $60, %eax\njmp 2f\n1: mov $231, %eax\n2: syscall\n", []int64{60, 231}, ""},
		{"loop keeps it", "mov $202, %r9d\n1: mov %r9d, %eax\nsyscall\ncmp $0, %eax\njne 1b\nret\n", []int64{202}, ""},
		{"padding after jmp", "mov $1, %eax\njmp 1f\nnop\nnop\n1: syscall\n", []int64{1}, ""},
		{"argument", "syscall\n", nil, "passed in by its callers"},
		{"computed", "mov (%rdi), %eax\nsyscall\n", nil, "is computed at"},
		{"call clobbers", "mov $1, %eax\ncall 1f\n1: syscall\n", nil, "clobbered by the call"},
		{"one path unknown", "test %edi, %edi\nje 1f\nmov $60, %eax\n1: syscall\n", nil, "passed in"},
	} {
		t.Run(c.name, func(t *testing.T) {
			seg := segmentOf(t, c.src)
			got, why := constIn(seg, lastSyscall(seg), x86asm.RAX)
			if c.why != "" {
				if !strings.Contains(why, c.why) {
					t.Fatalf("got %v, %q; want unresolved with %q", got, why, c.why)
				}
				return
			}
			if why != "" || len(got) != len(c.want) {
				t.Fatalf("got %v, %q; want %v", got, why, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("got %v, want %v", got, c.want)
				}
			}
		})
	}
}

func TestPushedSeventhArgument(t *testing.T) {
	seg := segmentOf(t, "mov $1, %edi\npush $1\nmov $3, %esi\ncall 1f\n1: ret\n")
	call := 0
	for i, in := range seg.insts {
		if in.Op == x86asm.CALL {
			call = i
		}
	}
	if got, why := pushedBefore(seg, call); why != "" || len(got) != 1 || got[0] != 1 {
		t.Fatalf("got %v %q, want [1]", got, why)
	}
	seg = segmentOf(t, "push $1\nsub $8, %rsp\ncall 1f\n1: ret\n")
	if _, why := pushedBefore(seg, 2); !strings.Contains(why, "RSP moves") {
		t.Fatalf("why %q", why)
	}
}
