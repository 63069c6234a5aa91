package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// JailerName is the jailer's executable.
const JailerName = "kindling-jailer"

// ExitSetupFailed is the jailer's exit status when it fails before
// handing over to the program: the status env(1) and `docker run` use for
// their own failures, apart from kindling-vmm's 0, 1 and 2. The reason is
// the last line of its stderr and in Dir/jail-status.
const ExitSetupFailed = 125

// Cloneflags are the namespaces a jail gets. With Spec.NetNS the jailer
// starts without CLONE_NEWNET and joins that namespace instead.
const Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS

// ErrLeftover means a jail directory was used before: a crash left it, or
// a caller tried to reuse it. Clean it and make a new one.
var ErrLeftover = errors.New("jail directory already used")

// Command checks s and returns the command that runs jailerBinary on it:
// started, it is the jailed program's process (the jailer execs it in
// place). The command has its own session and no parent-death signal, so
// the jail outlives its starter; set its Stdout and Stderr (files, for
// such a detached jail; the jailer's errors go to Stderr) but not its
// SysProcAttr, Env or Args. Command writes the Spec to Dir/jail.json.
func Command(jailerBinary string, s Spec) (*exec.Cmd, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	st, err := os.Stat(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("jail %s: %w", s.ID, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("jail %s: %s is not a directory", s.ID, s.Dir)
	}
	for _, name := range []string{RootName, StatusName} {
		if _, err := os.Lstat(filepath.Join(s.Dir, name)); err == nil {
			return nil, fmt.Errorf("jail %s: %w: %s has a %s left by an earlier jailer; a jail directory is never reused: Clean it (jail.Clean) and make a new one",
				s.ID, ErrLeftover, s.Dir, name)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("jail %s: %w", s.ID, err)
		}
	}
	cloneflags := uintptr(Cloneflags)
	if s.NetNS != "" {
		if err := checkNetNS(s.NetNS); err != nil {
			return nil, fmt.Errorf("jail %s: %w", s.ID, err)
		}
		cloneflags &^= syscall.CLONE_NEWNET
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	spec := filepath.Join(s.Dir, SpecName)
	if err := os.WriteFile(spec, b, 0o600); err != nil {
		return nil, fmt.Errorf("jail %s: %w", s.ID, err)
	}
	outer, err := mountNamespace("/proc/self/ns/mnt")
	if err != nil {
		return nil, fmt.Errorf("jail %s: %w", s.ID, err)
	}
	cmd := exec.Command(jailerBinary, "--spec", spec, "--outer-mount-ns", outer)
	cmd.Env = []string{} // the jailer needs none; the program gets Spec.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: cloneflags}
	return cmd, nil
}

// mountNamespace names the mount namespace at path (a /proc/PID/ns/mnt)
// by its device and inode.
func mountNamespace(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	sys := st.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", sys.Dev, sys.Ino), nil
}

// Status is the jailer's outcome, Dir/jail-status: OK once it hands over
// to the program (written just before the exec); otherwise the step that
// failed and why.
type Status struct {
	OK    bool   `json:"ok"`
	Step  string `json:"step,omitempty"`
	Error string `json:"error,omitempty"`
}

// SetupError is a jailer's failure, read back from its status file.
type SetupError struct {
	ID   string
	Step string
	Msg  string
}

func (e *SetupError) Error() string {
	return fmt.Sprintf("jail %s: %s: %s", e.ID, e.Step, e.Msg)
}

// ReadStatus returns the outcome the jailer recorded in dir: nil once it
// exec'd the program, a *SetupError when it failed, fs.ErrNotExist when
// it has not got as far as writing one.
func ReadStatus(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, StatusName))
	if err != nil {
		return err
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		if len(b) == 0 {
			return fmt.Errorf("%s: %w (the jailer is still setting up, or died doing so)", StatusName, fs.ErrNotExist)
		}
		return fmt.Errorf("%s: %w", StatusName, err)
	}
	if st.OK {
		return nil
	}
	id := filepath.Base(dir)
	if spec, err := os.ReadFile(filepath.Join(dir, SpecName)); err == nil {
		var s Spec
		if json.Unmarshal(spec, &s) == nil && s.ID != "" {
			id = s.ID
		}
	}
	return &SetupError{ID: id, Step: st.Step, Msg: st.Error}
}
