package profiler

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfo's si_code for a waitid result (<asm-generic/siginfo.h>).
const (
	cldExited  = 1
	cldKilled  = 2
	cldDumped  = 3
	cldTrapped = 4
)

// startStopped starts cmd so that it stops right after its execve, before
// its first user instruction, and calls attach with its pid while it is
// stopped; then lets it run. The task cannot have made a thread or a
// child yet, so events attach opens with inherit=1 cover everything it
// will ever run.
//
// How: SysProcAttr.Ptrace makes the child PTRACE_TRACEME before execve,
// and a traced process stops with SIGTRAP once execve has replaced its
// image. PTRACE_DETACH with no signal then resumes it, untraced. Ptrace
// requests are accepted only from the thread that is the tracer, the one
// that forked, hence LockOSThread around it all.
//
// The stop is observed with waitid(WNOWAIT), which never reaps: if the
// child died instead (killed by a signal meanwhile), its exit stays for
// cmd.Wait to collect. After the detach nothing is left waitable but the
// eventual exit, so cmd.Wait works as usual.
//
// On any error after the child started, the child is killed and cmd.Wait
// has been called: no stopped or orphaned process remains, and the caller
// must not Wait again.
func startStopped(cmd *exec.Cmd, attach func(pid int) error) error {
	var attr syscall.SysProcAttr
	if cmd.SysProcAttr != nil {
		if cmd.SysProcAttr.Ptrace {
			return errors.New("cmd.SysProcAttr.Ptrace is set: the profiler needs to be the task's tracer until it starts")
		}
		attr = *cmd.SysProcAttr
	}
	attr.Ptrace = true
	callerAttr := cmd.SysProcAttr
	cmd.SysProcAttr = &attr
	defer func() { cmd.SysProcAttr = callerAttr }()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	fail := func(err error) error {
		cmd.Process.Kill() // SIGKILL ends a ptrace-stopped process too
		cmd.Wait()
		return err
	}
	if err := waitExecStop(pid); err != nil {
		return fail(err)
	}
	if err := attach(pid); err != nil {
		return fail(err)
	}
	if err := unix.PtraceDetach(pid); err != nil {
		return fail(fmt.Errorf("resume task %d: ptrace detach: %w", pid, err))
	}
	return nil
}

// waitExecStop waits, without reaping, until pid stops at the SIGTRAP
// that follows its execve.
func waitExecStop(pid int) error {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WEXITED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for task %d to exec: %w", pid, err)
		}
		break
	}
	// si_status follows si_pid and si_uid in the union after the three
	// ints that open siginfo_t.
	status := *(*int32)(unsafe.Add(unsafe.Pointer(&info), 24))
	switch info.Code {
	case cldTrapped:
		if syscall.Signal(status) == syscall.SIGTRAP {
			return nil
		}
		return fmt.Errorf("task %d stopped by %v before it ran, not at its exec", pid, syscall.Signal(status))
	case cldExited:
		return fmt.Errorf("task %d exited with status %d before it ran", pid, status)
	case cldKilled, cldDumped:
		return fmt.Errorf("task %d killed by %v before it ran", pid, syscall.Signal(status))
	}
	return fmt.Errorf("task %d: unexpected wait result (code %d, status %d)", pid, info.Code, status)
}
