package seccomp

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Install sets no_new_privs and loads prog as a seccomp filter on every
// thread of the process (SECCOMP_FILTER_FLAG_TSYNC): threads the Go
// runtime starts later inherit it from the thread that clones them. It
// also sets RLIMIT_CORE to 0: a filter kill dumps core like a SIGSYS, and
// a VMM's core holds its guest's memory.
//
// Filters only ever narrow: there is no way back, for this process or its
// threads.
func Install(prog []unix.SockFilter) error {
	if len(prog) == 0 || len(prog) > maxInsns {
		return fmt.Errorf("seccomp: a filter of %d instructions", len(prog))
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fmt.Errorf("seccomp: no core dumps: %w", err)
	}
	// no_new_privs is per thread; the kernel requires it of the thread
	// that installs the filter (we may be root, but do not rely on
	// CAP_SYS_ADMIN), and TSYNC copies it to every other thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("seccomp: set no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return fmt.Errorf("seccomp: install the filter: %w", errno)
	}
	if r != 0 {
		// TSYNC's failure report: the thread that could not take it.
		return fmt.Errorf("seccomp: thread %d could not take the filter (it has a filter of its own)", r)
	}
	return nil
}

// InstallVMM installs the VMM's allow-list (VMMRules) for this process.
func InstallVMM() error {
	prog, err := Assemble(VMMRules(unix.Getpid()), KillProcess)
	if err != nil {
		return err
	}
	return Install(prog)
}
