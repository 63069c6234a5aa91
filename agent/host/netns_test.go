package host

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStartInNetNS: a command started with startInNetNS is in the given
// namespace, and the calling goroutine's thread is not.
func TestStartInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	// This thread's namespace (/proc/self is the thread group leader's,
	// which a locked goroutine may have left in another one).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	want, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	// A namespace held by a bind mount, as hostnet holds a sandbox's.
	path := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		done <- unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, "")
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH) })
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	var out strings.Builder
	cmd.Stdout = &out
	if err := startInNetNS(path, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	got := strings.TrimSpace(out.String())
	if got == want || !strings.Contains(got, "["+strconv.FormatUint(st.Ino, 10)+"]") {
		t.Fatalf("the command's netns is %s; want inode %d (ours is %s)", got, st.Ino, want)
	}
	if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != want {
		t.Fatalf("our own netns changed to %s", now)
	}
	if err := startInNetNS(filepath.Join(t.TempDir(), "none"), exec.Command("true")); err == nil || !strings.Contains(err.Error(), "network namespace") {
		t.Fatalf("a missing namespace: %v", err)
	}
}
