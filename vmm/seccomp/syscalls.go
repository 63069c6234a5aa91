package seccomp

import "golang.org/x/sys/unix"

// kvmIOType is KVMIO (include/uapi/linux/kvm.h): the type byte, bits 8-15,
// of every KVM ioctl request.
const kvmIOType = 0xAE

// Clone flags (include/uapi/linux/sched.h) the thread rule tests.
const (
	cloneThread = unix.CLONE_THREAD
	// cloneNamespaces are the flags that would make new namespaces.
	cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
		unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET
)

// allow is a rule admitting every call of nr.
func allow(nr uintptr, name, why string) Rule { return Rule{Nr: nr, Name: name, Why: why} }

// VMMRules is kindling-vmm's allow-list from the moment its VM is built
// (KVM objects, guest memory, devices, the API and vsock listeners) until
// it exits: running vCPUs, serving the API (status, pause, resume, stop,
// metrics, snapshot, diff snapshot, working set), virtio-blk,
// virtio-vsock and virtio-net I/O, and the Go runtime under all of it,
// with or without cgo. pid is the process's own: signals may go only to
// its own threads.
//
// Derived by tracing (strace -f, every call after the filter's
// installation point) a boot, pause, resume, full and diff snapshots,
// metrics, a vsock connection and stop, then a restore with prefetch,
// a working-set record, snapshots and stop, of both a static
// (CGO_ENABLED=0, as `make build` builds it) and a cgo build, and the
// VMM-like work of this package's test (threads, GC, Unix connections
// out and in, snapshot-style files); then by running the tests that start
// kindling-vmm (vmm/launch, agent/host, cmd/kindling) and the in-process
// VMM tests (vmm, virtio-blk, virtio-vsock, api, memory, snapshot) under
// this list with SECCOMP_RET_LOG as the default action, and reading the
// kernel's log. A few calls nothing traced are allowed for paths too rare
// to trace (the Go runtime's crash and clock fallbacks, restart_syscall);
// each says why. The hottest calls come first. virtio-net's writev was
// added from its device test, which runs the device's receive, transmit,
// pause and close under this list (netdev.TestUnderVMMSeccompFilter).
//
// Not here, on purpose: anything that makes processes (fork, vfork,
// execve, clone without CLONE_THREAD), namespaces and mounts (unshare,
// setns, mount, pivot_root), credentials (set*id, capset), ptrace and
// process_vm_*, bpf, perf_event_open, keyctl, sockets other than AF_UNIX
// (no network: bind, listen and the API and vsock sockets are made before
// the filter; virtio-net's tap is attached before it too, and needs only
// read, writev and the poller after), and executable memory (mmap and
// mprotect with PROT_EXEC).
func VMMRules(pid int) []Rule {
	self := ArgEq32(0, uint32(pid))
	return []Rule{
		{Nr: unix.SYS_IOCTL, Name: "ioctl", Why: "KVM: KVM_RUN, register and device state, dirty logs, pause/snapshot/restore",
			Any: [][]Cond{ArgMasked32(1, 0xff00, kvmIOType<<8)}},
		allow(unix.SYS_FUTEX, "futex", "Go runtime: locks, notes, parking Ms"),
		allow(unix.SYS_EPOLL_PWAIT, "epoll_pwait", "Go runtime: the network poller (API and vsock sockets, the virtio-net tap)"),
		allow(unix.SYS_READ, "read", "API and vsock sockets, virtio-net frames from the tap, the poller's eventfd"),
		allow(unix.SYS_WRITE, "write", "API and vsock sockets, console, logs, snapshot files"),
		allow(unix.SYS_NANOSLEEP, "nanosleep", "Go runtime: usleep (sysmon, spinning)"),
		allow(unix.SYS_SCHED_YIELD, "sched_yield", "Go runtime: osyield"),
		// virtio-net transmit gathers a frame from guest memory into one
		// write: the tap takes one frame per call, header first.
		allow(unix.SYS_WRITEV, "writev", "virtio-net: frames to the tap (header and guest buffers gathered)"),
		allow(unix.SYS_PREAD64, "pread64", "virtio-blk reads; Go runtime: re-reading its cgroup's cpu.max"),
		allow(unix.SYS_PWRITE64, "pwrite64", "virtio-blk writes, snapshot memory file (WriteAt)"),
		{Nr: unix.SYS_TGKILL, Name: "tgkill", Why: "kicking vCPU threads out of KVM_RUN (SIGURG); Go runtime: preemption, raise",
			Any: [][]Cond{self}},
		allow(unix.SYS_GETTID, "gettid", "vCPU threads record their tid; Go runtime"),
		allow(unix.SYS_GETPID, "getpid", "Go runtime: signal forwarding; kicks"),
		allow(unix.SYS_RT_SIGRETURN, "rt_sigreturn", "return from every signal handler (SIGURG kicks and preemption)"),
		allow(unix.SYS_RT_SIGPROCMASK, "rt_sigprocmask", "Go runtime: new Ms, signal handling"),
		allow(unix.SYS_RT_SIGACTION, "rt_sigaction", "Go runtime: resetting a fatal signal's handler before dying of it (a crash stays a crash, not a SIGSYS)"),
		allow(unix.SYS_SIGALTSTACK, "sigaltstack", "Go runtime: every new M's signal stack"),
		{Nr: unix.SYS_MMAP, Name: "mmap", Why: "Go runtime heap and stacks; never executable",
			Any: [][]Cond{ArgMasked32(2, unix.PROT_EXEC, 0)}},
		{Nr: unix.SYS_MPROTECT, Name: "mprotect", Why: "cgo builds: thread stack guard pages; never executable",
			Any: [][]Cond{ArgMasked32(2, unix.PROT_EXEC, 0)}},
		allow(unix.SYS_MUNMAP, "munmap", "Go runtime; guest memory and snapshot mappings at exit"),
		allow(unix.SYS_MADVISE, "madvise", "Go runtime: returning memory; MADV_POPULATE_READ (prefetch)"),
		allow(unix.SYS_EPOLL_CTL, "epoll_ctl", "Go runtime: registering new sockets and files with the poller"),
		{Nr: unix.SYS_CLONE, Name: "clone", Why: "Go runtime and glibc: new threads (Ms) for vCPUs and blocked syscalls; threads only",
			Any: [][]Cond{{{Arg: 0, Mask: cloneThread | cloneNamespaces, Value: cloneThread}}}},
		// glibc 2.34+ makes threads with clone3, whose flags sit in memory
		// seccomp cannot read: ENOSYS makes it fall back to clone.
		{Nr: unix.SYS_CLONE3, Name: "clone3", Why: "refused with ENOSYS: glibc falls back to clone, which is checked",
			Action: Errno(unix.ENOSYS)},
		allow(unix.SYS_RSEQ, "rseq", "glibc (cgo builds): registers every new thread"),
		allow(unix.SYS_SET_ROBUST_LIST, "set_robust_list", "glibc (cgo builds): every new thread"),
		allow(unix.SYS_EXIT, "exit", "a thread ending (vCPU threads at stop, locked Ms)"),
		allow(unix.SYS_EXIT_GROUP, "exit_group", "the process ending"),
		{Nr: unix.SYS_KILL, Name: "kill", Why: "Go runtime: raiseproc on a crash, to itself only", Any: [][]Cond{self}},
		allow(unix.SYS_RESTART_SYSCALL, "restart_syscall", "the kernel restarting a sleep a signal interrupted"),
		allow(unix.SYS_CLOCK_GETTIME, "clock_gettime", "time, when the vDSO cannot serve it"),
		allow(unix.SYS_GETTIMEOFDAY, "gettimeofday", "time, when the vDSO cannot serve it"),
		allow(unix.SYS_GETRANDOM, "getrandom", "crypto/rand, should the VMM ever use it: harmless, and no reason to die"),
		allow(unix.SYS_SCHED_GETAFFINITY, "sched_getaffinity", "Go runtime: GOMAXPROCS updates (since Go 1.25 it re-reads affinity and cgroup CPU limits)"),
		allow(unix.SYS_CLOSE, "close", "sockets, files, KVM and memfd at exit"),
		{Nr: unix.SYS_SOCKET, Name: "socket", Why: "vsock: connections to the host's <uds>_<port> listeners; AF_UNIX only",
			Any: [][]Cond{ArgEq32(0, unix.AF_UNIX)}},
		allow(unix.SYS_CONNECT, "connect", "vsock: guest-initiated connections"),
		allow(unix.SYS_ACCEPT4, "accept4", "API and vsock listeners"),
		allow(unix.SYS_GETSOCKOPT, "getsockopt", "Go net: SO_ERROR when a non-blocking connect does not complete at once"),
		allow(unix.SYS_GETSOCKNAME, "getsockname", "Go net: addresses of new connections"),
		allow(unix.SYS_GETPEERNAME, "getpeername", "Go net: addresses of new connections"),
		allow(unix.SYS_SHUTDOWN, "shutdown", "vsock: half-closing host connections"),
		allow(unix.SYS_FCNTL, "fcntl", "Go os and net: flags of files and sockets"),
		allow(unix.SYS_OPENAT, "openat", "snapshot and working-set files; /proc/self/pagemap"),
		allow(unix.SYS_NEWFSTATAT, "newfstatat", "stat of snapshot directories and files"),
		allow(unix.SYS_FSTAT, "fstat", "Go os: ReadFile of snapshot and working-set files"),
		allow(unix.SYS_MKDIRAT, "mkdirat", "snapshot directories (MkdirAll)"),
		allow(unix.SYS_UNLINKAT, "unlinkat", "temporary snapshot files; the API socket at exit"),
		allow(unix.SYS_RENAMEAT, "renameat", "snapshot files put in place (os.Rename)"),
		allow(unix.SYS_FTRUNCATE, "ftruncate", "sparse snapshot memory files"),
		allow(unix.SYS_FSYNC, "fsync", "virtio-blk flush (File.Sync)"),
		allow(unix.SYS_GETCWD, "getcwd", "filepath.Abs of a relative snapshot directory, when $PWD does not answer"),
		allow(unix.SYS_GETDENTS64, "getdents64", "reading directories (os.RemoveAll, ReadDir)"),
	}
}
