package jail

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/kindlingvm/kindling/agent/hostnet"
)

// sandboxNetNS is a sandbox's network namespace as kindlingd makes it for
// a microVM with no network policy (package hostnet): loopback and a tap
// owned by the jail's uid and gid. It touches nothing in the test's own
// namespace.
func sandboxNetNS(t *testing.T, s Spec) *hostnet.Sandbox {
	t.Helper()
	h, err := hostnet.NewHost(hostnet.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	sb, err := h.Setup(hostnet.Options{ID: s.ID, Dir: t.TempDir(), Tap: true, TapUID: s.UID, TapGID: s.GID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Close(); err != nil {
			t.Errorf("close the sandbox's network: %v", err)
		}
	})
	return sb
}

// With NetNS the jail joins the sandbox's network namespace instead of a
// new one: the probe sees loopback and the tap and nothing else, and
// attaches to the tap as the VMM does, as its own uid with no
// capabilities, through its own /dev/net/tun. Its namespace is the file's.
func TestJailJoinsNetNS(t *testing.T) {
	requireRoot(t)
	devNumber(t, "/dev/net/tun")
	s := probeSpec(t, "netns", "report")
	s.Devices = []string{"/dev/net/tun"}
	s.Proc = true
	sb := sandboxNetNS(t, s)
	s.NetNS = sb.NetNSPath()
	r := start(t, s)
	if ps := r.wait(t); !ps.Success() {
		t.Fatalf("%v\nstderr: %s", ps, &r.stderr)
	}
	var rep probeReport
	if err := json.Unmarshal(r.stdout.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %q", err, &r.stdout)
	}
	var ifs []string
	for _, i := range rep.Interfaces {
		ifs = append(ifs, i.Name+" up="+strconv.FormatBool(i.Up))
	}
	if got, want := strings.Join(ifs, ", "), "lo up=true, tap0 up=true"; got != want {
		t.Errorf("interfaces: %s, want %s", got, want)
	}
	if rep.TapAttach != "" {
		t.Errorf("attach to tap0 as uid %d: %s", s.UID, rep.TapAttach)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(sb.NetNSPath(), &st); err != nil {
		t.Fatal(err)
	}
	if want := "net:[" + strconv.FormatUint(st.Ino, 10) + "]"; rep.NetNS != want {
		t.Errorf("the jail's network namespace: %s, want the sandbox's %s", rep.NetNS, want)
	}
	runtime.LockOSThread()
	ours, _ := os.Readlink("/proc/thread-self/ns/net")
	runtime.UnlockOSThread()
	if rep.NetNS == ours {
		t.Errorf("the jail is in the caller's network namespace %s", ours)
	}
}

// Command refuses a NetNS that is not a network namespace file, or is the
// caller's own; the jailer checks again, and refuses one that went away
// after Command.
func TestNetNSRefused(t *testing.T) {
	file := filepath.Join(t.TempDir(), "netns")
	os.WriteFile(file, nil, 0o644)
	for _, c := range []struct{ path, want string }{
		{"netns", "absolute"},
		{"/a/../netns", "absolute"},
		{"/nonexistent/netns", "no such file"},
		{file, "not a namespace file"},
		{"/proc/self/ns/mnt", "another kind"},
		{"/proc/thread-self/ns/net", "the caller's own network namespace"},
	} {
		s := Spec{ID: "vm-1", Dir: t.TempDir(), UID: 1_000_001, GID: 1_000_001, Argv: []string{"/p"}, NetNS: c.path}
		_, err := Command("/bin/kindling-jailer", s)
		if !errors.Is(err, ErrSpec) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NetNS %s: %v, want ErrSpec with %q", c.path, err, c.want)
		}
	}
}

func TestJailerRechecksNetNS(t *testing.T) {
	requireRoot(t)
	s := probeSpec(t, "netns-gone", "report")
	sb := sandboxNetNS(t, s)
	s.NetNS = sb.NetNSPath()
	cmd, err := Command(jailerBin(t), s)
	if err != nil {
		t.Fatal(err)
	}
	if cmd.SysProcAttr.Cloneflags&syscall.CLONE_NEWNET != 0 || cmd.SysProcAttr.Cloneflags != Cloneflags&^syscall.CLONE_NEWNET {
		t.Errorf("Cloneflags %#x: want Cloneflags without CLONE_NEWNET", cmd.SysProcAttr.Cloneflags)
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != ExitSetupFailed || !strings.Contains(string(out), "network namespace: ") || !strings.Contains(string(out), "no such file") {
		t.Errorf("exit %v: %s", cmd.ProcessState, out)
	}
}
