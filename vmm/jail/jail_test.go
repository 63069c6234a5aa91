package jail

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// probeReport mirrors testdata/probe's Report.
type probeReport struct {
	UID, GID, EUID, EGID int
	Groups               []int
	PID, PPID            int
	Root                 []string
	Visible              map[string]bool
	PIDs                 []int
	ProcEntries          int
	Interfaces           []struct {
		Name string
		Up   bool
	}
	NoNewPrivs      string
	NoNewPrivsPrctl int
	CapEff          string
	Seccomp         string
	Hostname        string
	FDs             []int
	RootWrite       string
	RunWrite        string
	TmpWrite        string
	BindWrite       string
	Devices         map[string]string
	DeviceOpen      map[string]string
	Env             []string
	Args            []string
	NetNS           string
	TapAttach       string
}

func devNumber(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Skipf("skipping: no %s on this host (%v)", path, err)
	}
	return strconv.Itoa(int(unix.Major(st.Rdev))) + ":" + strconv.Itoa(int(unix.Minor(st.Rdev)))
}

// The probe, from inside its jail: its own uid and gid and no groups;
// PID 1 with no parent; a root with only what the Spec names; no host
// files; with /proc, only itself; loopback only, down; no_new_privs and
// no capabilities; the ID as hostname; descriptors 0-2 only (the caller
// passed a fourth); read-only root and binds, writable /run (the host's
// Dir/run) and /tmp; its devices, its own, 0600, usable.
func TestJailFromInside(t *testing.T) {
	requireRoot(t)
	kvm, tun := devNumber(t, "/dev/kvm"), devNumber(t, "/dev/net/tun")
	self, _ := os.Executable()
	for _, withProc := range []bool{true, false} {
		t.Run("proc="+strconv.FormatBool(withProc), func(t *testing.T) {
			data := t.TempDir()
			os.WriteFile(filepath.Join(data, "kernel"), []byte("vmlinux"), 0o644)
			s := probeSpec(t, "inside", "report")
			s.Argv = append(s.Argv, s.Dir, self, data, "/root", "/proc/sys", "/proc/kcore", "/dev/null", "/dev/kvm")
			s.ReadOnly = append(s.ReadOnly, Bind{Source: data, Target: "/data"})
			s.Devices = []string{"/dev/kvm", "/dev/net/tun"}
			s.Proc = withProc
			s.Env = []string{"KINDLING=1"}
			extra, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer extra.Close()
			r := start(t, s, extra)
			ps := r.wait(t)
			if !ps.Success() {
				t.Fatalf("%v\nstderr: %s", ps, &r.stderr)
			}
			var rep probeReport
			if err := json.Unmarshal(r.stdout.Bytes(), &rep); err != nil {
				t.Fatalf("%v: %q", err, &r.stdout)
			}
			check := func(what string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: %v, want %v", what, got, want)
				}
			}
			id := UniqueID(s.ID)
			check("uid, euid, gid, egid", []int{rep.UID, rep.EUID, rep.GID, rep.EGID}, []int{id, id, id, id})
			check("groups", len(rep.Groups), 0)
			check("pid, ppid", []int{rep.PID, rep.PPID}, []int{1, 0})
			root := []string{"data", "dev", "probe", "run", "tmp"}
			if withProc {
				root = []string{"data", "dev", "probe", "proc", "run", "tmp"}
			}
			check("/", rep.Root, root)
			for p, seen := range rep.Visible {
				want := p == "/dev/kvm"
				if seen != want {
					t.Errorf("%s visible: %v, want %v", p, seen, want)
				}
			}
			if withProc {
				check("PIDs in /proc", rep.PIDs, []int{1})
				check("NoNewPrivs (/proc/self/status)", rep.NoNewPrivs, "1")
				check("CapEff", rep.CapEff, "0000000000000000")
				check("Seccomp", rep.Seccomp, "0")
			} else {
				check("PIDs", rep.PIDs, []int(nil))
			}
			check("no_new_privs (prctl)", rep.NoNewPrivsPrctl, 1)
			check("interfaces", len(rep.Interfaces), 1)
			if len(rep.Interfaces) == 1 {
				check("interface", rep.Interfaces[0].Name+" up="+strconv.FormatBool(rep.Interfaces[0].Up), "lo up=false")
			}
			check("tap0", rep.TapAttach, "no tap0")
			check("hostname", rep.Hostname, s.ID)
			check("descriptors", rep.FDs, []int{0, 1, 2})
			if rep.RootWrite == "" || rep.BindWrite == "" {
				t.Errorf("wrote into the root (%q) or a read-only bind (%q)", rep.RootWrite, rep.BindWrite)
			}
			check("write /run", rep.RunWrite, "")
			check("write /tmp", rep.TmpWrite, "")
			if b, err := os.ReadFile(filepath.Join(s.Dir, RunName, "probe")); err != nil || string(b) != "was here" {
				t.Errorf("the host's Dir/run/probe: %q %v", b, err)
			}
			owner := strconv.Itoa(id) + ":" + strconv.Itoa(id)
			check("devices", rep.Devices, map[string]string{
				"/dev/kvm":     kvm + " " + owner + " Dcrw-------",
				"/dev/net/tun": tun + " " + owner + " Dcrw-------",
			})
			check("device opens", rep.DeviceOpen, map[string]string{"/dev/kvm": "", "/dev/net/tun": ""})
			check("env", rep.Env, s.Env)
			check("args", rep.Args, s.Argv)
			if err := ReadStatus(s.Dir); err != nil {
				t.Errorf("status: %v", err)
			}
		})
	}
}

