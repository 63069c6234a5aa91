package seccomp

import (
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// runFilter interprets prog, as the kernel would, over one call: the
// subset of classic BPF that Assemble emits (ld abs, and, jeq, jge, ret).
func runFilter(t *testing.T, prog []unix.SockFilter, arch uint32, nr uint32, args [6]uint64) Action {
	t.Helper()
	data := make([]byte, 64)
	binary.LittleEndian.PutUint32(data[offNr:], nr)
	binary.LittleEndian.PutUint32(data[offArch:], arch)
	for i, a := range args {
		binary.LittleEndian.PutUint64(data[offArgs+8*i:], a)
	}
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		switch in.Code {
		case ldAbs:
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case andK:
			acc &= in.K
		case jeqK, jgeK:
			taken := acc == in.K
			if in.Code == jgeK {
				taken = acc >= in.K
			}
			if taken {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case retK:
			return Action(in.K)
		default:
			t.Fatalf("pc %d: opcode %#x not interpreted", pc, in.Code)
		}
	}
	t.Fatal("the filter ran off its end")
	return 0
}

func TestVMMFilter(t *testing.T) {
	const pid = 4242
	prog, err := Assemble(VMMRules(pid), KillProcess)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rules, %d instructions", len(VMMRules(pid)), len(prog))
	const (
		goThread    = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_SYSVSEM | unix.CLONE_THREAD
		glibcThread = goThread | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID
		kvmRun      = 0xae80
		kvmGetRegs  = 0x8090ae81
		tcgets      = 0x5401
	)
	x86 := uint32(unix.AUDIT_ARCH_X86_64)
	for _, c := range []struct {
		name string
		arch uint32
		nr   uintptr
		args [6]uint64
		want Action
	}{
		{"futex", x86, unix.SYS_FUTEX, [6]uint64{}, Allow},
		{"KVM_RUN", x86, unix.SYS_IOCTL, [6]uint64{7, kvmRun}, Allow},
		{"KVM_GET_REGS", x86, unix.SYS_IOCTL, [6]uint64{7, kvmGetRegs}, Allow},
		{"ioctl request's upper half ignored as the kernel does", x86, unix.SYS_IOCTL, [6]uint64{7, 0xffffffff_0000ae80}, Allow},
		{"TCGETS", x86, unix.SYS_IOCTL, [6]uint64{0, tcgets}, KillProcess},
		{"TUNSETIFF", x86, unix.SYS_IOCTL, [6]uint64{7, unix.TUNSETIFF}, KillProcess},
		{"writev", x86, unix.SYS_WRITEV, [6]uint64{7}, Allow},
		{"readv", x86, unix.SYS_READV, [6]uint64{7}, KillProcess},
		{"go thread", x86, unix.SYS_CLONE, [6]uint64{goThread}, Allow},
		{"glibc thread", x86, unix.SYS_CLONE, [6]uint64{glibcThread}, Allow},
		{"fork", x86, unix.SYS_CLONE, [6]uint64{uint64(unix.SIGCHLD)}, KillProcess},
		{"thread in a new netns", x86, unix.SYS_CLONE, [6]uint64{goThread | unix.CLONE_NEWNET}, KillProcess},
		{"clone3", x86, unix.SYS_CLONE3, [6]uint64{}, Errno(unix.ENOSYS)},
		{"socket AF_UNIX", x86, unix.SYS_SOCKET, [6]uint64{unix.AF_UNIX, unix.SOCK_STREAM}, Allow},
		{"socket AF_INET", x86, unix.SYS_SOCKET, [6]uint64{unix.AF_INET, unix.SOCK_STREAM}, KillProcess},
		{"socket AF_NETLINK", x86, unix.SYS_SOCKET, [6]uint64{unix.AF_NETLINK, unix.SOCK_RAW}, KillProcess},
		{"tgkill own thread", x86, unix.SYS_TGKILL, [6]uint64{pid, 99, uint64(unix.SIGURG)}, Allow},
		{"tgkill another process", x86, unix.SYS_TGKILL, [6]uint64{1, 1, uint64(unix.SIGKILL)}, KillProcess},
		{"kill self", x86, unix.SYS_KILL, [6]uint64{pid, uint64(unix.SIGQUIT)}, Allow},
		{"kill all", x86, unix.SYS_KILL, [6]uint64{0xffffffff, uint64(unix.SIGKILL)}, KillProcess},
		{"mmap rw", x86, unix.SYS_MMAP, [6]uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, Allow},
		{"mmap exec", x86, unix.SYS_MMAP, [6]uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC}, KillProcess},
		{"mprotect exec", x86, unix.SYS_MPROTECT, [6]uint64{0, 4096, unix.PROT_EXEC}, KillProcess},
		{"mount", x86, unix.SYS_MOUNT, [6]uint64{}, KillProcess},
		{"execve", x86, unix.SYS_EXECVE, [6]uint64{}, KillProcess},
		{"ptrace", x86, unix.SYS_PTRACE, [6]uint64{}, KillProcess},
		{"setuid", x86, unix.SYS_SETUID, [6]uint64{}, KillProcess},
		{"unshare", x86, unix.SYS_UNSHARE, [6]uint64{}, KillProcess},
		{"bind", x86, unix.SYS_BIND, [6]uint64{}, KillProcess},
		{"x32 read", x86, x32SyscallBit | unix.SYS_READ, [6]uint64{}, KillProcess},
		{"i386 read", unix.AUDIT_ARCH_I386, 3, [6]uint64{}, KillProcess},
		{"beyond the table", x86, 5000, [6]uint64{}, KillProcess},
	} {
		if got := runFilter(t, prog, c.arch, uint32(c.nr), c.args); got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, uint32(got), uint32(c.want))
		}
	}
	// Every rule's own call gets through with the arguments it expects.
	for _, r := range VMMRules(pid) {
		var args [6]uint64
		for _, c := range firstAlt(r) {
			v := uint64(c.Value)
			if c.High {
				v <<= 32
			}
			args[c.Arg] |= v
		}
		want := Allow
		if r.Action != 0 {
			want = r.Action
		}
		if got := runFilter(t, prog, x86, uint32(r.Nr), args); got != want {
			t.Errorf("%s: %#x, want %#x", r.Name, uint32(got), uint32(want))
		}
		if r.Why == "" {
			t.Errorf("%s: no reason given", r.Name)
		}
	}
}

