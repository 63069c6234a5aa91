package jail

import (
	"errors"
	"strings"
	"testing"
)

func TestUniqueID(t *testing.T) {
	seen := map[int]string{}
	for _, id := range []string{"a", "b", "fn-1", "fn-2", "vm-0001", "vm-0002", strings.Repeat("x", 64)} {
		u := UniqueID(id)
		if u < 1_000_000 || u >= 2_000_000 {
			t.Errorf("%s: %d outside [1000000, 2000000)", id, u)
		}
		if u != UniqueID(id) {
			t.Errorf("%s: not stable", id)
		}
		if other, ok := seen[u]; ok {
			t.Errorf("%s and %s share %d", id, other, u)
		}
		seen[u] = id
	}
}

func TestSpecValidate(t *testing.T) {
	good := func() Spec {
		return Spec{ID: "vm-1", Dir: "/var/lib/kindling/jails/vm-1", UID: 1_234_567, GID: 1_234_567,
			ReadOnly: []Bind{{Source: "/usr/bin/kindling-vmm", Target: "/kindling-vmm"}, {Source: "/k/vmlinux", Target: "/boot/vmlinux"}},
			Devices:  []string{"/dev/kvm", "/dev/net/tun"},
			Cgroup:   &Cgroup{Parent: "/sys/fs/cgroup/kindling", MemoryMax: 256 << 20, CPUMax: "50000 100000", PidsMax: 64},
			Argv:     []string{"/kindling-vmm", "--config", "/vm.json"}}
	}
	if s := good(); s.Validate() != nil {
		t.Fatal(s.Validate())
	}
	for _, c := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"empty ID", func(s *Spec) { s.ID = "" }, "ID"},
		{"ID with a slash", func(s *Spec) { s.ID = "../x" }, "ID"},
		{"ID too long for a hostname", func(s *Spec) { s.ID = strings.Repeat("x", 65) }, "ID"},
		{"relative Dir", func(s *Spec) { s.Dir = "jails/vm-1" }, "Dir"},
		{"Dir /", func(s *Spec) { s.Dir = "/" }, "Dir"},
		{"root uid", func(s *Spec) { s.UID = 0 }, "never runs as root"},
		{"root gid", func(s *Spec) { s.GID = 0 }, "never runs as root"},
		{"no program", func(s *Spec) { s.Argv = nil }, "Argv"},
		{"relative program", func(s *Spec) { s.Argv = []string{"kindling-vmm"} }, "Argv"},
		{"relative bind source", func(s *Spec) { s.ReadOnly[0].Source = "vmm" }, "bind source"},
		{"bind on /", func(s *Spec) { s.ReadOnly[0].Target = "/" }, "bind target"},
		{"unclean bind target", func(s *Spec) { s.ReadOnly[0].Target = "/a/../b" }, "bind target"},
		{"bind into /run", func(s *Spec) { s.ReadOnly[0].Target = "/run/x" }, "overlaps"},
		{"bind over /tmp", func(s *Spec) { s.ReadOnly[0].Target = "/tmp" }, "overlaps"},
		{"nested binds", func(s *Spec) { s.ReadOnly[1].Target = "/kindling-vmm/x" }, "overlaps"},
		{"same target twice", func(s *Spec) { s.ReadOnly[1].Target = "/kindling-vmm" }, "overlaps"},
		{"device outside /dev", func(s *Spec) { s.Devices = []string{"/kvm"} }, "device"},
		{"relative NetNS", func(s *Spec) { s.NetNS = "sandboxes/vm-1/netns" }, "NetNS"},
		{"unclean NetNS", func(s *Spec) { s.NetNS = "/run/../netns" }, "NetNS"},
		{"device /dev itself", func(s *Spec) { s.Devices = []string{"/dev"} }, "device"},
		{"bind over a device", func(s *Spec) { s.ReadOnly[1].Target = "/dev" }, "overlaps"},
		{"relative cgroup parent", func(s *Spec) { s.Cgroup.Parent = "kindling" }, "cgroup parent"},
		{"negative memory", func(s *Spec) { s.Cgroup.MemoryMax = -1 }, "cgroup limits"},
		{"cpu.max one field", func(s *Spec) { s.Cgroup.CPUMax = "50000" }, "cpu.max"},
		{"cpu.max bad quota", func(s *Spec) { s.Cgroup.CPUMax = "half 100000" }, "quota"},
		{"cpu.max zero period", func(s *Spec) { s.Cgroup.CPUMax = "max 0" }, "period"},
	} {
		s := good()
		c.edit(&s)
		err := s.Validate()
		if !errors.Is(err, ErrSpec) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an ErrSpec about %q", c.name, err, c.want)
		}
	}
	s := good()
	s.Cgroup.CPUMax = "max 100000"
	if err := s.Validate(); err != nil {
		t.Errorf("cpu.max max: %v", err)
	}
}

// Command checks the Spec and the directory before anything runs.
func TestCommandRefuses(t *testing.T) {
	s := Spec{ID: "vm-1", Dir: "/nonexistent/jail", UID: 1_000_001, GID: 1_000_001, Argv: []string{"/p"}}
	if _, err := Command("/bin/kindling-jailer", s); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing Dir: %v", err)
	}
	s.UID = 0
	if _, err := Command("/bin/kindling-jailer", s); !errors.Is(err, ErrSpec) {
		t.Errorf("root: %v", err)
	}
	s.UID, s.Dir = 1_000_001, t.TempDir()
	cmd, err := Command("/bin/kindling-jailer", s)
	if err != nil {
		t.Fatal(err)
	}
	if a := cmd.SysProcAttr; a == nil || !a.Setsid || a.Cloneflags != Cloneflags || a.Pdeathsig != 0 || a.Setpgid {
		t.Errorf("SysProcAttr %+v", a)
	}
	if len(cmd.Env) != 0 || cmd.Env == nil {
		t.Errorf("the jailer's environment: %q, want empty", cmd.Env)
	}
}