// From the host: the jailed process is in new mount, PID, network, IPC
// and UTS namespaces (and the host's user and cgroup ones), is PID 1
// there, leads its own session, runs as its unique uid and gid with no
// capabilities and no_new_privs, and its root holds only the jail.
func TestJailFromOutside(t *testing.T) {
	requireRoot(t)
	s := probeSpec(t, "outside", "wait")
	s.Devices = []string{"/dev/kvm"}
	r := start(t, s)
	r.waitFile(t, filepath.Join(s.Dir, RunName, "ready"))
	t.Logf("jail up (namespaces, root, exec, probe start) in %v", r.startedSince())
	pid := r.cmd.Process.Pid
	proc := func(rest ...string) string {
		return filepath.Join(append([]string{"/proc", strconv.Itoa(pid)}, rest...)...)
	}
	for _, ns := range []string{"mnt", "pid", "net", "ipc", "uts", "user", "cgroup"} {
		theirs, err1 := os.Readlink(proc("ns", ns))
		ours, err2 := os.Readlink("/proc/self/ns/" + ns)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		want := ns != "user" && ns != "cgroup"
		if (theirs != ours) != want {
			t.Errorf("%s namespace: %s, ours %s: want new=%v", ns, theirs, ours, want)
		}
	}
	status, err := os.ReadFile(proc("status"))
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.Itoa(UniqueID(s.ID))
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(l, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	for k, want := range map[string]string{
		"Uid":        strings.Repeat(id+" ", 3) + id,
		"Gid":        strings.Repeat(id+" ", 3) + id,
		"Groups":     "",
		"NSpid":      strconv.Itoa(pid) + " 1",
		"NoNewPrivs": "1",
		"CapEff":     "0000000000000000",
		"CapPrm":     "0000000000000000",
		"CapAmb":     "0000000000000000",
	} {
		if fields[k] != want {
			t.Errorf("%s: %q, want %q", k, fields[k], want)
		}
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("session %d %v, want its own", sid, err)
	}
	entries, err := os.ReadDir(proc("root"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"dev", "probe", "run", "tmp"}; !slices.Equal(names, want) {
		t.Errorf("its root from outside: %v, want %v", names, want)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, RunName, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if ps := r.wait(t); !ps.Success() {
		t.Fatalf("%v\nstderr: %s", ps, &r.stderr)
	}
}

// Every failure before the exec reaches the caller: ExitSetupFailed, a
// one-line reason on stderr naming the step, the same in the status file;
// failures after the privilege drop (the exec itself) included.
func TestJailerErrorsReachTheCaller(t *testing.T) {
	requireRoot(t)
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("#!/bin/sh\n"), 0o700)
	dynamic, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	type tc struct {
		name     string
		edit     func(*Spec)
		step     string
		want     []string
		skipWhen string
	}
	cases := []tc{
		{"missing bind source", func(s *Spec) {
			s.ReadOnly = append(s.ReadOnly, Bind{Source: "/nonexistent/vmlinux", Target: "/vmlinux"})
		}, "bind /nonexistent/vmlinux", []string{"source", "/nonexistent/vmlinux", "no such file or directory"}, ""},
		{"missing program", func(s *Spec) { s.Argv = []string{"/nothere"} },
			"program", []string{"/nothere", "no such file", "Spec.ReadOnly"}, ""},
		{"program the uid may not run", func(s *Spec) {
			s.ReadOnly = []Bind{{Source: secret, Target: "/secret"}}
			s.Argv = []string{"/secret"}
		}, "program", []string{"/secret", "not executable by uid"}, ""},
		{"dynamically linked program", func(s *Spec) {
			s.ReadOnly = []Bind{{Source: dynamic, Target: "/true"}}
			s.Argv = []string{"/true"}
		}, "exec /true", []string{"no such file", "dynamic loader", "CGO_ENABLED=0"}, ""},
		{"not a device", func(s *Spec) { s.Devices = []string{"/dev/shm"} },
			"device /dev/shm", []string{"not a device node"}, ""},
		{"cgroup v1", func(s *Spec) { s.Cgroup = &Cgroup{Parent: "/sys/fs/cgroup", MemoryMax: 1 << 30} },
			"cgroup", []string{"cgroup v2 not available", "/sys/fs/cgroup", "not cgroup2"}, "v2"},
	}
	var root unix.Statfs_t
	unix.Statfs("/sys/fs/cgroup", &root)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.skipWhen == "v2" && root.Type == unix.CGROUP2_SUPER_MAGIC {
				t.Skip("skipping: /sys/fs/cgroup is cgroup v2 here")
			}
			s := probeSpec(t, "errors", "report")
			c.edit(&s)
			r := start(t, s)
			ps := r.wait(t)
			if ps.ExitCode() != ExitSetupFailed {
				t.Fatalf("exit %v, want %d\nstderr: %s", ps, ExitSetupFailed, &r.stderr)
			}
			line := strings.TrimSpace(r.stderr.String())
			if strings.Count(line, "\n") != 0 || !strings.HasPrefix(line, JailerName+": jail "+s.ID+": "+c.step+": ") {
				t.Errorf("stderr %q: want one line naming step %q", line, c.step)
			}
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("stderr %q: no %q", line, w)
				}
			}
			var se *SetupError
			if err := ReadStatus(s.Dir); !errors.As(err, &se) || se.Step != c.step || !strings.Contains(line, se.Msg) {
				t.Errorf("status: %v, want step %q and the stderr's message", err, c.step)
			}
			if r.stdout.Len() != 0 {
				t.Errorf("the program ran: %q", &r.stdout)
			}
		})
	}
	// Run by hand, outside the namespaces Command asks for, the jailer
	// touches nothing.
	t.Run("not started by Command", func(t *testing.T) {
		s := probeSpec(t, "by-hand", "report")
		cmd, err := Command(jailerBin(t), s)
		if err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = nil
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != ExitSetupFailed || !strings.Contains(string(out), "namespaces: not PID 1") {
			t.Errorf("exit %v: %s", cmd.ProcessState, out)
		}
		if _, err := os.Stat(filepath.Join(s.Dir, RootName)); err == nil {
			t.Error("it made a root")
		}
	})
}

