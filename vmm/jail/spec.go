package jail

import (
	"errors"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Spec is one jail.
type Spec struct {
	// ID names the jail: its hostname and its cgroup's name. Letters,
	// digits, '.', '_' and '-', at most 64 (HOST_NAME_MAX).
	ID string `json:"id"`
	// Dir is the jail's directory on the host, created and owned by the
	// caller, one per jail and never reused. The jailer makes Dir/root
	// (the jail's root, a tmpfs in the jail's mount namespace; an empty
	// directory from the host's side) and Dir/run (the jail's /run, owned
	// by UID and GID: the host reaches the program's sockets there).
	Dir string `json:"dir"`
	// UID and GID the program runs as; not 0. UniqueID makes one per ID.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// ReadOnly are host files and directories bind-mounted read-only
	// into the jail (the program itself, kernel, initrd, snapshot). The
	// program reads them as UID/GID: they must be readable by it.
	ReadOnly []Bind `json:"read_only,omitempty"`
	// Devices are device nodes, such as "/dev/kvm" and "/dev/net/tun",
	// made inside at the same path with the host node's type and number,
	// owned by UID/GID, mode 0600. A VMM that attaches to a tap in NetNS
	// needs "/dev/net/tun".
	Devices []string `json:"devices,omitempty"`
	// NetNS, when set, is a network namespace file (a bind mount of a
	// /proc/PID/ns/net, as package hostnet makes one per sandbox) that
	// the jail joins instead of a new, empty network namespace: where
	// the VMM finds its tap. It must not be the caller's own namespace.
	NetNS string `json:"net_ns,omitempty"`
	// Proc mounts a procfs of the jail's own PID namespace, read-only and
	// limited to the process directories (subset=pid), at /proc: the
	// program sees itself and nothing else. kindling-vmm needs it only
	// to record a working set (/proc/self/pagemap).
	Proc bool `json:"proc,omitempty"`
	// Cgroup, when set, puts the program in a new cgroup v2 with limits.
	// The jailer fails, naming why, where cgroup v2 is not available.
	Cgroup *Cgroup `json:"cgroup,omitempty"`
	// Argv is the program and its arguments, its path as seen inside.
	// It must be statically linked: the jail has no shared libraries.
	Argv []string `json:"argv"`
	// Env is the program's whole environment.
	Env []string `json:"env,omitempty"`
}

// Bind is a host path mounted read-only into the jail.
type Bind struct {
	Source string `json:"source"` // absolute path on the host
	Target string `json:"target"` // absolute path inside the jail
}

// Cgroup is the jail's cgroup v2: Parent/ID, with these limits. A zero
// limit is left at the kernel's default (no limit).
type Cgroup struct {
	// Parent is an existing cgroup v2 directory, such as
	// /sys/fs/cgroup/kindling, that holds no processes itself (cgroup v2
	// lets only leaves hold processes once controllers are enabled below
	// them). The jailer enables the controllers it needs in its
	// cgroup.subtree_control.
	Parent string `json:"parent"`
	// MemoryMax is memory.max in bytes: guest memory the VMM touched,
	// plus its own.
	MemoryMax int64 `json:"memory_max,omitempty"`
	// CPUMax is cpu.max, "QUOTA PERIOD" in microseconds ("50000 100000"
	// is half a CPU) or "max PERIOD".
	CPUMax string `json:"cpu_max,omitempty"`
	// PidsMax is pids.max: threads count too (a VMM has one per vCPU
	// plus the Go runtime's).
	PidsMax int `json:"pids_max,omitempty"`
}

// Paths inside the jail that the jailer makes itself.
const (
	RunDir = "/run" // Dir/run, read-write
	TmpDir = "/tmp" // a tmpfs
)

// Files in a jail directory.
const (
	RootName   = "root"        // the jail's root (a mount point in the jail's namespace)
	RunName    = "run"         // the jail's /run
	SpecName   = "jail.json"   // the Spec, as Command wrote it for the jailer
	StatusName = "jail-status" // the jailer's outcome, one JSON line
	CgroupName = "cgroup"      // the cgroup directory the jailer made, for Clean
)

// idPattern is what an ID may be: a hostname label and a cgroup name,
// neither "." nor "..".
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// UniqueID is the uid and gid for jail id: 1,000,000 plus a hash of id
// below 1,000,000, above any uid a distribution hands out and below the
// 32-bit overflow uid. Two IDs may share one (a 32-bit FNV-1a hash, one
// chance in a million per pair); each jail is still alone in its own
// namespaces and root, so what they would share is only per-uid
// accounting (RLIMIT_NPROC).
func UniqueID(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return uniqueIDBase + int(h.Sum32()%uniqueIDRange)
}

const (
	uniqueIDBase  = 1_000_000
	uniqueIDRange = 1_000_000
)

// ErrSpec wraps every reason a Spec is refused.
var ErrSpec = errors.New("jail spec")

func specErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrSpec}, a...)...)
}

