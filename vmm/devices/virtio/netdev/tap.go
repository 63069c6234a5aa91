package netdev

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// tunPath is the tun/tap clone device.
const tunPath = "/dev/net/tun"

// MaxTapName is the longest interface name Linux accepts: IFNAMSIZ (16)
// less the terminating NUL (include/uapi/linux/if.h).
const MaxTapName = unix.IFNAMSIZ - 1

// ErrNoTap means the named tap does not exist in the VMM's network
// namespace. The VMM never creates taps: the host agent does, with the
// addresses and routes the VM needs, before starting the VMM.
var ErrNoTap = errors.New("no such device in this network namespace")

// CheckTapName applies the kernel's rules for interface names
// (dev_valid_name in net/core/dev.c): 1 to 15 bytes, not "." or "..", and
// no '/', ':' or white space.
func CheckTapName(name string) error {
	switch {
	case name == "":
		return errors.New("tap: no interface name")
	case len(name) > MaxTapName:
		return fmt.Errorf("tap %q: name longer than %d bytes", name, MaxTapName)
	case name == "." || name == "..":
		return fmt.Errorf("tap %q: not an interface name", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("tap %q: interface names cannot hold '/', ':' or white space", name)
	}
	return nil
}

// openTap attaches to the existing persistent tap called name, in the
// calling thread's network namespace, as a single-queue tap with 12-byte
// virtio-net headers and no offloads. The file is non-blocking, so reads
// wait in Go's poller and Close wakes them.
func openTap(name string) (*os.File, error) {
	if err := CheckTapName(name); err != nil {
		return nil, err
	}
	// TUNSETIFF on a name that does not exist creates a tap when the
	// caller has CAP_NET_ADMIN, and fails with EPERM when it has not:
	// look first, to attach only and to say what is wrong.
	if err := tapExists(name); err != nil {
		return nil, err
	}
	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV):
			return nil, fmt.Errorf("tap %s: open %s: %w: load the tun module (modprobe tun), or give the VMM's jail the device", name, tunPath, err)
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("tap %s: open %s: %w: the VMM's uid %d needs read-write access to it", name, tunPath, err, os.Geteuid())
		}
		return nil, fmt.Errorf("tap %s: open %s: %w", name, tunPath, err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	// Attaching replaces the tap's IFF_NO_PI and IFF_VNET_HDR with ours
	// (tun_set_iff), whatever it was created with.
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return nil, attachError(name, err)
	}
	got, err := unix.NewIfreq("")
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, got); err != nil {
		return nil, fmt.Errorf("tap %s: TUNGETIFF: %w", name, err)
	}
	if got.Uint16()&unix.IFF_PERSIST == 0 {
		// Our TUNSETIFF made it: the tap vanished after tapExists looked.
		// Closing the descriptor removes this one again.
		return nil, fmt.Errorf("tap %s: %w: create it first (kindlingd does, in the VM's netns)", name, ErrNoTap)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HeaderSize); err != nil {
		return nil, fmt.Errorf("tap %s: set the virtio-net header size to %d (TUNSETVNETHDRSZ): %w", name, HeaderSize, err)
	}
	// No offloads: the host stack then checksums and segments every frame
	// before the tap hands it over, so what the guest receives needs no
	// feature it did not negotiate. The tap's creator may have left some on.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return nil, fmt.Errorf("tap %s: turn offloads off (TUNSETOFFLOAD): %w", name, err)
	}
	// Non-blocking only now: a tun descriptor cannot join epoll before
	// TUNSETIFF, and os.NewFile registers a non-blocking one with the
	// poller.
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ok = true
	return os.NewFile(uintptr(fd), "tap "+name), nil
}

// tapExists looks name up in the calling thread's network namespace.
func tapExists(name string) error {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap %s: look it up: %w", name, err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	// Any socket answers SIOCGIFINDEX for the namespace it was made in.
	if err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("tap %s: %w: create it first (kindlingd does, in the VM's netns)", name, ErrNoTap)
		}
		return fmt.Errorf("tap %s: look it up (SIOCGIFINDEX): %w", name, err)
	}
	return nil
}

// attachError explains a TUNSETIFF failure on an existing interface
// (tun_set_iff and tun_attach in drivers/net/tun.c).
func attachError(name string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("tap %s: attach: %w: the tap's owner or group is not this VMM's (uid %d, gid %d): create it for the VMM's uid (ip tuntap add dev %s mode tap user %d)",
			name, err, os.Geteuid(), os.Getegid(), name, os.Geteuid())
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("tap %s: attach: %w: another process holds it open (a VMM still running?); each VM needs its own tap", name, err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("tap %s: attach: %w: the interface exists but is not a single-queue tap (a tun device, a multi-queue tap, or another kind of link)", name, err)
	}
	return fmt.Errorf("tap %s: attach (TUNSETIFF): %w", name, err)
}
