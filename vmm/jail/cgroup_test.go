package jail

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cgroup2Mounts lists this host's cgroup2 mount points.
func cgroup2Mounts(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if f := strings.Fields(pre); ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup2 ") {
			out = append(out, unescapeMountinfo(f[4]))
		}
	}
	return out
}

// The cgroup: limits written, the program inside it, the cgroup removed by
// Clean. Only where a cgroup v2 offers memory, cpu and pids; elsewhere the
// jailer's refusal is what is tested.
func TestCgroup(t *testing.T) {
	requireRoot(t)
	limits := Cgroup{MemoryMax: 256 << 20, CPUMax: "50000 100000", PidsMax: 64}
	var parent string
	var why []string
	for _, m := range cgroup2Mounts(t) {
		c := limits
		c.Parent = m
		if err := CheckCgroupV2(&c); err != nil {
			why = append(why, err.Error())
			continue
		}
		parent = m
		break
	}

	t.Run("refused without v2 controllers", func(t *testing.T) {
		mounts := cgroup2Mounts(t)
		if parent != "" || len(mounts) == 0 {
			t.Skip("skipping: every cgroup2 mount here offers the controllers, or there is none")
		}
		s := probeSpec(t, "cgroup-refused", "report")
		c := limits
		c.Parent = mounts[0]
		s.Cgroup = &c
		r := start(t, s)
		if ps := r.wait(t); ps.ExitCode() != ExitSetupFailed {
			t.Fatalf("%v", ps)
		}
		var se *SetupError
		if err := ReadStatus(s.Dir); !errors.As(err, &se) || se.Step != "cgroup" || !strings.Contains(se.Msg, "not memory, cpu, pids") {
			t.Errorf("status %v\nstderr %s", err, &r.stderr)
		}
		if _, err := os.Stat(filepath.Join(c.Parent, s.ID)); err == nil {
			t.Errorf("made %s anyway", filepath.Join(c.Parent, s.ID))
		}
	})

	t.Run("limits", func(t *testing.T) {
		if parent == "" {
			t.Skipf("skipping: no cgroup v2 with memory, cpu and pids on this host (%s); /sys/fs/cgroup here is cgroup v1, so this part of the jail is unverified here",
				strings.Join(why, "; "))
		}
		// A parent of our own: cgroup v2 enables controllers only for
		// children of a cgroup without processes.
		p, err := os.MkdirTemp(parent, "kindling-jail-test-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(p)
		s := probeSpec(t, "cgroup", "wait")
		c := limits
		c.Parent = p
		s.Cgroup = &c
		r := start(t, s)
		r.waitFile(t, filepath.Join(s.Dir, RunName, "ready"))
		cg := filepath.Join(p, s.ID)
		for file, want := range map[string]string{"memory.max": strconv.Itoa(256 << 20), "cpu.max": "50000 100000", "pids.max": "64"} {
			if b, err := os.ReadFile(filepath.Join(cg, file)); err != nil || strings.TrimSpace(string(b)) != want {
				t.Errorf("%s: %q %v, want %q", file, b, err, want)
			}
		}
		b, _ := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
		if strings.TrimSpace(string(b)) != strconv.Itoa(r.cmd.Process.Pid) {
			t.Errorf("cgroup.procs %q, want the jail's %d", b, r.cmd.Process.Pid)
		}
		os.WriteFile(filepath.Join(s.Dir, RunName, "release"), nil, 0o644)
		if ps := r.wait(t); !ps.Success() {
			t.Fatalf("%v\n%s", ps, &r.stderr)
		}
		if err := Clean(s.Dir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Clean left %s: %v", cg, err)
		}
	})
}