// Validate checks s without touching the file system.
func (s *Spec) Validate() error {
	if !idPattern.MatchString(s.ID) || s.ID == "." || s.ID == ".." {
		return specErr("ID %q: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", s.ID)
	}
	if !filepath.IsAbs(s.Dir) || filepath.Clean(s.Dir) == "/" {
		return specErr("Dir %q: want an absolute path, not /", s.Dir)
	}
	if s.UID <= 0 || s.GID <= 0 {
		return specErr("UID %d, GID %d: a jail never runs as root (or group root); use UniqueID", s.UID, s.GID)
	}
	if len(s.Argv) == 0 || !filepath.IsAbs(s.Argv[0]) {
		return specErr("Argv %q: want the program's absolute path inside the jail first", s.Argv)
	}
	if s.NetNS != "" && (!filepath.IsAbs(s.NetNS) || filepath.Clean(s.NetNS) != s.NetNS) {
		return specErr("NetNS %q: want an absolute, clean path to a network namespace file", s.NetNS)
	}
	targets := map[string]string{}
	claim := func(p, what string) error {
		for other, by := range targets {
			if p == other || strings.HasPrefix(p, other+"/") || strings.HasPrefix(other, p+"/") {
				return specErr("%s %s overlaps %s %s", what, p, by, other)
			}
		}
		targets[p] = what
		return nil
	}
	for _, p := range []string{RunDir, TmpDir, "/proc"} {
		targets[p] = "the jail's own"
	}
	for _, b := range s.ReadOnly {
		if !filepath.IsAbs(b.Source) {
			return specErr("bind source %q: want an absolute host path", b.Source)
		}
		if err := insidePath(b.Target); err != nil {
			return specErr("bind target: %v", err)
		}
		if err := claim(b.Target, "bind"); err != nil {
			return err
		}
	}
	for _, d := range s.Devices {
		if err := insidePath(d); err != nil || !strings.HasPrefix(d, "/dev/") {
			return specErr("device %q: want a path under /dev/", d)
		}
		if err := claim(d, "device"); err != nil {
			return err
		}
	}
	if c := s.Cgroup; c != nil {
		if !filepath.IsAbs(c.Parent) {
			return specErr("cgroup parent %q: want an absolute path", c.Parent)
		}
		if c.MemoryMax < 0 || c.PidsMax < 0 {
			return specErr("cgroup limits: memory %d, pids %d: want 0 (none) or more", c.MemoryMax, c.PidsMax)
		}
		if c.CPUMax != "" {
			if err := checkCPUMax(c.CPUMax); err != nil {
				return err
			}
		}
	}
	return nil
}

// insidePath checks a path inside the jail: absolute, clean, not / itself.
func insidePath(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
		return fmt.Errorf("%q: want an absolute, clean path other than /", p)
	}
	return nil
}

// checkCPUMax checks a cpu.max value: "QUOTA PERIOD" with QUOTA a number
// of microseconds or "max" (the cgroup v2 documentation, "cpu.max").
func checkCPUMax(v string) error {
	f := strings.Fields(v)
	if len(f) != 2 {
		return specErr("cpu.max %q: want \"QUOTA PERIOD\"", v)
	}
	if f[0] != "max" {
		if q, err := strconv.ParseUint(f[0], 10, 64); err != nil || q == 0 {
			return specErr("cpu.max %q: quota %q is neither microseconds nor \"max\"", v, f[0])
		}
	}
	if p, err := strconv.ParseUint(f[1], 10, 64); err != nil || p == 0 {
		return specErr("cpu.max %q: period %q is not microseconds", v, f[1])
	}
	return nil
}
