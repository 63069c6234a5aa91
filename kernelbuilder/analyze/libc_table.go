package analyze

import "sort"

// How this table was made and checked. It was read from glibc 2.36-2.41
// (Debian 12 and 13) and verified on Debian 12's glibc
// 2.36-9+deb12u14 (`ldd --version`: "Debian GLIBC 2.36-9+deb12u14") in
// two ways:
//
//   - strace -f on small C programs that call one function between two
//     marker system calls (about 330 cases): printf, __printf_chk, puts,
//     fwrite, fflush, fopen/fgets/fread/getline/fclose, perror, scanf,
//     setvbuf, malloc of small and 1 MiB blocks, realloc, free,
//     pthread_create/join/detach/exit/cancel/kill, priority-inheritance
//     and priority-protect mutexes, getaddrinfo for "localhost", a
//     numeric host and an unresolvable DNS name, getnameinfo, getpwnam and
//     other NSS look-ups, socket/bind/listen, send/recv, sleep, usleep,
//     nanosleep, system, popen, posix_spawn, fork, vfork, daemon, the exec
//     family, raise, abort, __stack_chk_fail, __assert_fail, the stat
//     family, time and time zone functions, sysconf, syslog, setlocale,
//     dlopen, iconv_open, qsort, epoll/eventfd/timerfd/signalfd/inotify
//     and the plain wrappers;
//   - a call graph of libc.so.6 built with objdump and the libc6-dbg
//     symbols: the system calls reachable from each exported function
//     through direct calls, which finds error and rare paths the strace
//     runs miss (gettext's getcwd fallback, SIGFPE from a plural formula,
//     utmp locking) but not calls through function pointers (stdio
//     vtables, NSS modules), which the strace runs cover. Edges it reports
//     that cannot happen were left out: sysconf's whole switch reached
//     from a single constant, and priority-protect mutex code reached
//     from glibc's own recursive locks.
//
// Changes between 2.36 and 2.41 were folded in from the glibc sources:
// fstat uses the fstat system call from 2.39 (newfstatat with
// AT_EMPTY_PATH before), fchmodat tries fchmodat2 from 2.39, getrandom
// may set up vDSO state with mmap from 2.41, the C23 __isoc23_* entry
// points appear in 2.38, pidfd_spawn in 2.39, sched_setattr in 2.41.
//
// Conservative throughout: a function lists what any of its paths may
// call, including fallbacks for older kernels (clone3 -> clone, statx ->
// newfstatat, faccessat2 -> faccessat, renameat2 -> renameat), lazily
// loaded helpers (time zone files, message catalogs, NSS and gconv modules,
// libgcc_s for unwinding) and the abort path of glibc's own checks
// (malloc corruption, fortify, stack protector).
//
// Not covered: what user callbacks (qsort comparators, atexit and signal
// handlers) and NSS or gconv modules do once loaded beyond the calls
// observed above, and thread cancellation acting inside a cancellation
// point (that path is listed under pthread_cancel, which a program must
// import to cancel a thread).

