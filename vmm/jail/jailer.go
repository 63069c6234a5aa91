package jail

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// closeRangeCloexec is CLOSE_RANGE_CLOEXEC (include/uapi/linux/close_range.h,
// Linux 5.11): mark the range close-on-exec rather than close it now,
// under the Go runtime's feet.
const closeRangeCloexec = 1 << 2

// Sizes of the jail's tmpfs mounts.
const (
	// rootTmpfsOptions: the root holds directories, empty mount-point
	// files and device nodes only, which take no data pages; it is made
	// read-only before the program runs.
	rootTmpfsOptions = "mode=0755,size=64k,nr_inodes=4096"
	// tmpTmpfsOptions: the VMM writes nothing to /tmp; room for a small
	// scratch file, charged to the jail's cgroup.
	tmpTmpfsOptions = "mode=1777,size=16m,nr_inodes=4096"
)

// Main is the jailer, kindling-jailer --spec FILE --outer-mount-ns
// DEV:INO, started by Command's command as PID 1 of new namespaces. It
// builds the jail, drops privileges and execs the program; it returns
// only on failure: 2 for bad flags, ExitSetupFailed once it has a Spec,
// having said why in one line on stderr and in Dir/jail-status.
func Main(args []string) int {
	// no_new_privs is per thread and the exec happens on the calling
	// one: both must be this thread.
	runtime.LockOSThread()
	flags := flag.NewFlagSet(JailerName, flag.ContinueOnError)
	specPath := flags.String("spec", "", "the jail's Spec (JSON), as jail.Command writes it")
	outer := flags.String("outer-mount-ns", "", "the starter's mount namespace (DEV:INO), which the jailer must not be in")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *specPath == "" || *outer == "" || flags.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "%s: usage: %s --spec FILE (it is started by jail.Command, not by hand)\n", JailerName, JailerName)
		return 2
	}
	j := &jailer{}
	err := j.run(*specPath, *outer)
	// run returns only on failure.
	id := "?"
	if j.spec.ID != "" {
		id = j.spec.ID
	}
	fmt.Fprintf(os.Stderr, "%s: jail %s: %s: %v\n", JailerName, id, j.step, err)
	if j.status != nil {
		j.writeStatus(Status{Step: j.step, Error: err.Error()})
	}
	return ExitSetupFailed
}

// jailer is one run of Main.
type jailer struct {
	spec   Spec
	step   string   // what it is doing, for the failure report
	status *os.File // Dir/jail-status, open from the start: written after the privilege drop too
	root   string   // Dir/root, until the pivot
}

func (j *jailer) writeStatus(st Status) {
	b, _ := json.Marshal(st)
	j.status.Truncate(0)
	j.status.WriteAt(append(b, '\n'), 0)
}

// run builds the jail and execs the program; it returns only an error,
// with j.step saying where.
func (j *jailer) run(specPath, outerMountNS string) error {
	j.step = "read spec"
	b, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &j.spec); err != nil {
		return fmt.Errorf("%s: %w", specPath, err)
	}
	s := &j.spec
	if err := s.Validate(); err != nil {
		return err
	}
	j.step = "status file"
	j.status, err = os.OpenFile(filepath.Join(s.Dir, StatusName), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %v: Clean the directory", ErrLeftover, err)
		}
		return err
	}
	unix.Umask(0o022)

	j.step = "namespaces"
	if err := checkNamespaces(outerMountNS); err != nil {
		return err
	}
	if s.NetNS != "" {
		// Before the pivot, while the host's path is reachable; on this
		// locked thread, the one that execs.
		j.step = "network namespace"
		if err := joinNetNS(s.NetNS); err != nil {
			return err
		}
	}
	if s.Cgroup != nil {
		j.step = "cgroup"
		if err := joinCgroup(s.Cgroup, s.ID, s.Dir); err != nil {
			return err
		}
	}
	if err := j.buildRoot(); err != nil {
		return err
	}
	j.step = "pivot_root"
	if err := pivot(j.root); err != nil {
		return err
	}
	j.step = "hostname"
	if err := unix.Sethostname([]byte(s.ID)); err != nil {
		return err
	}
	j.step = "program"
	if err := checkProgram(s.Argv[0], s.UID, s.GID); err != nil {
		return err
	}
	j.step = "drop privileges"
	if err := dropPrivileges(s.UID, s.GID); err != nil {
		return err
	}
	j.step = "no_new_privs"
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	j.step = "close fds"
	if err := closeOnExecAbove2(); err != nil {
		return err
	}
	j.step = "exec " + s.Argv[0]
	j.writeStatus(Status{OK: true, Step: "exec"})
	env := s.Env
	if env == nil {
		env = []string{}
	}
	err = syscall.Exec(s.Argv[0], s.Argv, env)
	if errors.Is(err, unix.ENOENT) {
		// The file is there (checkProgram saw it): its ELF interpreter
		// is not.
		err = fmt.Errorf("%w: the program is there, so its dynamic loader is not: the jail has no shared libraries; build it static (CGO_ENABLED=0)", err)
	}
	return err
}