func firstAlt(r Rule) []Cond {
	if len(r.Any) == 0 {
		return nil
	}
	return r.Any[0]
}

func TestAssemble(t *testing.T) {
	many := make([][]Cond, 3)
	for i := range many {
		many[i] = []Cond{{Arg: 0, Value: uint32(i)}, {Arg: 1, High: true, Mask: 0xf0, Value: 0x10}}
	}
	prog, err := Assemble([]Rule{{Nr: 1, Name: "w", Any: many}, {Nr: 2, Name: "x", Else: Errno(unix.EPERM)}}, Errno(unix.EACCES))
	if err != nil {
		t.Fatal(err)
	}
	x86 := uint32(unix.AUDIT_ARCH_X86_64)
	for _, c := range []struct {
		nr   uint32
		args [6]uint64
		want Action
	}{
		{1, [6]uint64{2, 0x10 << 32}, Allow},
		{1, [6]uint64{0, 0x1f << 32}, Allow},
		{1, [6]uint64{3, 0x10 << 32}, KillProcess}, // Else's default
		{1, [6]uint64{1, 0x20 << 32}, KillProcess},
		{2, [6]uint64{}, Allow},
		{3, [6]uint64{}, Errno(unix.EACCES)},
	} {
		if got := runFilter(t, prog, x86, c.nr, c.args); got != c.want {
			t.Errorf("nr %d %#x: %#x, want %#x", c.nr, c.args[:2], uint32(got), uint32(c.want))
		}
	}
	for _, bad := range []struct {
		rules []Rule
		want  string
	}{
		{[]Rule{{Nr: 1, Name: "a"}, {Nr: 1, Name: "b"}}, "two rules"},
		{[]Rule{{Nr: 1, Name: "a", Any: [][]Cond{{}}}}, "empty alternative"},
		{[]Rule{{Nr: 1, Name: "a", Any: [][]Cond{{{Arg: 6}}}}}, "argument 6"},
		{[]Rule{{Nr: 1, Name: "a", Any: make128()}}, "more than a jump"},
	} {
		if _, err := Assemble(bad.rules, KillProcess); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: got %v, want %q", bad.rules[0].Name, err, bad.want)
		}
	}
}

func make128() [][]Cond {
	var alts [][]Cond
	for i := 0; i < 128; i++ {
		alts = append(alts, ArgEq32(0, uint32(i)))
	}
	return alts
}