// libcUnion merges sets of system call names into one sorted list
// without duplicates.
func libcUnion(sets ...[]string) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, s := range sets {
		for _, n := range s {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	sort.Strings(out)
	return out
}

// libcSyscalls maps an exported glibc function to the system calls (by the
// kernel's name in arch/x86/entry/syscalls/syscall_64.tbl, e.g. "newfstatat",
// "openat", "clone3", "rt_sigprocmask") it may make on x86-64, including through
// glibc's internal helpers. Read from glibc 2.36-2.41; conservative: when a
// function may fall back to an older call (clone3 -> clone, statx -> newfstatat), list both.
func libcSyscalls() map[string][]string {
	u := libcUnion
	l := func(names ...string) []string { return names }

	// abort(): block all signals, raise SIGABRT (gettid, getpid, tgkill),
	// then reset the handler, raise again and finally _exit(127). 2.41
	// takes a lock around it.
	abort := l("rt_sigprocmask", "rt_sigaction", "gettid", "getpid", "tgkill", "exit_group", "futex")
	// __libc_message/__libc_fatal: the "*** ... ***: terminated" and
	// "malloc(): corrupted ..." messages: writev (or write) to stderr, an
	// mmap'd copy of the message kept for core dumps, then abort().
	fatal := u(abort, l("write", "writev", "mmap", "munmap"))
	// malloc, free and friends: sbrk (brk), mmap'd chunks, non-main arenas
	// (mmap, mprotect, munmap, madvise; shrinking a heap reads
	// /proc/sys/vm/overcommit_memory: openat, read, close), the arena limit
	// (sched_getaffinity, or /sys/devices/system/cpu/online), the tcache
	// key (getrandom GRND_NONBLOCK on first use since 2.34, clock_gettime
	// fallback), realloc of mmap'd chunks (mremap), arena locks (futex),
	// and abort on detected corruption.
	malloc := u(fatal, l("brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
		"getrandom", "clock_gettime", "futex", "sched_getaffinity", "openat", "read", "close"))
	lock := l("futex")
	// Reading a file whole: open, fstat (newfstatat before 2.39), read, close.
	readFile := l("openat", "newfstatat", "fstat", "read", "lseek", "close")
	// Directory streams.
	dir := u(malloc, l("openat", "newfstatat", "fstat", "fcntl", "getdents64", "lseek", "close"))
	// raise(): signal the calling thread.
	raise := l("gettid", "getpid", "tgkill", "rt_sigprocmask", "futex")
	// Message catalogs (strerror, perror, gettext ...) once setlocale picked
	// a language: open, fstat, mmap or read the .mo file and the locale
	// alias file (sorted with qsort, which asks sysconf(_SC_PHYS_PAGES):
	// sysinfo); relative text domain directories use getcwd, whose
	// fallback walks directories; a plural formula dividing by zero
	// raises SIGFPE.
	gettext := u(malloc, readFile, dir, raise, l("mmap", "munmap", "getcwd", "sysinfo"))
	// Time zone: tzset reads TZ or /etc/localtime on first use (and
	// formats with asprintf).
	tz := u(malloc, readFile, gettext)
	// stdio: the first operation on a stream allocates its buffer after
	// fstat (newfstatat with AT_EMPTY_PATH up to 2.38, fstat from 2.39) and
	// for character devices isatty (ioctl TCGETS); stream locks use futex.
	stdio := u(malloc, l("newfstatat", "fstat", "ioctl", "futex"))
	out := u(stdio, l("write", "lseek"))
	in := u(stdio, l("read", "lseek"))
	// printf family: output plus %m (strerror, so message catalogs) and
	// work buffers for large widths, positional arguments and %ls.
	printf := u(out, gettext)
	sprintf := u(malloc, gettext)
	scanf := u(in, malloc)
	fopen := u(in, out, l("openat", "close", "fcntl"))
	// dlopen (also how NSS modules, gconv modules and libgcc_s are
	// loaded): ld.so maps the object and its dependencies.
	dlopen := u(malloc, readFile, l("pread64", "mmap", "mprotect", "munmap", "futex", "getcwd", "readlink"))
	// Unwinding (pthread_exit, pthread_cancel, backtrace) dlopens
	// libgcc_s.so.1 on first use.
	unwind := dlopen
	// gconv: wide and multibyte conversion for charsets that are not built
	// in loads a module (gconv-modules.cache, then dlopen).
	gconv := u(dlopen, readFile)
	// exit(): atexit handlers, TLS destructors, flushing and freeing stdio
	// buffers, then exit_group.
	exit := u(out, l("exit_group", "sched_yield"))
	// NSS (getpwnam, getgrnam, gethostbyname ...): nscd is tried first
	// (AF_UNIX socket, connect, send, poll, read/readv, recvmsg with a
	// passed fd that is mmap'd), then /etc/nsswitch.conf (stat, read) and
	// the files backend (fopen of /etc/passwd ...), then modules such as
	// libnss_systemd.so are dlopen'd (observed: prctl and rt_sigprocmask
	// from it).
	nss := u(dlopen, fopen, sprintf, l("socket", "connect", "close", "sendto", "poll", "read",
		"readv", "recvmsg", "mmap", "munmap", "uname", "rt_sigprocmask", "prctl"))
	// rtnetlink RTM_GETADDR/RTM_GETLINK dump (getifaddrs, if_nameindex,
	// getaddrinfo's AI_ADDRCONFIG check).
	netlink := u(sprintf, l("socket", "bind", "getsockname", "sendto", "recvmsg", "close"))
	// The DNS resolver: /etc/resolv.conf (stat, read), gethostname
	// (uname), UDP then TCP queries (socket, connect, setsockopt
	// IP_RECVERR, poll, sendmmsg or sendto/send/writev, recvfrom,
	// ioctl FIONREAD, read), the query id (clock_gettime/getrandom).
	dns := u(nss, readFile, l("socket", "connect", "bind", "setsockopt", "getsockname", "getpeername",
		"poll", "sendto", "sendmmsg", "writev", "recvfrom", "read", "ioctl", "fcntl", "close",
		"uname", "clock_gettime", "getrandom"))
	// getaddrinfo: NSS (files, dns, modules) plus the AI_ADDRCONFIG netlink
	// query, RFC 3484 sorting (a UDP socket, connect, getsockname per
	// result), /etc/gai.conf, interface scope ids (if_nametoindex: ioctl)
	// and IDN (dlopen of libidn2).
	gai := u(dns, netlink, readFile, l("ioctl"))
	// posix_spawn (and system, popen): a CLONE_VM|CLONE_VFORK child on an
	// mmap'd stack made with clone3 (clone as fallback); in the child,
	// signal dispositions and mask are reset, file actions and attributes
	// are applied (close, dup2, openat, chdir/fchdir, setsid, setpgid,
	// setuid/setgid, sched_*, close_range or a /proc/self/fd scan,
	// tcsetpgrp), then execve (through PATH for the p variants, /bin/sh for
	// ENOEXEC) or _exit(127).
	spawn := u(malloc, l("clone3", "clone", "mmap", "munmap", "rt_sigprocmask", "rt_sigaction",
		"execve", "exit_group", "exit", "wait4", "close", "dup2", "fcntl", "openat", "chdir", "fchdir", "setsid",
		"setpgid", "getuid", "getgid", "setuid", "setgid", "sched_setparam", "sched_setscheduler",
		"close_range", "getdents64", "newfstatat", "ioctl", "prlimit64"))
	// pthread_create: stack (mmap, mprotect for the guard, munmap and
	// madvise for cached stacks), the SIGCANCEL/SIGSETXID handler on first
	// use (rt_sigaction, rt_sigprocmask), clone3 (clone as fallback),
	// attributes (sched_setaffinity, sched_setscheduler, sched_getparam,
	// sched_getscheduler); the new thread registers set_robust_list and
	// rseq and ends with madvise of its stack and exit, or exit_group if
	// it was the last thread.
	thread := u(malloc, l("clone3", "clone", "mmap", "munmap", "mprotect", "madvise", "rt_sigaction",
		"rt_sigprocmask", "futex", "set_robust_list", "rseq", "exit", "exit_group",
		"sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_getparam", "sched_getscheduler"))
	// Thread exit: TLS destructors, unwinding (libgcc_s), futex wake of a
	// joiner, stack release.
	threadExit := u(unwind, malloc, l("futex", "madvise", "munmap", "exit", "exit_group"))
	// setuid and friends in a multi-threaded process signal every thread
	// (SIGSETXID: tgkill) and wait on a futex so all threads change.
	setxid := l("getpid", "tgkill", "futex", "rt_sigprocmask")
	// Mutex locking: futex; priority-protect mutexes change the thread's
	// priority (sched_*) and allocate bookkeeping.
	mutex := u(malloc, l("futex", "sched_getparam", "sched_getscheduler", "sched_setscheduler",
		"sched_get_priority_min", "sched_get_priority_max"))
	// Temporary names: getrandom for the random suffix (clock_gettime as
	// fallback), a stat probe for the name; tmpnam, tempnam and tmpfile
	// format the directory with sprintf.
	tmpname := l("getrandom", "clock_gettime", "newfstatat")
	tmpdir := u(tmpname, sprintf)
	// utmp/wtmp access: access to pick the file, open, lock with fcntl
	// under an alarm timeout, read/pread64, write, lseek, ftruncate to
	// undo a partial write.
	utmp := u(malloc, readFile, l("access", "fcntl", "alarm", "rt_sigaction", "setitimer", "write",
		"pread64", "ftruncate", "dup2"))
	// syslog: the time stamp (time zone), getpid, an AF_UNIX datagram
	// socket to /dev/log (reconnected as stream socket), send, and
	// /dev/console with LOG_CONS; SIGPIPE is ignored around the send.
	syslog := u(tz, malloc, l("getpid", "socket", "connect", "sendto", "close", "openat",
		"write", "writev", "rt_sigaction", "rt_sigprocmask", "futex", "clock_gettime"))
	// sysconf: CPU counts (sched_getaffinity, /sys/devices/system/cpu),
	// limits (prlimit64), memory (sysinfo), /proc/sys values.
	sysconf := u(malloc, dir, readFile, l("sched_getaffinity", "prlimit64", "sysinfo", "uname"))
	// Start-up of a dynamically linked program as glibc (ld.so plus
	// __libc_start_main) does it: brk, arch_prctl (TLS, CET), mapping the
	// libraries (access /etc/ld.so.preload, openat, read, pread64, fstat,
	// mmap, mprotect, munmap, close), set_tid_address, set_robust_list,
	// rseq, prlimit64 (RLIMIT_STACK), for set-id programs checking fds
	// 0-2 (fcntl, openat /dev/null), readlink /proc/self/exe for $ORIGIN,
	// then main and exit().
	start := u(exit, malloc, readFile, l("brk", "arch_prctl", "access", "openat", "read", "pread64",
		"newfstatat", "fstat", "mmap", "mprotect", "munmap", "close", "set_tid_address",
		"set_robust_list", "rseq", "prlimit64", "fcntl", "readlink", "uname", "exit_group"))
	// getrandom: the system call; 2.41 may use the vDSO with state mmap'd
	// once per thread.
	getrandom := l("getrandom", "mmap", "munmap", "futex")
	// arc4random: getrandom, falling back to /dev/urandom after polling
	// /dev/random.
	arc4random := u(getrandom, l("openat", "read", "poll", "close"))
	// Fortified (_chk) functions call __chk_fail on overflow.
	chk := fatal
	statx := l("statx", "newfstatat")
	fstat := l("fstat", "newfstatat")
	// faccessat: faccessat2, or without it faccessat, or for AT_EACCESS and
	// AT_SYMLINK_NOFOLLOW fstatat plus the credentials.
	faccessat := l("faccessat2", "faccessat", "newfstatat", "getuid", "geteuid", "getgid", "getegid", "getgroups")

	m := map[string][]string{
		// Start-up and exit.
		"__libc_start_main":        start,
		"exit":                     exit,
		"_exit":                    {"exit_group"},
		"_Exit":                    {"exit_group"},
		"quick_exit":               u(malloc, l("exit_group")),
		"atexit":                   u(malloc, lock),
		"__cxa_atexit":             u(malloc, lock),
		"at_quick_exit":            u(malloc, lock),
		"on_exit":                  u(malloc, lock),
		"__cxa_finalize":           lock,
		"__cxa_thread_atexit_impl": u(malloc, lock),
		"__register_atfork":        u(malloc, lock),
		"pthread_atfork":           u(malloc, lock),
		"abort":                    abort,
		"__stack_chk_fail":         fatal,
		"__chk_fail":               fatal,
		"__fortify_fail":           fatal,
		"__libc_fatal":             fatal,
		"__assert_fail":            u(fatal, sprintf, out),
		"__assert_perror_fail":     u(fatal, sprintf, out),
		"__assert":                 u(fatal, sprintf, out),
		"syscall":                  {},

		// stdio output.
		"printf":               printf,
		"vprintf":              printf,
		"fprintf":              printf,
		"vfprintf":             printf,
		"dprintf":              printf,
		"vdprintf":             printf,
		"__printf_chk":         u(printf, chk),
		"__vprintf_chk":        u(printf, chk),
		"__fprintf_chk":        u(printf, chk),
		"__vfprintf_chk":       u(printf, chk),
		"__dprintf_chk":        u(printf, chk),
		"__vdprintf_chk":       u(printf, chk),
		"wprintf":              u(printf, gconv),
		"fwprintf":             u(printf, gconv),
		"vfwprintf":            u(printf, gconv),
		"__fwprintf_chk":       u(printf, gconv, chk),
		"__wprintf_chk":        u(printf, gconv, chk),
		"puts":                 out,
		"fputs":                out,
		"fputs_unlocked":       out,
		"fputc":                out,
		"fputc_unlocked":       out,
		"putc":                 out,
		"putc_unlocked":        out,
		"_IO_putc":             out,
		"putchar":              out,
		"putchar_unlocked":     out,
		"putw":                 out,
		"fputwc":               u(out, gconv),
		"putwc":                u(out, gconv),
		"putwchar":             u(out, gconv),
		"fputws":               u(out, gconv),
		"fwrite":               out,
		"fwrite_unlocked":      out,
		"fflush":               out,
		"fflush_unlocked":      out,
		"__overflow":           out,
		"perror":               u(out, gettext, l("dup", "fcntl", "close")),
		"psignal":              u(out, gettext),
		"psiginfo":             u(out, gettext),
		"warn":                 u(out, gettext),
		"warnx":                u(out, gettext),
		"vwarn":                u(out, gettext),
		"vwarnx":               u(out, gettext),
		"err":                  u(exit, gettext),
		"errx":                 u(exit, gettext),
		"verr":                 u(exit, gettext),
		"verrx":                u(exit, gettext),
		"error":                u(exit, gettext),
		"error_at_line":        u(exit, gettext),
		"malloc_stats":         u(printf, malloc),
		"backtrace":            unwind,
		"backtrace_symbols":    u(sprintf, lock),
		"backtrace_symbols_fd": u(l("write", "writev"), lock),

		// stdio input.
		"fgets":                in,
		"__fgets_chk":          u(in, chk),
		"fgets_unlocked":       in,
		"fgetc":                in,
		"fgetc_unlocked":       in,
		"getc":                 in,
		"getc_unlocked":        in,
		"_IO_getc":             in,
		"getchar":              in,
		"getchar_unlocked":     in,
		"getw":                 in,
		"__uflow":              in,
		"__underflow":          in,
		"fgetwc":               u(in, gconv),
		"getwc":                u(in, gconv),
		"getwchar":             u(in, gconv),
		"fgetws":               u(in, gconv),
		"fread":                in,
		"fread_unlocked":       in,
		"__fread_chk":          u(in, chk),
		"__fread_unlocked_chk": u(in, chk),
		"getline":              in,
		"getdelim":             in,
		"__getdelim":           in,
		"ungetc":               u(malloc, lock),
		"scanf":                scanf,
		"vscanf":               scanf,
		"fscanf":               scanf,
		"vfscanf":              scanf,
		"__isoc99_scanf":       scanf,
		"__isoc99_vscanf":      scanf,
		"__isoc99_fscanf":      scanf,
		"__isoc99_vfscanf":     scanf,
		"__isoc23_scanf":       scanf,
		"__isoc23_vscanf":      scanf,
		"__isoc23_fscanf":      scanf,
		"__isoc23_vfscanf":     scanf,

		// Formatting into memory: no I/O, but work buffers (malloc) and %m.
		"sprintf":          sprintf,
		"snprintf":         sprintf,
		"vsprintf":         sprintf,
		"vsnprintf":        sprintf,
		"__sprintf_chk":    u(sprintf, chk),
		"__snprintf_chk":   u(sprintf, chk),
		"__vsprintf_chk":   u(sprintf, chk),
		"__vsnprintf_chk":  u(sprintf, chk),
		"asprintf":         sprintf,
		"vasprintf":        sprintf,
		"__asprintf_chk":   u(sprintf, chk),
		"__vasprintf_chk":  u(sprintf, chk),
		"swprintf":         u(sprintf, gconv),
		"vswprintf":        u(sprintf, gconv),
		"__swprintf_chk":   u(sprintf, gconv, chk),
		"sscanf":           malloc,
		"vsscanf":          malloc,
		"__isoc99_sscanf":  malloc,
		"__isoc99_vsscanf": malloc,
		"__isoc23_sscanf":  malloc,
		"__isoc23_vsscanf": malloc,
		"swscanf":          u(malloc, gconv),
		"open_memstream":   u(malloc, lock),
		"open_wmemstream":  u(malloc, lock),
		"fmemopen":         u(malloc, lock),
		"fopencookie":      u(malloc, lock),
		"strfromd":         malloc,
		"strfromf":         malloc,
		"inet_ntop":        sprintf,
		"inet_ntoa":        sprintf,

		// Streams.
		"fopen":        fopen,
		"fopen64":      fopen,
		"freopen":      u(fopen, l("dup3", "dup2")),
		"freopen64":    u(fopen, l("dup3", "dup2")),
		"fdopen":       u(malloc, lock, l("fcntl", "lseek")),
		"fclose":       u(out, l("close", "munmap")),
		"fcloseall":    u(exit, l("close", "munmap")),
		"fseek":        u(out, in),
		"fseeko":       u(out, in),
		"fseeko64":     u(out, in),
		"ftell":        u(malloc, l("lseek")),
		"ftello":       u(malloc, l("lseek")),
		"ftello64":     u(malloc, l("lseek")),
		"rewind":       u(out, in),
		"fgetpos":      u(malloc, l("lseek")),
		"fgetpos64":    u(malloc, l("lseek")),
		"fsetpos":      u(out, in),
		"fsetpos64":    u(out, in),
		"feof":         lock,
		"ferror":       lock,
		"clearerr":     lock,
		"flockfile":    lock,
		"funlockfile":  lock,
		"ftrylockfile": lock,
		"setvbuf":      stdio,
		"setbuf":       stdio,
		"setbuffer":    stdio,
		"setlinebuf":   stdio,
		"__fpurge":     u(malloc, lock),
		"popen":        u(spawn, malloc, lock, l("pipe2", "pipe", "wait4")),
		"pclose":       u(out, l("close", "wait4")),
		"system":       u(spawn, lock, l("wait4")),
		"tmpfile":      u(fopen, tmpdir, l("unlink")),
		"tmpfile64":    u(fopen, tmpdir, l("unlink")),
		"tmpnam":       tmpdir,
		"tmpnam_r":     tmpdir,
		"tempnam":      u(malloc, tmpdir),
		"mktemp":       tmpname,
		"mkstemp":      u(tmpname, l("openat")),
		"mkstemp64":    u(tmpname, l("openat")),
		"mkstemps":     u(tmpname, l("openat")),
		"mkostemp":     u(tmpname, l("openat")),
		"mkostemps":    u(tmpname, l("openat")),
		"mkdtemp":      u(tmpname, l("mkdir")),

		// Memory allocation.
		"malloc":                  malloc,
		"calloc":                  malloc,
		"realloc":                 malloc,
		"reallocarray":            malloc,
		"free":                    malloc,
		"cfree":                   malloc,
		"posix_memalign":          malloc,
		"aligned_alloc":           malloc,
		"memalign":                malloc,
		"valloc":                  malloc,
		"pvalloc":                 malloc,
		"malloc_trim":             malloc,
		"mallopt":                 malloc,
		"mallinfo":                malloc,
		"mallinfo2":               malloc,
		"malloc_info":             u(malloc, printf),
		"strdup":                  malloc,
		"__strdup":                malloc,
		"strndup":                 malloc,
		"__strndup":               malloc,
		"wcsdup":                  malloc,
		"qsort":                   u(malloc, l("sysinfo")),
		"qsort_r":                 u(malloc, l("sysinfo")),
		"setenv":                  u(malloc, lock),
		"putenv":                  u(malloc, lock),
		"unsetenv":                lock,
		"clearenv":                u(malloc, lock),
		"fnmatch":                 malloc,
		"regcomp":                 malloc,
		"regexec":                 malloc,
		"regfree":                 malloc,
		"getopt":                  printf,
		"getopt_long":             printf,
		"getopt_long_only":        printf,
		"strerror":                gettext,
		"strerror_r":              gettext,
		"__xpg_strerror_r":        gettext,
		"strerror_l":              gettext,
		"strsignal":               u(sprintf, gettext),
		"gai_strerror":            gettext,
		"gettext":                 gettext,
		"dgettext":                gettext,
		"dcgettext":               gettext,
		"ngettext":                gettext,
		"dngettext":               gettext,
		"dcngettext":              gettext,
		"textdomain":              u(malloc, lock),
		"bindtextdomain":          u(malloc, lock),
		"bind_textdomain_codeset": u(malloc, lock),
		"rand":                    lock,
		"srand":                   lock,
		"random":                  lock,
		"srandom":                 lock,
		"initstate":               lock,
		"setstate":                lock,
		"strfry":                  {"clock_gettime"},

		// Locale, character sets, dynamic loading.
		"setlocale":       u(gettext, gconv, lock),
		"newlocale":       u(gettext, gconv, lock),
		"duplocale":       u(malloc, lock),
		"freelocale":      u(malloc, lock),
		"catopen":         u(gettext, gconv, readFile, l("mmap", "munmap")),
		"catgets":         lock,
		"catclose":        u(malloc, l("munmap")),
		"iconv_open":      u(gconv, lock),
		"iconv_close":     u(malloc, lock, l("munmap")),
		"mbrtowc":         gconv,
		"mbtowc":          gconv,
		"mbstowcs":        gconv,
		"__mbstowcs_chk":  u(gconv, chk),
		"mbsrtowcs":       gconv,
		"mbsnrtowcs":      gconv,
		"mblen":           gconv,
		"mbrlen":          gconv,
		"wcrtomb":         gconv,
		"wctomb":          gconv,
		"wcstombs":        gconv,
		"__wcstombs_chk":  u(gconv, chk),
		"wcsrtombs":       gconv,
		"wcsnrtombs":      gconv,
		"btowc":           gconv,
		"wctob":           gconv,
		"dlopen":          dlopen,
		"dlmopen":         dlopen,
		"dlclose":         u(malloc, l("munmap", "futex")),
		"dlsym":           u(malloc, lock),
		"dlvsym":          u(malloc, lock),
		"dlerror":         u(sprintf, lock),
		"dladdr":          lock,
		"dladdr1":         lock,
		"dl_iterate_phdr": lock,

		// Basic file I/O.
		"open":              {"openat"},
		"open64":            {"openat"},
		"__open_2":          u(l("openat"), chk),
		"__open64_2":        u(l("openat"), chk),
		"openat":            {"openat"},
		"openat64":          {"openat"},
		"__openat_2":        u(l("openat"), chk),
		"__openat64_2":      u(l("openat"), chk),
		"creat":             {"creat", "openat"},
		"creat64":           {"creat", "openat"},
		"close":             {"close"},
		"close_range":       {"close_range"},
		"closefrom":         u(dir, l("close_range", "close")),
		"read":              {"read"},
		"__read_chk":        u(l("read"), chk),
		"write":             {"write"},
		"pread":             {"pread64"},
		"pread64":           {"pread64"},
		"__pread_chk":       u(l("pread64"), chk),
		"__pread64_chk":     u(l("pread64"), chk),
		"pwrite":            {"pwrite64"},
		"pwrite64":          {"pwrite64"},
		"readv":             {"readv"},
		"writev":            {"writev"},
		"preadv":            {"preadv"},
		"preadv64":          {"preadv"},
		"pwritev":           {"pwritev"},
		"pwritev64":         {"pwritev"},
		"preadv2":           {"preadv2", "preadv", "readv"},
		"pwritev2":          {"pwritev2", "pwritev", "writev"},
		"lseek":             {"lseek"},
		"lseek64":           {"lseek"},
		"dup":               {"dup"},
		"dup2":              {"dup2", "fcntl"},
		"dup3":              {"dup3"},
		"pipe":              {"pipe", "pipe2"},
		"pipe2":             {"pipe2"},
		"fcntl":             {"fcntl"},
		"fcntl64":           {"fcntl"},
		"ioctl":             {"ioctl"},
		"flock":             {"flock"},
		"lockf":             {"fcntl", "getpid"},
		"lockf64":           {"fcntl", "getpid"},
		"fsync":             {"fsync"},
		"fdatasync":         {"fdatasync"},
		"sync":              {"sync"},
		"syncfs":            {"syncfs"},
		"sync_file_range":   {"sync_file_range"},
		"truncate":          {"truncate"},
		"truncate64":        {"truncate"},
		"ftruncate":         {"ftruncate"},
		"ftruncate64":       {"ftruncate"},
		"fallocate":         {"fallocate"},
		"fallocate64":       {"fallocate"},
		"posix_fallocate":   u(fstat, l("fallocate", "fstatfs", "fcntl", "ftruncate", "pread64", "pwrite64")),
		"posix_fallocate64": u(fstat, l("fallocate", "fstatfs", "fcntl", "ftruncate", "pread64", "pwrite64")),
		"posix_fadvise":     {"fadvise64"},
		"posix_fadvise64":   {"fadvise64"},
		"readahead":         {"readahead"},
		"sendfile":          {"sendfile"},
		"sendfile64":        {"sendfile"},
		"copy_file_range":   {"copy_file_range"},
		"splice":            {"splice"},
		"tee":               {"tee"},
		"vmsplice":          {"vmsplice"},
		"getdents64":        {"getdents64"},
		"isatty":            {"ioctl"},
		"ttyname":           u(dir, l("ioctl", "readlink")),
		"ttyname_r":         u(dir, l("ioctl", "readlink")),
		"__ttyname_r_chk":   u(dir, l("ioctl", "readlink"), chk),
		"tcgetattr":         {"ioctl"},
		"tcsetattr":         {"ioctl"},
		"tcflush":           {"ioctl"},
		"tcdrain":           {"ioctl"},
		"tcflow":            {"ioctl"},
		"tcsendbreak":       {"ioctl"},
		"tcgetpgrp":         {"ioctl"},
		"tcsetpgrp":         {"ioctl"},
		"tcgetsid":          {"ioctl", "getsid"},
		"posix_openpt":      {"openat"},
		"getpt":             {"openat"},
		"grantpt":           {"ioctl"},
		"unlockpt":          {"ioctl"},
		"ptsname":           {"ioctl"},
		"ptsname_r":         {"ioctl"},
		"openpty":           u(malloc, l("openat", "ioctl", "close")),
		"login_tty":         {"setsid", "ioctl", "dup2", "close", "openat"},
		"forkpty":           u(malloc, l("openat", "ioctl", "close", "clone", "set_robust_list", "futex", "setsid", "dup2")),

		// Files and directories.
		"stat":      {"newfstatat"},
		"stat64":    {"newfstatat"},
		"lstat":     {"newfstatat"},
		"lstat64":   {"newfstatat"},
		"fstatat":   {"newfstatat"},
		"fstatat64": {"newfstatat"},
		"fstat":     fstat,
		"fstat64":   fstat,
		// The pre-2.33 compatibility entry points use the old calls.
		"__xstat":                {"stat", "newfstatat"},
		"__xstat64":              {"stat", "newfstatat"},
		"__lxstat":               {"lstat", "newfstatat"},
		"__lxstat64":             {"lstat", "newfstatat"},
		"__fxstat":               fstat,
		"__fxstat64":             fstat,
		"__fxstatat":             {"newfstatat"},
		"__fxstatat64":           {"newfstatat"},
		"statx":                  statx,
		"statfs":                 {"statfs"},
		"statfs64":               {"statfs"},
		"fstatfs":                {"fstatfs"},
		"fstatfs64":              {"fstatfs"},
		"statvfs":                {"statfs"},
		"statvfs64":              {"statfs"},
		"fstatvfs":               {"fstatfs"},
		"fstatvfs64":             {"fstatfs"},
		"pathconf":               u(fopen, sprintf, readFile, l("statfs", "access", "readlink")),
		"fpathconf":              u(fopen, sprintf, readFile, l("fstatfs", "access", "readlink")),
		"access":                 {"access"},
		"faccessat":              faccessat,
		"euidaccess":             u(faccessat, l("access")),
		"eaccess":                u(faccessat, l("access")),
		"unlink":                 {"unlink"},
		"unlinkat":               {"unlinkat"},
		"remove":                 {"unlink", "rmdir"},
		"rmdir":                  {"rmdir"},
		"mkdir":                  {"mkdir"},
		"mkdirat":                {"mkdirat"},
		"rename":                 {"rename"},
		"renameat":               {"renameat"},
		"renameat2":              {"renameat2", "renameat"},
		"link":                   {"link"},
		"linkat":                 {"linkat"},
		"symlink":                {"symlink"},
		"symlinkat":              {"symlinkat"},
		"readlink":               {"readlink"},
		"__readlink_chk":         u(l("readlink"), chk),
		"readlinkat":             {"readlinkat"},
		"__readlinkat_chk":       u(l("readlinkat"), chk),
		"chdir":                  {"chdir"},
		"fchdir":                 {"fchdir"},
		"chroot":                 {"chroot"},
		"getcwd":                 u(malloc, dir, l("getcwd")),
		"__getcwd_chk":           u(malloc, dir, l("getcwd"), chk),
		"getwd":                  u(dir, gettext, l("getcwd")),
		"get_current_dir_name":   u(malloc, dir, l("getcwd")),
		"realpath":               u(malloc, dir, faccessat, l("readlink", "getcwd")),
		"__realpath_chk":         u(malloc, dir, faccessat, l("readlink", "getcwd"), chk),
		"canonicalize_file_name": u(malloc, dir, faccessat, l("readlink", "getcwd")),
		"chmod":                  {"chmod"},
		"fchmod":                 {"fchmod"},
		"fchmodat":               {"fchmodat2", "fchmodat", "openat", "newfstatat", "chmod", "close"},
		"lchmod":                 {"fchmodat2", "fchmodat", "openat", "newfstatat", "chmod", "close"},
		"chown":                  {"chown"},
		"fchown":                 {"fchown"},
		"lchown":                 {"lchown"},
		"fchownat":               {"fchownat"},
		"umask":                  {"umask"},
		"mknod":                  {"mknodat"},
		"mknodat":                {"mknodat"},
		"mkfifo":                 {"mknodat"},
		"mkfifoat":               {"mknodat"},
		"utime":                  {"utimensat"},
		"utimes":                 {"utimensat"},
		"futimes":                {"utimensat"},
		"lutimes":                {"utimensat"},
		"futimens":               {"utimensat"},
		"utimensat":              {"utimensat"},
		"futimesat":              {"utimensat"},
		"getxattr":               {"getxattr"},
		"lgetxattr":              {"lgetxattr"},
		"fgetxattr":              {"fgetxattr"},
		"setxattr":               {"setxattr"},
		"lsetxattr":              {"lsetxattr"},
		"fsetxattr":              {"fsetxattr"},
		"listxattr":              {"listxattr"},
		"llistxattr":             {"llistxattr"},
		"flistxattr":             {"flistxattr"},
		"removexattr":            {"removexattr"},
		"lremovexattr":           {"lremovexattr"},
		"fremovexattr":           {"fremovexattr"},
		"opendir":                dir,
		"fdopendir":              dir,
		"readdir":                u(l("getdents64"), lock),
		"readdir64":              u(l("getdents64"), lock),
		"readdir_r":              u(l("getdents64"), lock),
		"readdir64_r":            u(l("getdents64"), lock),
		"closedir":               u(malloc, l("close")),
		"rewinddir":              u(l("lseek"), lock),
		"seekdir":                u(l("lseek"), lock),
		"scandir":                u(dir, l("sysinfo")),
		"scandir64":              u(dir, l("sysinfo")),
		"scandirat":              u(dir, l("sysinfo")),
		"glob":                   u(dir, nss, utmp, l("sysinfo", "ioctl", "readlink")),
		"glob64":                 u(dir, nss, utmp, l("sysinfo", "ioctl", "readlink")),
		"globfree":               malloc,
		"globfree64":             malloc,
		"ftw":                    u(dir, l("chdir", "fchdir", "getcwd", "readlink")),
		"ftw64":                  u(dir, l("chdir", "fchdir", "getcwd", "readlink")),
		"nftw":                   u(dir, l("chdir", "fchdir", "getcwd", "readlink")),
		"nftw64":                 u(dir, l("chdir", "fchdir", "getcwd", "readlink")),
		"fts_open":               u(dir, l("fchdir", "chdir", "sysinfo")),
		"fts_read":               u(dir, l("fchdir", "chdir", "sysinfo")),
		"fts_children":           u(dir, l("fchdir", "chdir", "sysinfo")),
		"fts_close":              u(dir, l("fchdir", "chdir", "sysinfo")),
		"shm_open":               u(sprintf, l("openat")),
		"shm_unlink":             u(sprintf, l("unlink")),
		"sem_open":               u(sprintf, tmpname, readFile, l("write", "mmap", "munmap", "link", "unlink")),
		"sem_close":              u(malloc, l("munmap")),
		"sem_unlink":             u(sprintf, l("unlink")),
		"memfd_create":           {"memfd_create"},
		"name_to_handle_at":      {"name_to_handle_at"},
		"open_by_handle_at":      {"open_by_handle_at"},
		"inotify_init":           {"inotify_init"},
		"inotify_init1":          {"inotify_init1"},
		"inotify_add_watch":      {"inotify_add_watch"},
		"inotify_rm_watch":       {"inotify_rm_watch"},
		"fanotify_init":          {"fanotify_init"},
		"fanotify_mark":          {"fanotify_mark"},
		"mount":                  {"mount"},
		"umount":                 {"umount2"},
		"umount2":                {"umount2"},
		"fsopen":                 {"fsopen"},
		"fsmount":                {"fsmount"},
		"fsconfig":               {"fsconfig"},
		"fspick":                 {"fspick"},
		"open_tree":              {"open_tree"},
		"move_mount":             {"move_mount"},
		"mount_setattr":          {"mount_setattr"},
		"swapon":                 {"swapon"},
		"swapoff":                {"swapoff"},

		// Memory mapping.
		"mmap":              {"mmap"},
		"mmap64":            {"mmap"},
		"munmap":            {"munmap"},
		"mprotect":          {"mprotect"},
		"mremap":            {"mremap"},
		"msync":             {"msync"},
		"madvise":           {"madvise"},
		"posix_madvise":     {"madvise"},
		"mincore":           {"mincore"},
		"mlock":             {"mlock"},
		"mlock2":            {"mlock2", "mlock"},
		"munlock":           {"munlock"},
		"mlockall":          {"mlockall"},
		"munlockall":        {"munlockall"},
		"brk":               {"brk"},
		"sbrk":              {"brk"},
		"pkey_alloc":        {"pkey_alloc"},
		"pkey_free":         {"pkey_free"},
		"pkey_mprotect":     {"pkey_mprotect", "mprotect"},
		"process_madvise":   {"process_madvise"},
		"process_mrelease":  {"process_mrelease"},
		"process_vm_readv":  {"process_vm_readv"},
		"process_vm_writev": {"process_vm_writev"},

		// Processes.
		// fork uses clone, not clone3; the child resets its robust list.
		"fork":                   u(lock, l("clone", "set_robust_list")),
		"_Fork":                  {"clone", "set_robust_list"},
		"vfork":                  {"vfork"},
		"execve":                 {"execve"},
		"execv":                  {"execve"},
		"execvp":                 u(malloc, l("execve")),
		"execvpe":                u(malloc, l("execve")),
		"execl":                  {"execve"},
		"execle":                 {"execve"},
		"execlp":                 u(malloc, l("execve")),
		"fexecve":                {"execveat", "execve", "newfstatat"},
		"execveat":               {"execveat"},
		"posix_spawn":            spawn,
		"posix_spawnp":           spawn,
		"pidfd_spawn":            spawn,
		"pidfd_spawnp":           spawn,
		"wait":                   {"wait4"},
		"waitpid":                {"wait4"},
		"wait3":                  {"wait4"},
		"wait4":                  {"wait4"},
		"waitid":                 {"waitid"},
		"daemon":                 u(lock, l("clone", "set_robust_list", "setsid", "chdir", "openat", "newfstatat", "fstat", "dup2", "close", "exit_group")),
		"getpid":                 {"getpid"},
		"getppid":                {"getppid"},
		"gettid":                 {"gettid"},
		"getuid":                 {"getuid"},
		"geteuid":                {"geteuid"},
		"getgid":                 {"getgid"},
		"getegid":                {"getegid"},
		"getresuid":              {"getresuid"},
		"getresgid":              {"getresgid"},
		"getgroups":              {"getgroups"},
		"__getgroups_chk":        u(l("getgroups"), chk),
		"getpgrp":                {"getpgrp"},
		"getpgid":                {"getpgid"},
		"getsid":                 {"getsid"},
		"setpgid":                {"setpgid"},
		"setpgrp":                {"setpgid"},
		"setsid":                 {"setsid"},
		"setuid":                 u(setxid, l("setuid")),
		"setgid":                 u(setxid, l("setgid")),
		"seteuid":                u(setxid, l("setresuid")),
		"setegid":                u(setxid, l("setresgid")),
		"setreuid":               u(setxid, l("setreuid")),
		"setregid":               u(setxid, l("setregid")),
		"setresuid":              u(setxid, l("setresuid")),
		"setresgid":              u(setxid, l("setresgid")),
		"setgroups":              u(setxid, l("setgroups")),
		"setfsuid":               {"setfsuid"},
		"setfsgid":               {"setfsgid"},
		"initgroups":             u(nss, setxid, l("setgroups")),
		"getrlimit":              {"prlimit64"},
		"getrlimit64":            {"prlimit64"},
		"setrlimit":              {"prlimit64"},
		"setrlimit64":            {"prlimit64"},
		"prlimit":                {"prlimit64"},
		"prlimit64":              {"prlimit64"},
		"getdtablesize":          {"prlimit64"},
		"ulimit":                 sysconf,
		"getrusage":              {"getrusage"},
		"times":                  {"times"},
		"getpriority":            {"getpriority"},
		"setpriority":            {"setpriority"},
		"nice":                   {"getpriority", "setpriority"},
		"prctl":                  {"prctl"},
		"arch_prctl":             {"arch_prctl"},
		"personality":            {"personality"},
		"ptrace":                 {"ptrace"},
		"unshare":                {"unshare"},
		"setns":                  {"setns"},
		"capget":                 {"capget"},
		"capset":                 {"capset"},
		"reboot":                 {"reboot"},
		"acct":                   {"acct"},
		"klogctl":                {"syslog"},
		"vhangup":                {"vhangup"},
		"ioperm":                 {"ioperm"},
		"iopl":                   {"iopl"},
		"quotactl":               {"quotactl"},
		"init_module":            {"init_module"},
		"delete_module":          {"delete_module"},
		"pidfd_open":             {"pidfd_open"},
		"pidfd_getfd":            {"pidfd_getfd"},
		"pidfd_send_signal":      {"pidfd_send_signal"},
		"pidfd_getpid":           u(readFile, l("openat", "read", "close")),
		"sched_yield":            {"sched_yield"},
		"sched_getaffinity":      {"sched_getaffinity"},
		"sched_setaffinity":      {"sched_setaffinity"},
		"sched_getparam":         {"sched_getparam"},
		"sched_setparam":         {"sched_setparam"},
		"sched_getscheduler":     {"sched_getscheduler"},
		"sched_setscheduler":     {"sched_setscheduler"},
		"sched_get_priority_max": {"sched_get_priority_max"},
		"sched_get_priority_min": {"sched_get_priority_min"},
		"sched_rr_get_interval":  {"sched_rr_get_interval"},
		"sched_getattr":          {"sched_getattr"},
		"sched_setattr":          {"sched_setattr"},
		// sched_getcpu reads the rseq area; getcpu (vDSO first) otherwise.
		"sched_getcpu": {"getcpu"},
		"getcpu":       {"getcpu"},

		// System information.
		"uname":              {"uname"},
		"gethostname":        {"uname"},
		"__gethostname_chk":  u(l("uname"), chk),
		"getdomainname":      {"uname"},
		"sethostname":        {"sethostname"},
		"setdomainname":      {"setdomainname"},
		"sysinfo":            {"sysinfo"},
		"sysconf":            sysconf,
		"__sysconf":          sysconf,
		"confstr":            sysconf,
		"get_nprocs":         u(readFile, l("sched_getaffinity")),
		"get_nprocs_conf":    u(dir, readFile),
		"get_phys_pages":     {"sysinfo"},
		"get_avphys_pages":   {"sysinfo"},
		"getrandom":          getrandom,
		"getentropy":         getrandom,
		"arc4random":         arc4random,
		"arc4random_buf":     arc4random,
		"arc4random_uniform": arc4random,
		"getlogin":           u(nss, utmp, dir, l("ioctl", "readlink")),
		"getlogin_r":         u(nss, utmp, dir, l("ioctl", "readlink")),
		"cuserid":            u(nss, l("geteuid")),
		"getusershell":       fopen,

		// Time.
		"time":                {"time"},
		"gettimeofday":        {"gettimeofday"},
		"clock_gettime":       {"clock_gettime"},
		"clock_getres":        {"clock_getres"},
		"clock":               {"clock_gettime"},
		"clock_settime":       {"clock_settime"},
		"clock_getcpuclockid": {"clock_getres"},
		"settimeofday":        {"settimeofday", "clock_settime"},
		"adjtime":             {"clock_adjtime"},
		"adjtimex":            {"clock_adjtime"},
		"ntp_adjtime":         {"clock_adjtime"},
		"clock_adjtime":       {"clock_adjtime"},
		"ntp_gettime":         {"clock_adjtime"},
		"ntp_gettimex":        {"clock_adjtime"},
		"sleep":               {"clock_nanosleep"},
		"usleep":              {"clock_nanosleep"},
		"nanosleep":           {"clock_nanosleep"},
		"clock_nanosleep":     {"clock_nanosleep"},
		"alarm":               {"alarm"},
		"ualarm":              {"setitimer"},
		"setitimer":           {"setitimer"},
		"getitimer":           {"getitimer"},
		"timer_create":        u(thread, l("timer_create", "gettid")),
		"timer_delete":        u(malloc, l("timer_delete")),
		"timer_settime":       {"timer_settime"},
		"timer_gettime":       {"timer_gettime"},
		"timer_getoverrun":    {"timer_getoverrun"},
		"tzset":               tz,
		"localtime":           tz,
		"localtime_r":         tz,
		"gmtime":              tz,
		"gmtime_r":            tz,
		"mktime":              tz,
		"timelocal":           tz,
		"timegm":              tz,
		"ctime":               tz,
		"ctime_r":             tz,
		"strftime":            tz,
		"strftime_l":          tz,
		"wcsftime":            tz,
		"strptime":            tz,
		"getdate":             u(tz, fopen, l("access")),

		// Signals. Handlers installed by sigaction return through
		// __restore_rt, which makes rt_sigreturn.
		"signal":          {"rt_sigaction", "rt_sigreturn"},
		"sigaction":       {"rt_sigaction", "rt_sigreturn"},
		"__sysv_signal":   {"rt_sigaction", "rt_sigreturn"},
		"sysv_signal":     {"rt_sigaction", "rt_sigreturn"},
		"bsd_signal":      {"rt_sigaction", "rt_sigreturn"},
		"siginterrupt":    {"rt_sigaction", "rt_sigreturn"},
		"sigset":          {"rt_sigaction", "rt_sigprocmask", "rt_sigreturn"},
		"sigignore":       {"rt_sigaction"},
		"sigprocmask":     {"rt_sigprocmask"},
		"pthread_sigmask": {"rt_sigprocmask"},
		"sighold":         {"rt_sigprocmask"},
		"sigrelse":        {"rt_sigprocmask"},
		"sigblock":        {"rt_sigprocmask"},
		"sigsetmask":      {"rt_sigprocmask"},
		"siggetmask":      {"rt_sigprocmask"},
		"sigsuspend":      {"rt_sigsuspend"},
		"sigpause":        {"rt_sigsuspend", "rt_sigprocmask"},
		"__sigpause":      {"rt_sigsuspend", "rt_sigprocmask"},
		"sigpending":      {"rt_sigpending"},
		"sigwait":         {"rt_sigtimedwait"},
		"sigwaitinfo":     {"rt_sigtimedwait"},
		"sigtimedwait":    {"rt_sigtimedwait"},
		"sigqueue":        {"rt_sigqueueinfo", "getpid", "getuid"},
		"sigaltstack":     {"sigaltstack"},
		"kill":            {"kill"},
		"killpg":          {"kill"},
		"tgkill":          {"tgkill"},
		"raise":           raise,
		"gsignal":         raise,
		"pause":           {"pause"},
		"setjmp":          {"rt_sigprocmask"},
		"__sigsetjmp":     {"rt_sigprocmask"},
		"longjmp":         {"rt_sigprocmask"},
		"siglongjmp":      {"rt_sigprocmask"},
		"_longjmp":        {"rt_sigprocmask"},
		"__longjmp_chk":   u(l("rt_sigprocmask", "sigaltstack"), chk),
		"signalfd":        {"signalfd4"},

		// Polling and event descriptors.
		"poll":            {"poll"},
		"__poll_chk":      u(l("poll"), chk),
		"ppoll":           {"ppoll"},
		"__ppoll_chk":     u(l("ppoll"), chk),
		"select":          {"pselect6", "select"},
		"pselect":         {"pselect6"},
		"__fdelt_chk":     chk,
		"epoll_create":    {"epoll_create"},
		"epoll_create1":   {"epoll_create1"},
		"epoll_ctl":       {"epoll_ctl"},
		"epoll_wait":      {"epoll_wait"},
		"epoll_pwait":     {"epoll_pwait"},
		"epoll_pwait2":    {"epoll_pwait2"},
		"eventfd":         {"eventfd2"},
		"eventfd_read":    {"read"},
		"eventfd_write":   {"write"},
		"timerfd_create":  {"timerfd_create"},
		"timerfd_settime": {"timerfd_settime"},
		"timerfd_gettime": {"timerfd_gettime"},

		// Sockets.
		"socket":           {"socket"},
		"socketpair":       {"socketpair"},
		"bind":             {"bind"},
		"listen":           {"listen"},
		"accept":           {"accept", "accept4"},
		"accept4":          {"accept4"},
		"connect":          {"connect"},
		"send":             {"sendto"},
		"sendto":           {"sendto"},
		"sendmsg":          {"sendmsg"},
		"sendmmsg":         {"sendmmsg"},
		"recv":             {"recvfrom"},
		"__recv_chk":       u(l("recvfrom"), chk),
		"recvfrom":         {"recvfrom"},
		"__recvfrom_chk":   u(l("recvfrom"), chk),
		"recvmsg":          {"recvmsg"},
		"recvmmsg":         {"recvmmsg"},
		"setsockopt":       {"setsockopt"},
		"getsockopt":       {"getsockopt"},
		"shutdown":         {"shutdown"},
		"getsockname":      {"getsockname"},
		"getpeername":      {"getpeername"},
		"sockatmark":       {"ioctl"},
		"if_nametoindex":   {"socket", "ioctl", "close"},
		"if_indextoname":   {"socket", "ioctl", "close"},
		"if_nameindex":     u(malloc, netlink),
		"if_freenameindex": malloc,
		"getifaddrs":       u(malloc, netlink),
		"freeifaddrs":      malloc,

		// Name services.
		"getaddrinfo":      gai,
		"freeaddrinfo":     malloc,
		"getnameinfo":      u(gai, l("ioctl")),
		"gethostbyname":    dns,
		"gethostbyname_r":  dns,
		"gethostbyname2":   dns,
		"gethostbyname2_r": dns,
		"gethostbyaddr":    dns,
		"gethostbyaddr_r":  dns,
		"gethostent":       nss,
		"sethostent":       nss,
		"endhostent":       nss,
		"getservbyname":    nss,
		"getservbyname_r":  nss,
		"getservbyport":    nss,
		"getservbyport_r":  nss,
		"getprotobyname":   nss,
		"getprotobyname_r": nss,
		"getprotobynumber": nss,
		"getnetbyname":     dns,
		"getpwnam":         nss,
		"getpwnam_r":       nss,
		"getpwuid":         nss,
		"getpwuid_r":       nss,
		"getpwent":         nss,
		"getpwent_r":       nss,
		"setpwent":         nss,
		"endpwent":         nss,
		"getgrnam":         nss,
		"getgrnam_r":       nss,
		"getgrgid":         nss,
		"getgrgid_r":       nss,
		"getgrent":         nss,
		"setgrent":         nss,
		"endgrent":         nss,
		"getgrouplist":     nss,
		"getspnam":         nss,
		"getspnam_r":       nss,
		"__res_init":       u(dns, readFile),
		"__res_ninit":      u(dns, readFile),
		"res_query":        dns,
		"__res_query":      dns,
		"__res_search":     dns,
		"__res_mkquery":    u(dns, readFile),
		"__res_send":       dns,
		"res_search":       dns,
		"res_nquery":       dns,
		"res_nsearch":      dns,
		"res_mkquery":      u(dns, readFile),
		"res_send":         dns,
		"setutent":         utmp,
		"getutent":         utmp,
		"endutent":         utmp,
		"pututline":        utmp,
		"getutxent":        utmp,
		"setutxent":        utmp,
		"endutxent":        utmp,
		"pututxline":       utmp,
		"updwtmp":          utmp,
		"updwtmpx":         utmp,
		"login":            u(utmp, dir, l("ioctl", "readlink", "getpid")),
		"logout":           u(utmp, l("clock_gettime", "gettimeofday")),
		"utmpname":         malloc,
		"openlog":          syslog,
		"syslog":           syslog,
		"vsyslog":          syslog,
		"__syslog_chk":     u(syslog, chk),
		"__vsyslog_chk":    u(syslog, chk),
		"closelog":         u(l("close"), lock),
		"setlogmask":       lock,

		// Threads.
		"pthread_create":                           thread,
		"pthread_join":                             u(malloc, l("futex", "munmap", "madvise")),
		"pthread_tryjoin_np":                       u(malloc, l("futex", "munmap", "madvise")),
		"pthread_timedjoin_np":                     u(malloc, l("futex", "munmap", "madvise")),
		"pthread_clockjoin_np":                     u(malloc, l("futex", "munmap", "madvise")),
		"pthread_detach":                           u(malloc, l("futex", "munmap", "madvise")),
		"pthread_exit":                             threadExit,
		"pthread_cancel":                           u(unwind, l("tgkill", "getpid", "gettid", "rt_sigaction", "rt_sigprocmask")),
		"pthread_testcancel":                       threadExit,
		"pthread_setcancelstate":                   threadExit,
		"pthread_setcanceltype":                    threadExit,
		"pthread_kill":                             {"tgkill", "getpid", "gettid", "rt_sigprocmask", "futex"},
		"pthread_sigqueue":                         {"rt_tgsigqueueinfo", "getpid", "getuid", "rt_sigprocmask", "futex"},
		"pthread_mutex_lock":                       mutex,
		"pthread_mutex_trylock":                    mutex,
		"pthread_mutex_timedlock":                  mutex,
		"pthread_mutex_clocklock":                  mutex,
		"pthread_mutex_unlock":                     mutex,
		"pthread_mutex_init":                       {"futex", "sched_get_priority_min", "sched_get_priority_max"},
		"pthread_mutex_consistent":                 lock,
		"pthread_mutex_setprioceiling":             mutex,
		"pthread_cond_wait":                        mutex,
		"pthread_cond_timedwait":                   mutex,
		"pthread_cond_clockwait":                   mutex,
		"pthread_cond_signal":                      malloc,
		"pthread_cond_broadcast":                   malloc,
		"pthread_rwlock_rdlock":                    lock,
		"pthread_rwlock_wrlock":                    lock,
		"pthread_rwlock_tryrdlock":                 lock,
		"pthread_rwlock_trywrlock":                 lock,
		"pthread_rwlock_timedrdlock":               lock,
		"pthread_rwlock_timedwrlock":               lock,
		"pthread_rwlock_clockrdlock":               lock,
		"pthread_rwlock_clockwrlock":               lock,
		"pthread_rwlock_unlock":                    lock,
		"pthread_barrier_wait":                     lock,
		"pthread_barrier_destroy":                  lock,
		"pthread_once":                             lock,
		"call_once":                                lock,
		"sem_wait":                                 lock,
		"sem_timedwait":                            lock,
		"sem_clockwait":                            lock,
		"sem_trywait":                              lock,
		"sem_post":                                 lock,
		"pthread_setspecific":                      malloc,
		"pthread_key_delete":                       lock,
		"pthread_getattr_np":                       u(malloc, readFile, l("prlimit64", "sched_getaffinity")),
		"pthread_attr_destroy":                     malloc,
		"pthread_attr_setaffinity_np":              malloc,
		"pthread_attr_setsigmask_np":               malloc,
		"pthread_getaffinity_np":                   {"sched_getaffinity"},
		"pthread_setaffinity_np":                   {"sched_setaffinity"},
		"pthread_setschedparam":                    u(mutex, l("sched_setscheduler", "sched_setparam")),
		"pthread_getschedparam":                    {"sched_getparam", "sched_getscheduler", "futex"},
		"pthread_setschedprio":                     u(mutex, l("sched_setparam")),
		"pthread_setname_np":                       u(sprintf, l("prctl", "openat", "write", "close")),
		"pthread_getname_np":                       u(sprintf, l("prctl", "openat", "read", "close")),
		"pthread_getcpuclockid":                    {"clock_getres"},
		"pthread_yield":                            {"sched_yield"},
		"thrd_create":                              thread,
		"thrd_join":                                u(malloc, l("futex", "munmap", "madvise")),
		"thrd_detach":                              u(malloc, l("futex", "munmap", "madvise")),
		"thrd_exit":                                threadExit,
		"thrd_sleep":                               {"clock_nanosleep"},
		"thrd_yield":                               {"sched_yield"},
		"mtx_lock":                                 mutex,
		"mtx_unlock":                               mutex,
		"mtx_timedlock":                            mutex,
		"mtx_trylock":                              mutex,
		"cnd_wait":                                 mutex,
		"cnd_timedwait":                            mutex,
		"cnd_signal":                               lock,
		"cnd_broadcast":                            lock,
		"tss_set":                                  malloc,
		"mtx_init":                                 {"futex", "sched_get_priority_min", "sched_get_priority_max"},
		"cnd_destroy":                              u(malloc, lock),
		"pthread_cond_destroy":                     u(malloc, lock),
		"pthread_attr_getstacksize":                lock,
		"pthread_attr_setschedparam":               {"sched_get_priority_min", "sched_get_priority_max"},
		"pthread_getattr_default_np":               u(malloc, lock),
		"pthread_setattr_default_np":               u(malloc, lock, l("sched_get_priority_min", "sched_get_priority_max")),
		"posix_spawn_file_actions_init":            malloc,
		"posix_spawn_file_actions_destroy":         malloc,
		"posix_spawn_file_actions_addopen":         u(malloc, l("prlimit64")),
		"posix_spawn_file_actions_addclose":        u(malloc, l("prlimit64")),
		"posix_spawn_file_actions_adddup2":         u(malloc, l("prlimit64")),
		"posix_spawn_file_actions_addchdir_np":     malloc,
		"posix_spawn_file_actions_addfchdir_np":    u(malloc, l("prlimit64")),
		"posix_spawn_file_actions_addchdir":        malloc,
		"posix_spawn_file_actions_addfchdir":       u(malloc, l("prlimit64")),
		"posix_spawn_file_actions_addclosefrom_np": u(malloc, l("prlimit64")),
		"posix_spawn_file_actions_addtcsetpgrp_np": u(malloc, l("prlimit64")),
		"dlinfo": u(malloc, lock),
		"ecvt_r": sprintf,
		"fcvt_r": sprintf,
		"ecvt":   sprintf,
		"fcvt":   sprintf,
		"gcvt":   sprintf,
	}
	for fn, names := range m {
		m[fn] = libcUnion(names)
	}
	return m
}

// libcPure lists exported glibc functions that never make a system call
// (string, memory, ctype, math, pure formatting into buffers ...).
func libcPure() map[string]bool {
	names := []string{
		// Memory and strings.
		"memcpy", "memmove", "memset", "memcmp", "memchr", "memrchr", "rawmemchr",
		"memmem", "mempcpy", "__mempcpy", "memccpy", "bcmp", "bcopy", "bzero",
		"explicit_bzero", "memfrob", "strlen", "strnlen", "strcpy", "strncpy",
		"stpcpy", "__stpcpy", "stpncpy", "strcat", "strncat", "strlcpy", "strlcat",
		"strcmp", "strncmp", "strcasecmp", "strncasecmp", "strcasecmp_l",
		"strncasecmp_l", "strchr", "strrchr", "strchrnul", "index", "rindex",
		"strstr", "strcasestr", "strspn", "strcspn", "strpbrk", "strtok",
		"strtok_r", "__strtok_r", "strsep", "strcoll", "strcoll_l", "strxfrm",
		"strxfrm_l", "strverscmp", "basename", "__xpg_basename", "dirname",
		"ffs", "ffsl", "ffsll", "swab",
		// Wide strings.
		"wcslen", "wcsnlen", "wcscpy", "wcsncpy", "wcpcpy", "wcscat", "wcsncat",
		"wcscmp", "wcsncmp", "wcscasecmp", "wcsncasecmp", "wcschr", "wcsrchr",
		"wcsstr", "wcsspn", "wcscspn", "wcspbrk", "wcstok", "wcscoll", "wcsxfrm",
		"wmemcpy", "wmemmove", "wmemset", "wmemcmp", "wmemchr", "wcwidth",
		"wcswidth", "mbsinit",
		// Character classes.
		"isalnum", "isalpha", "isascii", "isblank", "iscntrl", "isdigit", "isgraph",
		"islower", "isprint", "ispunct", "isspace", "isupper", "isxdigit",
		"tolower", "toupper", "toascii", "isalnum_l", "isalpha_l", "isdigit_l",
		"isspace_l", "isupper_l", "islower_l", "tolower_l", "toupper_l",
		"__ctype_b_loc", "__ctype_tolower_loc", "__ctype_toupper_loc",
		"__ctype_get_mb_cur_max", "iswalnum", "iswalpha", "iswblank", "iswcntrl",
		"iswdigit", "iswgraph", "iswlower", "iswprint", "iswpunct", "iswspace",
		"iswupper", "iswxdigit", "iswctype", "wctype", "towlower", "towupper",
		"towctrans", "wctrans",
		// Numbers.
		"atoi", "atol", "atoll", "atof", "strtol", "strtoul", "strtoll", "strtoull",
		"strtoq", "strtouq", "strtoimax", "strtoumax", "strtod", "strtof",
		"strtold", "strtol_l", "strtoul_l", "strtod_l", "__strtol_internal",
		"__strtoul_internal", "__strtoll_internal", "__strtoull_internal",
		"__strtod_internal", "__strtof_internal", "__strtold_internal",
		"__isoc23_strtol", "__isoc23_strtoul", "__isoc23_strtoll",
		"__isoc23_strtoull", "__isoc23_strtoimax", "__isoc23_strtoumax",
		"__isoc23_wcstol", "__isoc23_wcstoul", "__isoc23_wcstoll",
		"__isoc23_wcstoull", "wcstol", "wcstoul", "wcstoll", "wcstoull",
		"wcstod", "wcstof", "wcstold", "abs", "labs", "llabs", "imaxabs", "div",
		"ldiv", "lldiv", "imaxdiv", "a64l", "l64a",
		"inet_pton", "inet_aton", "inet_addr", "inet_network", "inet_makeaddr",
		"inet_lnaof", "inet_netof", "htonl", "htons", "ntohl", "ntohs",
		"ether_ntoa_r", "ether_aton_r",
		// Math in libc and libm.
		"frexp", "frexpf", "frexpl", "ldexp", "ldexpf", "ldexpl", "modf", "modff",
		"modfl", "scalbn", "scalbnf", "scalbnl", "copysign", "copysignf",
		"copysignl", "isinf", "isinff", "isinfl", "isnan", "isnanf", "isnanl",
		"finite", "finitef", "finitel", "__finite", "__isinf", "__isnan",
		"__signbit", "__fpclassify", "sin", "cos", "tan", "asin", "acos", "atan",
		"atan2", "sinh", "cosh", "tanh", "exp", "exp2", "expm1", "log", "log2",
		"log10", "log1p", "pow", "sqrt", "cbrt", "hypot", "fabs", "floor", "ceil",
		"round", "trunc", "rint", "nearbyint", "lround", "llround", "lrint",
		"llrint", "fmod", "remainder", "fmin", "fmax", "fma", "sinf", "cosf",
		"tanf", "atan2f", "expf", "logf", "powf", "sqrtf", "fabsf", "floorf",
		"ceilf", "roundf", "truncf", "fmodf",
		// Searching and sorting without allocation.
		"bsearch", "lfind", "lsearch", "insque", "remque",
		// Pseudo-random numbers with caller state.
		"rand_r", "random_r", "srandom_r", "initstate_r", "setstate_r",
		"drand48", "erand48", "lrand48", "nrand48", "mrand48", "jrand48",
		"srand48", "seed48", "lcong48", "drand48_r", "lrand48_r", "srand48_r",
		// Environment and process state kept in memory.
		"getenv", "secure_getenv", "__errno_location", "__h_errno_location",
		"__res_state", "getauxval", "getpagesize", "gnu_get_libc_version",
		"gnu_get_libc_release", "__libc_current_sigrtmin",
		"__libc_current_sigrtmax", "uselocale", "localeconv", "nl_langinfo",
		"nl_langinfo_l",
		// Signal sets.
		"sigemptyset", "sigfillset", "sigaddset", "sigdelset", "sigismember",
		"sigisemptyset", "sigandset", "sigorset", "_setjmp",
		// Time formatting without the time zone.
		"asctime", "asctime_r", "difftime",
		// stdio state queries without locking.
		"fileno", "fileno_unlocked", "feof_unlocked", "ferror_unlocked",
		"clearerr_unlocked", "__fbufsize", "__freading", "__fwriting",
		"__freadable", "__fwritable", "__flbf", "__fpending", "__fsetlocking",
		"ctermid",
		// Thread attributes and objects that never block or allocate.
		"pthread_self", "pthread_equal", "pthread_attr_init",
		"pthread_attr_setdetachstate", "pthread_attr_getdetachstate",
		"pthread_attr_setstacksize",
		"pthread_attr_setstack", "pthread_attr_getstack",
		"pthread_attr_setguardsize", "pthread_attr_getguardsize",
		"pthread_attr_setschedpolicy", "pthread_attr_getschedpolicy",
		"pthread_attr_getschedparam",
		"pthread_attr_setinheritsched", "pthread_attr_getinheritsched",
		"pthread_attr_setscope", "pthread_attr_getscope",
		"pthread_mutexattr_init", "pthread_mutexattr_destroy",
		"pthread_mutexattr_settype", "pthread_mutexattr_gettype",
		"pthread_mutexattr_setpshared", "pthread_mutexattr_setrobust",
		"pthread_mutexattr_setprotocol", "pthread_condattr_init",
		"pthread_condattr_destroy", "pthread_condattr_setclock",
		"pthread_condattr_setpshared", "pthread_rwlockattr_init",
		"pthread_rwlockattr_destroy", "pthread_rwlockattr_setkind_np",
		"pthread_mutex_destroy", "pthread_cond_init",
		"pthread_rwlock_init", "pthread_rwlock_destroy", "pthread_barrier_init",
		"pthread_spin_init", "pthread_spin_destroy", "pthread_spin_lock",
		"pthread_spin_trylock", "pthread_spin_unlock", "pthread_key_create",
		"pthread_getspecific", "sem_init", "sem_destroy", "sem_getvalue",
		"tss_create", "tss_get", "mtx_destroy", "cnd_init",
		"thrd_current", "thrd_equal",
		// Terminal attribute structures.
		"cfmakeraw", "cfgetispeed", "cfgetospeed", "cfsetispeed", "cfsetospeed",
		"cfsetspeed",
		// Character set conversion once the converter is open (built-in or
		// gconv module code, no I/O).
		"iconv",
		// Spawn attributes.
		"posix_spawnattr_init", "posix_spawnattr_destroy", "posix_spawnattr_setflags",
		"posix_spawnattr_getflags", "posix_spawnattr_setsigmask", "posix_spawnattr_setsigdefault",
		"posix_spawnattr_setpgroup", "posix_spawnattr_setschedpolicy", "posix_spawnattr_setschedparam",
		// Dynamic linking queries answered from memory.
		"malloc_usable_size",
	}
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}
