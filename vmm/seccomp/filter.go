// Package seccomp confines a kindling-vmm process to the system calls it
// needs once its VM is built: a seccomp-BPF allow-list, checked per call
// by the kernel, whose default action kills the whole process with SIGSYS.
//
// It owns three things: the filter program (assembled here by hand as
// classic BPF; this file), the VMM's allow-list (syscalls.go, each entry
// with the reason the VMM needs it) and installing it on every thread of
// the process (install.go). It never loosens a filter once installed and
// never installs anything but an allow-list: a call that no rule names is
// fatal, so a missing rule shows up at once, in tests, as a SIGSYS exit.
//
// x86-64 only: the filter refuses every other audit architecture and the
// x32 ABI.
package seccomp

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Action is what the filter returns for a call: a SECCOMP_RET_* value.
type Action uint32

const (
	// Allow lets the call run.
	Allow Action = unix.SECCOMP_RET_ALLOW
	// KillProcess ends the whole process at once, as by SIGSYS (its wait
	// status says "killed by signal 31").
	KillProcess Action = unix.SECCOMP_RET_KILL_PROCESS
)

// Errno makes the call fail with errno without running it.
func Errno(errno unix.Errno) Action {
	return Action(unix.SECCOMP_RET_ERRNO | uint32(errno)&unix.SECCOMP_RET_DATA)
}

// Cond is a test on one 32-bit half of a call argument:
// (word & Mask) == Value. A Mask of 0 means all bits (0xffffffff).
type Cond struct {
	Arg   int  // 0 to 5
	High  bool // the upper 32 bits of the argument rather than the lower
	Mask  uint32
	Value uint32
}

// ArgEq32 is arg == v for an argument the kernel reads as a 32-bit int
// (a pid, a socket domain, an ioctl request): the upper half is ignored
// by the kernel, so the filter ignores it too.
func ArgEq32(arg int, v uint32) []Cond { return []Cond{{Arg: arg, Value: v}} }

// ArgMasked32 is (arg & mask) == v on the lower 32 bits.
func ArgMasked32(arg int, mask, v uint32) []Cond {
	return []Cond{{Arg: arg, Mask: mask, Value: v}}
}

// Rule lets one system call through. With no Any, every call of Nr is
// allowed; otherwise a call is allowed when all the conditions of at least
// one element of Any hold, and gets Else (KillProcess when zero) when
// none does.
type Rule struct {
	Nr   uintptr
	Name string // for messages and tests
	Why  string // why the VMM needs it; documentation only
	Any  [][]Cond
	// Action, when not zero, is returned for the call instead of Allow
	// (a rule can make a call fail with Errno rather than kill). Else,
	// when not zero, replaces KillProcess for a call no alternative
	// admits. Zero is SECCOMP_RET_KILL_THREAD, which neither can be: a
	// Go process with one thread killed is left hanging.
	Action Action
	Else   Action
}

// Offsets in struct seccomp_data (include/uapi/linux/seccomp.h).
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// x32SyscallBit marks an x32 ABI system call on x86-64
// (__X32_SYSCALL_BIT in arch/x86/include/uapi/asm/unistd.h); x32 calls
// carry the same AUDIT_ARCH_X86_64 and must be refused by number.
const x32SyscallBit = 0x40000000

// maxInsns is BPF_MAXINSNS (include/uapi/linux/bpf_common.h): the kernel
// refuses a longer classic BPF program.
const maxInsns = 4096

func stmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }

func jump(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
}

const (
	ldAbs  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	jeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	jgeK   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	andK   = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
	retK   = unix.BPF_RET | unix.BPF_K
	maxJmp = 255 // jt and jf are 8-bit offsets
)

// Assemble builds the filter: the architecture check, then one block per
// rule in order (put the hottest calls first: the kernel walks the list),
// then def for every call no rule names. Every jump is local to its
// block, so the program has no length limit but the kernel's.
func Assemble(rules []Rule, def Action) ([]unix.SockFilter, error) {
	prog := []unix.SockFilter{
		stmt(ldAbs, offArch),
		jump(jeqK, unix.AUDIT_ARCH_X86_64, 1, 0),
		stmt(retK, uint32(KillProcess)),
		stmt(ldAbs, offNr),
		jump(jgeK, x32SyscallBit, 0, 1),
		stmt(retK, uint32(KillProcess)),
	}
	seen := map[uintptr]string{}
	for _, r := range rules {
		if prev, ok := seen[r.Nr]; ok {
			return nil, fmt.Errorf("seccomp: syscall %d (%s) has two rules (also %s)", r.Nr, r.Name, prev)
		}
		seen[r.Nr] = r.Name
		block, err := ruleBlock(r)
		if err != nil {
			return nil, err
		}
		if len(block) > maxJmp {
			return nil, fmt.Errorf("seccomp: the rule for %s is %d instructions, more than a jump can skip", r.Name, len(block))
		}
		// A = nr here, at the start of every block: blocks that load
		// arguments end in a return, so they never fall through.
		prog = append(prog, jump(jeqK, uint32(r.Nr), 0, uint8(len(block))))
		prog = append(prog, block...)
	}
	prog = append(prog, stmt(retK, uint32(def)))
	if len(prog) > maxInsns {
		return nil, fmt.Errorf("seccomp: filter of %d instructions is longer than the kernel's %d", len(prog), maxInsns)
	}
	return prog, nil
}

// ruleBlock is the code run when the call number matched r.Nr: it returns
// r's action when an alternative holds, r.Else otherwise.
func ruleBlock(r Rule) ([]unix.SockFilter, error) {
	ok := Allow
	if r.Action != 0 {
		ok = r.Action
	}
	if len(r.Any) == 0 {
		return []unix.SockFilter{stmt(retK, uint32(ok))}, nil
	}
	var out []unix.SockFilter
	for _, alt := range r.Any {
		if len(alt) == 0 {
			return nil, fmt.Errorf("seccomp: rule for %s has an empty alternative (use no Any to allow every call)", r.Name)
		}
		// Each condition: load, maybe mask, compare; a mismatch skips
		// to the next alternative, past this one's remaining
		// instructions and its return.
		var insns [][]unix.SockFilter
		for _, c := range alt {
			if c.Arg < 0 || c.Arg > 5 {
				return nil, fmt.Errorf("seccomp: rule for %s tests argument %d", r.Name, c.Arg)
			}
			off := uint32(offArgs + 8*c.Arg)
			if c.High {
				off += 4
			}
			seq := []unix.SockFilter{stmt(ldAbs, off)}
			if c.Mask != 0 && c.Mask != 0xffffffff {
				seq = append(seq, stmt(andK, c.Mask))
			}
			seq = append(seq, jump(jeqK, c.Value, 0, 0)) // jf patched below
			insns = append(insns, seq)
		}
		total := 1 // the return
		for _, s := range insns {
			total += len(s)
		}
		done := 0
		for _, s := range insns {
			done += len(s)
			skip := total - done // to just past this alternative's return
			if skip > maxJmp {
				return nil, errors.New("seccomp: rule alternative too long")
			}
			s[len(s)-1].Jf = uint8(skip)
			out = append(out, s...)
		}
		out = append(out, stmt(retK, uint32(ok)))
	}
	elseAction := KillProcess
	if r.Else != 0 {
		elseAction = r.Else
	}
	return append(out, stmt(retK, uint32(elseAction))), nil
}
