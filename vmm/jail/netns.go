package jail

import (
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// checkNetNS checks that path is a network namespace file (nsfs, of type
// CLONE_NEWNET) and not the calling thread's own namespace: a jail never
// shares the host's network.
func checkNetNS(path string) error {
	// Following symlinks: /proc/PID/ns/net is one.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return specErr("NetNS: %v", err)
	}
	defer f.Close()
	return checkNetNSFile(f, path)
}

func checkNetNSFile(f *os.File, path string) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return specErr("NetNS %s: %v", path, err)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return specErr("NetNS %s is not a namespace file (nsfs): give a bind mount of a /proc/PID/ns/net, such as hostnet's Sandbox.NetNSPath", path)
	}
	// NS_GET_NSTYPE: Linux 4.11.
	typ, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		return specErr("NetNS %s: NS_GET_NSTYPE: %v", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		return specErr("NetNS %s is a namespace of another kind (CLONE flag %#x), not a network namespace", path, typ)
	}
	theirs, err := f.Stat()
	if err != nil {
		return specErr("NetNS %s: %v", path, err)
	}
	// The calling thread's namespace: /proc/self is the thread group
	// leader's, which may differ.
	runtime.LockOSThread()
	ours, err := os.Stat("/proc/thread-self/ns/net")
	runtime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("own network namespace: %w", err)
	}
	if os.SameFile(theirs, ours) {
		return specErr("NetNS %s is the caller's own network namespace: a jail never shares the host's network; give the sandbox's", path)
	}
	return nil
}

// joinNetNS moves the calling thread, the one that execs the program,
// into the network namespace at path, having checked it as Command did
// (the file may have changed since).
func joinNetNS(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := checkNetNSFile(f, path); err != nil {
		return err
	}
	if err := unix.Setns(int(f.Fd()), syscall.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	return nil
}
