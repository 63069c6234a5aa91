package jail

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoCgroupV2 means a Spec asked for a cgroup where cgroup v2, or the
// controllers its limits need, are not available.
var ErrNoCgroupV2 = errors.New("cgroup v2 not available")

// Filesystem magic numbers (include/uapi/linux/magic.h), to name what is
// mounted where a cgroup v2 was expected.
const (
	cgroup1SuperMagic = 0x27e0eb
	tmpfsMagic        = 0x01021994
)

// CheckCgroupV2 reports whether parent is a cgroup v2 directory offering
// the controllers c's limits need (memory, cpu, pids), and if not, why.
func CheckCgroupV2(c *Cgroup) error {
	var st unix.Statfs_t
	if err := unix.Statfs(c.Parent, &st); err != nil {
		return fmt.Errorf("cgroup parent %s: %w", c.Parent, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		what := fmt.Sprintf("a filesystem of type %#x", st.Type)
		switch st.Type {
		case cgroup1SuperMagic:
			what = "a cgroup v1 hierarchy"
		case tmpfsMagic:
			what = "a tmpfs (the cgroup v1 layout's /sys/fs/cgroup)"
		}
		return fmt.Errorf("%w: %s is %s, not cgroup2; the jail's limits need the unified hierarchy (boot with systemd.unified_cgroup_hierarchy=1, or mount cgroup2 with its controllers free), or a Spec without Cgroup",
			ErrNoCgroupV2, c.Parent, what)
	}
	b, err := os.ReadFile(filepath.Join(c.Parent, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup parent %s: %w", c.Parent, err)
	}
	have := strings.Fields(string(b))
	var missing []string
	for _, want := range c.controllers() {
		if !contains(have, want) {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s offers controllers %q, not %s (on a hybrid host they are bound to cgroup v1 hierarchies)",
			ErrNoCgroupV2, c.Parent, have, strings.Join(missing, ", "))
	}
	return nil
}

// controllers are the cgroup v2 controllers c's limits use.
func (c *Cgroup) controllers() []string {
	var out []string
	if c.MemoryMax > 0 {
		out = append(out, "memory")
	}
	if c.CPUMax != "" {
		out = append(out, "cpu")
	}
	if c.PidsMax > 0 {
		out = append(out, "pids")
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// joinCgroup makes Parent/id with c's limits and moves the calling
// process (all its threads) into it, recording its path in dir for Clean.
// A Parent/id left by a crashed jail is removed first if it is empty.
func joinCgroup(c *Cgroup, id, dir string) error {
	if err := CheckCgroupV2(c); err != nil {
		return err
	}
	if ctl := c.controllers(); len(ctl) > 0 {
		sub := filepath.Join(c.Parent, "cgroup.subtree_control")
		b, err := os.ReadFile(sub)
		if err != nil {
			return err
		}
		var enable []string
		for _, x := range ctl {
			if !contains(strings.Fields(string(b)), x) {
				enable = append(enable, "+"+x)
			}
		}
		if len(enable) > 0 {
			if err := os.WriteFile(sub, []byte(strings.Join(enable, " ")), 0); err != nil {
				if errors.Is(err, unix.EBUSY) {
					err = fmt.Errorf("%w (%s holds processes of its own; give the jails a parent cgroup that holds none)", err, c.Parent)
				}
				return fmt.Errorf("enable %s in %s: %w", strings.Join(enable, " "), sub, err)
			}
		}
	}
	cg := filepath.Join(c.Parent, id)
	if err := os.Mkdir(cg, 0o755); errors.Is(err, fs.ErrExist) {
		// Left by a jail that died: an empty cgroup can go.
		if err := unix.Rmdir(cg); err != nil {
			return fmt.Errorf("cgroup %s exists and cannot be removed (%w): is a jail with this ID running?", cg, err)
		}
		err = os.Mkdir(cg, 0o755)
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, CgroupName), []byte(cg+"\n"), 0o644); err != nil {
		unix.Rmdir(cg)
		return err
	}
	limits := []struct{ file, value string }{
		{"memory.max", strconv.FormatInt(c.MemoryMax, 10)},
		{"cpu.max", c.CPUMax},
		{"pids.max", strconv.Itoa(c.PidsMax)},
	}
	for _, l := range limits {
		if l.value == "" || l.value == "0" {
			continue
		}
		if err := os.WriteFile(filepath.Join(cg, l.file), []byte(l.value), 0); err != nil {
			unix.Rmdir(cg)
			return fmt.Errorf("%s = %s: %w", l.file, l.value, err)
		}
	}
	// "0" is the writing process, with all its threads.
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte("0"), 0); err != nil {
		unix.Rmdir(cg)
		return fmt.Errorf("join %s: %w", cg, err)
	}
	return nil
}

// removeCgroup removes the cgroup a jailer recorded in dir, if any.
func removeCgroup(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, CgroupName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	cg := strings.TrimSpace(string(b))
	if !filepath.IsAbs(cg) {
		return fmt.Errorf("%s: %q is not a cgroup path", filepath.Join(dir, CgroupName), cg)
	}
	if err := unix.Rmdir(cg); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("remove cgroup %s: it still holds processes: has the jailed program exited?", cg)
		}
		return fmt.Errorf("remove cgroup %s: %w", cg, err)
	}
	return nil
}
