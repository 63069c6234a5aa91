package host

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// A sandbox's process (kindling-init, or the kindling-vmm holding the VM)
// is named in a Record by its PID and its start time, which together
// survive PID reuse. These helpers identify it, watch it and describe its
// end, for both backends.

// procStat returns a process's state (field 3 of /proc/PID/stat) and its
// start time in clock ticks since boot (field 22). The command name
// (field 2) may hold spaces and parentheses, so fields are counted after
// the last ')'.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseProcStat(b)
}

func parseProcStat(b []byte) (state byte, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("/proc/PID/stat: no command name")
	}
	// After ") " come fields 3 (state) onwards.
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("/proc/PID/stat: %d fields after the command name, want at least 20", len(f))
	}
	if len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("/proc/PID/stat: state %q", f[0])
	}
	start, err = strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/PID/stat: start time: %w", err)
	}
	return f[0][0], start, nil
}

// procStartTime is field 22 of /proc/PID/stat.
func procStartTime(pid int) (uint64, error) {
	_, start, err := procStat(pid)
	return start, err
}

// procEnd records, once, that a sandbox's process has ended and how.
type procEnd struct {
	done   chan struct{}
	once   sync.Once
	reason string // set before done is closed
}

func newProcEnd() *procEnd { return &procEnd{done: make(chan struct{})} }

func (e *procEnd) set(reason string) {
	e.once.Do(func() {
		e.reason = reason
		close(e.done)
	})
}

// Reason is "" until done is closed.
func (e *procEnd) Reason() string {
	select {
	case <-e.done:
		return e.reason
	default:
		return ""
	}
}

// describeWait says how a child ended: "exited with status 3", "killed by
// signal 9 (killed)".
func describeWait(ps *os.ProcessState) string {
	if ps == nil {
		return "exited"
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok {
		return ps.String()
	}
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		s := fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
		if ws.CoreDump() {
			s += ", core dumped"
		}
		return s
	}
	return ps.String()
}

// pidWatch is a process that is not our child (a sandbox a previous
// kindlingd started), held through a pidfd so that signals and the exit
// notice reach that process and never a later one with the same PID.
type pidWatch struct {
	pid        int
	end        *procEnd
	cancel     [2]int        // a pipe whose closed write end wakes the poller
	pollerDone chan struct{} // closed when the poller has returned
	once       sync.Once

	mu sync.Mutex
	fd int // the pidfd; -1 once closed
}

// watchPID opens the process pid whose start time must be start. It
// returns an error wrapping ErrSandboxGone if there is no such process
// (it ended, or the PID now names another process).
func watchPID(pid int, start uint64) (*pidWatch, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("%w: no PID recorded", ErrSandboxGone)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("%w: process %d has ended", ErrSandboxGone, pid)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// The pidfd pins the PID: from here on it cannot be reused under us,
	// so the start time read now is the pidfd's process's.
	state, got, err := procStat(pid)
	switch {
	case err != nil:
		unix.Close(fd)
		return nil, fmt.Errorf("%w: process %d: %v", ErrSandboxGone, pid, err)
	case got != start:
		unix.Close(fd)
		return nil, fmt.Errorf("%w: PID %d now names another process (started at tick %d, the sandbox's at %d)", ErrSandboxGone, pid, got, start)
	case state == 'Z' || state == 'X':
		unix.Close(fd)
		return nil, fmt.Errorf("%w: process %d has ended", ErrSandboxGone, pid)
	}
	w := &pidWatch{pid: pid, fd: fd, end: newProcEnd(), pollerDone: make(chan struct{})}
	if err := unix.Pipe2(w.cancel[:], unix.O_CLOEXEC); err != nil {
		unix.Close(fd)
		return nil, err
	}
	go w.poll()
	return w, nil
}

// poll waits for the process to end (its pidfd turns readable) or for
// close. A process that is not our child cannot be waited for, so its exit
// status is unknown: it "exited".
func (w *pidWatch) poll() {
	defer close(w.pollerDone)
	defer unix.Close(w.cancel[0])
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}, {Fd: int32(w.cancel[0]), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			w.end.set("exited (could not watch it: " + err.Error() + ")")
			return
		}
		if fds[0].Revents != 0 {
			w.end.set("exited")
			return
		}
		if fds[1].Revents != 0 {
			return
		}
	}
}

// signal sends sig to the process itself (never to a PID's later owner).
func (w *pidWatch) signal(sig unix.Signal) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd < 0 {
		return errors.New("process no longer watched")
	}
	err := unix.PidfdSendSignal(w.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil // already gone
	}
	return err
}

// close stops watching; the process runs on.
func (w *pidWatch) close() {
	w.once.Do(func() {
		unix.Close(w.cancel[1])
		<-w.pollerDone
		w.mu.Lock()
		unix.Close(w.fd)
		w.fd = -1
		w.mu.Unlock()
	})
}