// checkNamespaces refuses to go on outside the namespaces Command asks
// for: mounting in its starter's mount namespace would change the host.
func checkNamespaces(outerMountNS string) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("not PID 1 of a new PID namespace (PID %d): start the jailer with jail.Command", os.Getpid())
	}
	// /proc is still the host's here, where this process has a PID too.
	ns, err := mountNamespace("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if ns == outerMountNS {
		return errors.New("in its starter's mount namespace: start the jailer with jail.Command")
	}
	return nil
}

// buildRoot makes Dir/root, in the jail's private mount namespace, a
// tmpfs holding only /run, /tmp, the read-only binds, the devices and
// maybe /proc, read-only itself.
func (j *jailer) buildRoot() error {
	s := &j.spec
	j.step = "private mounts"
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / rprivate: %w", err)
	}
	j.step = "root"
	j.root = filepath.Join(s.Dir, RootName)
	if err := os.Mkdir(j.root, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %v: Clean the directory", ErrLeftover, err)
		}
		return err
	}
	if err := unix.Mount("tmpfs", j.root, "tmpfs", unix.MS_NOSUID, rootTmpfsOptions); err != nil {
		return fmt.Errorf("mount a tmpfs on %s: %w", j.root, err)
	}
	inside := func(p string) string { return filepath.Join(j.root, p) }

	j.step = "run"
	run := filepath.Join(s.Dir, RunName)
	if err := prepareRun(run, s.UID, s.GID); err != nil {
		return err
	}
	if err := bind(run, inside(RunDir), true, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
		return err
	}
	j.step = "tmp"
	if err := os.Mkdir(inside(TmpDir), 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", inside(TmpDir), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, tmpTmpfsOptions); err != nil {
		return fmt.Errorf("mount a tmpfs on /tmp: %w", err)
	}
	for _, b := range s.ReadOnly {
		j.step = "bind " + b.Source
		if err := bind(b.Source, inside(b.Target), false, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV); err != nil {
			return err
		}
	}
	for _, d := range s.Devices {
		j.step = "device " + d
		if err := makeDevice(d, inside(d), s.UID, s.GID); err != nil {
			return err
		}
	}
	if s.Proc {
		j.step = "proc"
		if err := os.Mkdir(inside("/proc"), 0o555); err != nil {
			return err
		}
		flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		// subset=pid (Linux 5.8) leaves out everything but the process
		// directories: no /proc/sys, /proc/kcore, /proc/sysrq-trigger.
		err := unix.Mount("proc", inside("/proc"), "proc", flags, "subset=pid")
		if errors.Is(err, unix.EINVAL) {
			err = unix.Mount("proc", inside("/proc"), "proc", flags, "")
		}
		if err != nil {
			return fmt.Errorf("mount proc: %w", err)
		}
	}
	j.step = "read-only root"
	if err := unix.Mount("", j.root, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("remount the root read-only: %w", err)
	}
	return nil
}