// A directory a jail has used is refused until Clean removes it, mounts
// left under it included, without deleting anything through them.
func TestLeftoverDirRefusedAndCleaned(t *testing.T) {
	requireRoot(t)
	s := probeSpec(t, "leftover", "report")
	r := start(t, s)
	if ps := r.wait(t); !ps.Success() {
		t.Fatalf("%v\nstderr: %s", ps, &r.stderr)
	}
	_, err := Command(jailerBin(t), s)
	if !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), "Clean") {
		t.Fatalf("reusing %s: %v, want ErrLeftover telling to Clean", s.Dir, err)
	}

	// As a crash could leave it: a tmpfs on root/, and a bind of host
	// files under run/ (a lazy unmount must not let RemoveAll reach them).
	precious := t.TempDir()
	if err := os.WriteFile(filepath.Join(precious, "keep"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, bound := filepath.Join(s.Dir, RootName), filepath.Join(s.Dir, RunName, "bound dir")
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "file"), nil, 0o644)
	if err := os.Mkdir(bound, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(precious, bound, "", unix.MS_BIND, ""); err != nil {
		unix.Unmount(root, unix.MNT_DETACH)
		t.Fatal(err)
	}
	if err := Clean(s.Dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there: %v", s.Dir, err)
	}
	if b, err := os.ReadFile(filepath.Join(precious, "keep")); err != nil || string(b) != "mine" {
		t.Errorf("the bind's source lost its file: %q %v", b, err)
	}
	if m, _ := mountsUnder(s.Dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	if err := Clean(s.Dir); err != nil {
		t.Errorf("cleaning a clean dir: %v", err)
	}

	// A status file alone (a jailer that failed before making root/)
	// marks the directory used too.
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Command(jailerBin(t), s); err != nil {
		t.Fatalf("a fresh directory: %v", err)
	}
	os.WriteFile(filepath.Join(s.Dir, StatusName), []byte(`{"ok":false}`), 0o644)
	if _, err := Command(jailerBin(t), s); !errors.Is(err, ErrLeftover) {
		t.Errorf("with a status file: %v", err)
	}
}

// The jailer refuses a root/ that appeared after Command checked.
func TestJailerRefusesAnExistingRoot(t *testing.T) {
	requireRoot(t)
	s := probeSpec(t, "race", "report")
	cmd, err := Command(jailerBin(t), s)
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(s.Dir, RootName), 0o755)
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != ExitSetupFailed || !strings.Contains(string(out), "root: "+ErrLeftover.Error()) {
		t.Errorf("exit %v: %s", cmd.ProcessState, out)
	}
}

func TestMountinfoUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:              "/a/b",
		`/a\040b`:           "/a b",
		`/tab\011x\012\134`: "/tab\tx\n\\",
		`/odd\04`:           `/odd\04`,
		`/not\999`:          `/not\999`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}
