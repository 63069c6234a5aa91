package seccomp

import (
	"fmt"
	"os"
	"syscall"
)

// DeniedMessage is how a process killed by its filter is described.
const DeniedMessage = "seccomp denied a call"

// Killed reports whether a process ended as a seccomp kill does: by
// SIGSYS. (A SIGSYS sent by kill(2) looks the same; nothing in Kindling
// sends one.)
func Killed(ps *os.ProcessState) bool {
	if ps == nil {
		return false
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGSYS
}

// Describe is the end of a process in words, naming a seccomp kill:
// "killed by signal 31 (bad system call): seccomp denied a call".
func Describe(ps *os.ProcessState) string {
	if ps == nil {
		return "not exited"
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		return ps.String()
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		s := fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
		if ws.Signal() == syscall.SIGSYS {
			s += ": " + DeniedMessage
		}
		return s
	}
	return ps.String()
}
