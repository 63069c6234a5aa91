// Package jail confines one program, in practice one kindling-vmm, the
// way Firecracker's jailer does: new mount, PID, network, IPC and UTS
// namespaces (for the network, one the caller made for it instead when
// Spec.NetNS says so: where the VMM finds its tap); a root of its own
// that holds only the files it was given (bind-mounted read-only), the
// device nodes it needs (made with mknod, owned by it) and a writable
// /run and /tmp; an optional cgroup v2 with memory, CPU and PID limits; a
// uid and gid of its own with no supplementary groups and no
// capabilities; and no_new_privs. A guest that escapes its VMM lands in
// an empty directory, with no privileges, no network beyond its
// sandbox's namespace and no other process in sight.
//
// The work is split in two. Command, in the caller (kindlingd), checks a
// Spec, writes it into the jail directory and returns the command that
// starts the jailer (cmd/kindling-jailer) in the new namespaces. Main, the
// jailer, runs as PID 1 of the new PID namespace: it builds the root,
// pivots into it, drops privileges and execs the program, which keeps the
// jailer's PID; so the caller's exec.Cmd is the jailed program's process.
// A jailer that fails before the exec says why, naming the step, in one
// line on its stderr and in the jail directory's status file (ReadStatus),
// and exits with ExitSetupFailed; once it hands over, the status file says
// so.
//
// The package never reuses a jail directory: one that a jailer has used
// (it has a root/ or a status file) is refused until Clean removes it.
// Main never mounts anything outside the new mount namespace, which is
// private from its first step; and it refuses to run unless it is PID 1
// of a new PID namespace and outside its starter's mount namespace, so a
// jailer started by hand cannot touch the host's mounts.
package jail
