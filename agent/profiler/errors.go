package profiler

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

var (
	// ErrNoPerfEvents: the kernel cannot sample (built without
	// CONFIG_PERF_EVENTS, or without the software cpu-clock event).
	ErrNoPerfEvents = errors.New("this kernel has no perf events (CONFIG_PERF_EVENTS): build the image with profiling on")
	// ErrPerfDenied: the kernel has perf events but refuses this process.
	ErrPerfDenied = errors.New("perf events denied")
)

// openError explains a perf_event_open failure by its cause and its fix.
func openError(err error, pid, cpu int) error {
	where := fmt.Sprintf("perf_event_open(cpu-clock, pid %d, cpu %d)", pid, cpu)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%s: %w: %w", where, ErrNoPerfEvents, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		paranoid := "unknown"
		if b, rerr := os.ReadFile("/proc/sys/kernel/perf_event_paranoid"); rerr == nil {
			paranoid = strings.TrimSpace(string(b))
		}
		return fmt.Errorf("%s: %w: %w (kernel.perf_event_paranoid is %s): give the agent CAP_PERFMON (or CAP_SYS_ADMIN), "+
			"or set kernel.perf_event_paranoid to 2 or less; a seccomp filter (a container runtime's default) can also refuse perf_event_open",
			where, ErrPerfDenied, err, paranoid)
	}
	return fmt.Errorf("%s: %w", where, err)
}
