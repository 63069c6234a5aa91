package guestnet

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"

	"github.com/vishvananda/netlink"
)

// Apply configures the guest's interface, in the calling thread's network
// namespace, from c: the first interface (by index) that is not loopback
// and has an Ethernet address (eth0 under virtio-net) gets c's address and
// is brought up, and the default route goes via c's gateway. Applying the
// same Config again changes nothing. It returns the interface's name.
func Apply(c Config) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	link, err := ethernetLink()
	if err != nil {
		return "", err
	}
	name := link.Attrs().Name
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.Addr.Addr().AsSlice(), Mask: net.CIDRMask(c.Addr.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return name, fmt.Errorf("%s: address %v: %w", name, c.Addr, err)
	}
	// Up before the route: a gateway is reachable only over a link that
	// is up.
	if err := netlink.LinkSetUp(link); err != nil {
		return name, fmt.Errorf("%s: up: %w", name, err)
	}
	def := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: c.Gateway.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if err := netlink.RouteReplace(def); err != nil {
		return name, fmt.Errorf("%s: default route via %v: %w", name, c.Gateway, err)
	}
	return name, nil
}

// ethernetLink is the first non-loopback Ethernet interface.
func ethernetLink() (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	sort.Slice(links, func(i, k int) bool { return links[i].Attrs().Index < links[k].Attrs().Index })
	var seen []string
	for _, l := range links {
		a := l.Attrs()
		seen = append(seen, a.Name)
		if a.Flags&net.FlagLoopback != 0 || a.EncapType != "ether" || len(a.HardwareAddr) != 6 {
			continue
		}
		return l, nil
	}
	return nil, fmt.Errorf("no Ethernet interface to configure (have %v): the VM needs a virtio-net device (network_interfaces in the VMM config) and a kernel with CONFIG_VIRTIO_NET", seen)
}

// WriteResolvConf writes c's name servers to path (/etc/resolv.conf in
// the guest), making its directory if need be; with no name servers it
// writes nothing.
func WriteResolvConf(c Config, path string) error {
	if len(c.DNS) == 0 {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	// Replace, not truncate: a read-only or bind-mounted file fails
	// whole rather than half written.
	tmp := path + ".kindling"
	if err := os.WriteFile(tmp, []byte(c.ResolvConf()), 0o644); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}
