package hostnet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNS runs fn on an OS thread locked for it that has joined ns: for
// what acts on the calling thread's namespace (opening /dev/net/tun,
// writing /proc/sys/net, netlink's package-level functions). The thread
// goes back to its own namespace and to the scheduler afterwards; if it
// cannot, or fn locked it again (as fn must if it changes anything else
// about the thread), it stays locked and ends with its goroutine. The
// thread is never left in a sandbox's namespace: the main thread, which
// the runtime keeps rather than ends, would hold the namespace for good.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("this thread's network namespace: %w", err)
			return
		}
		defer home.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace %v: %w", ns, err)
			return
		}
		errc <- fn()
		leave(home)
	}()
	return <-errc
}

// leave takes the calling thread back to home and unlocks it; a thread
// that cannot go back stays locked, to end with its goroutine.
func leave(home netns.NsHandle) {
	if err := netns.Set(home); err == nil {
		runtime.UnlockOSThread()
	}
}

// createNetNS makes a new network namespace held by a bind mount on path,
// which must not exist: a namespace file is never reused. Nothing runs in
// the namespace; the mount keeps it alive.
func createNetNS(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o444)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: a crash left it, or the directory is reused: Sweep or Close the old sandbox first", err)
		}
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // see inNS
		home, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("this thread's network namespace: %w", err)
			return
		}
		defer home.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare a network namespace: %w", err)
			leave(home)
			return
		}
		// thread-self: this thread's namespace; /proc/self is the
		// thread group leader's.
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount the namespace on %s: %w", path, err)
		} else {
			errc <- nil
		}
		leave(home)
	}()
	return <-errc
}

// isNetNSFile reports whether path is a namespace file (nsfs), such as a
// bind mount of /proc/PID/ns/net.
func isNetNSFile(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return st.Type == unix.NSFS_MAGIC, nil
}

// removeNetNS undoes createNetNS: it detaches every namespace mounted on
// path, then removes the file. The namespace itself goes when nothing
// else holds it (a jailed VMM in it keeps it until it exits). A path that
// does not exist is removed already; one that holds something other than
// a namespace or the empty file createNetNS makes is left alone.
func removeNetNS(path string) error {
	// A mount stacked twice (a retried mount) needs two unmounts; more
	// than a few is not ours.
	for i := 0; ; i++ {
		ns, err := isNetNSFile(path)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("network namespace %s: %w", path, err)
		}
		if !ns {
			break
		}
		if i == 8 {
			return fmt.Errorf("network namespace %s: still mounted after %d unmounts", path, i)
		}
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("network namespace %s: unmount: %w", path, err)
		}
	}
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != 0 {
		return fmt.Errorf("network namespace %s: a %v of %d bytes, not the empty file hostnet makes: left alone; remove it by hand", path, fi.Mode().Type(), fi.Size())
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	return nil
}

// writeSysctl sets a /proc/sys value in the calling thread's network
// namespace (run it through inNS).
func writeSysctl(name, value string) error {
	path := "/proc/sys/" + name
	if b, err := os.ReadFile(path); err == nil && string(b) == value+"\n" {
		return nil // writing ip_forward resets per-interface settings; skip it when it is set
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