// prepareRun makes Dir/run, or takes the one the caller made (it may
// have put a socket there for the program), as a directory of the jail's
// uid and gid, mode 0700.
func prepareRun(run string, uid, gid int) error {
	if err := os.Mkdir(run, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	st, err := os.Lstat(run)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory (%v)", run, st.Mode().Type())
	}
	if err := os.Lchown(run, uid, gid); err != nil {
		return err
	}
	return os.Chmod(run, 0o700)
}

// bind mounts the host path src on dst (made as a file or a directory to
// match), then remounts it with flags; writable says whether the bind
// may stay writable.
func bind(src, dst string, writable bool, flags uintptr) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if st.IsDir() {
		err = os.Mkdir(dst, 0o755)
	} else {
		var f *os.File
		if f, err = os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444); err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	// Not MS_REC: mounts below src on the host stay out of the jail.
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount on %s: %w", dst, err)
	}
	if !writable {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|flags, ""); err != nil {
		return fmt.Errorf("remount %s: %w", dst, err)
	}
	return nil
}

// makeDevice makes dst a node of the host device at path: same type and
// number, owned by uid and gid, mode 0600.
func makeDevice(path, dst string, uid, gid int) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("on the host: %w", err)
	}
	typ := st.Mode & unix.S_IFMT
	if typ != unix.S_IFCHR && typ != unix.S_IFBLK {
		return fmt.Errorf("on the host it is not a device node (mode %#o)", st.Mode)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := unix.Mknod(dst, typ|0o600, int(st.Rdev)); err != nil {
		return fmt.Errorf("mknod: %w", err)
	}
	if err := os.Lchown(dst, uid, gid); err != nil {
		return err
	}
	return unix.Chmod(dst, 0o600)
}

// pivot makes root the root of the mount namespace and detaches the old
// one: the pivot_root(".", ".") sequence runc uses, with no directory for
// the old root left behind in the new one.
func pivot(root string) error {
	oldRoot, err := unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(oldRoot)
	newRoot, err := unix.Open(root, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(newRoot)
	if err := unix.Fchdir(newRoot); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root %s: %w", root, err)
	}
	// The old root is now stacked on the new one; from inside it,
	// detach it and everything under it.
	if err := unix.Fchdir(oldRoot); err != nil {
		return err
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return unix.Chdir("/")
}

// checkProgram finds the program in the jail, a regular file that uid and
// gid may execute, while the jailer can still write the status file a
// failure needs.
func checkProgram(path string, uid, gid int) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w (inside the jail: bind it in with Spec.ReadOnly)", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	sys := st.Sys().(*syscall.Stat_t)
	bit := os.FileMode(0o001)
	switch {
	case int(sys.Uid) == uid:
		bit = 0o100
	case int(sys.Gid) == gid:
		bit = 0o010
	}
	if st.Mode().Perm()&bit == 0 {
		return fmt.Errorf("%s (mode %v, owner %d:%d) is not executable by uid %d gid %d", path, st.Mode().Perm(), sys.Uid, sys.Gid, uid, gid)
	}
	return nil
}

// dropPrivileges takes uid and gid with no supplementary groups, on every
// thread (the syscall package's set*id run on all of them), which clears
// every capability.
func dropPrivileges(uid, gid int) error {
	if err := syscall.Setgroups([]int{}); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for _, d := range data {
		if d.Effective != 0 || d.Permitted != 0 || d.Inheritable != 0 {
			return fmt.Errorf("capabilities left after the drop: %+v", data)
		}
	}
	return nil
}

// closeOnExecAbove2 marks every descriptor above 2 close-on-exec, so the
// program starts with stdin, stdout and stderr only, whatever the caller
// passed (ExtraFiles) or the jailer opened.
func closeOnExecAbove2() error {
	err := unix.CloseRange(3, math.MaxUint32, closeRangeCloexec)
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	// Before Linux 5.11: one fcntl per possible descriptor.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	for fd := 3; uint64(fd) < lim.Cur; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("fd %d: %w", fd, err)
		}
	}
	return nil
}
