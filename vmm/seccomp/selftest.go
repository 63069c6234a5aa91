package seccomp

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// SelfTestEnv, set to "1" in kindling-vmm's environment, makes it call
// SelfTest right after installing its filter: a test hook that proves a
// denied call ends that VMM, and only it, with SIGSYS.
const SelfTestEnv = "KINDLING_VMM_SECCOMP_SELFTEST"

// SelfTest makes a call no allow-list admits, mount(2) with null
// arguments (harmless if it ever ran: EFAULT), from a thread of its own;
// under the VMM's filter the process dies there. It returns only when no
// filter stopped the call.
func SelfTest() error {
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // this thread may die; let the runtime discard it
		_, _, errno := unix.Syscall6(unix.SYS_MOUNT, 0, 0, 0, 0, 0, 0)
		done <- errno
	}()
	return <-done
}
