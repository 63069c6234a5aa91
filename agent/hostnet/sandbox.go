package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kindlingvm/kindling/agent/guestnet"
)

// Names inside a sandbox's namespace, and of its namespace file.
const (
	// NetNSName is the namespace file in Options.Dir.
	NetNSName = "netns"
	// TapName is the microVM's tap: the name the VMM's config
	// (network_interfaces[].tap) gives.
	TapName = "tap0"
	// PeerName is the sandbox's end of its veth.
	PeerName = "eth0"
)

// TapAddr is the host's end of every tap: the guests' gateway.
var TapAddr = netip.PrefixFrom(guestnet.Gateway, guestnet.Addr.Bits())

// Options is one sandbox's network.
type Options struct {
	// ID is the sandbox's ID, unique among the host's live sandboxes;
	// its veth carries it (as its alias) for Sweep and Reattach.
	ID string
	// Dir is the sandbox's directory, which must exist: the namespace
	// file is Dir/netns. Sweep finds leftovers at ROOT/ID/netns, so give
	// ROOT/ID (kindlingd's sandboxes/ID).
	Dir string
	// Policy is None or Egress; "" is None.
	Policy Policy
	// Tap makes the microVM's tap, TapName, in the namespace: persistent,
	// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, owned by TapUID and TapGID so that
	// the jailed, unprivileged VMM may attach to it, with TapAddr and
	// guestnet.GatewayMAC on the host's end.
	Tap bool
	// TapUID and TapGID are the jailed VMM's uid and gid (jail.UniqueID);
	// never 0.
	TapUID, TapGID int
}

// Sandbox is one sandbox's network, from Setup or Reattach, until Close.
type Sandbox struct {
	host   *Host
	id     string
	nsPath string
	policy Policy
	tap    bool
	veth   string       // the host end, "" without Egress
	addr   netip.Prefix // the sandbox's end of the veth
	gw     netip.Addr   // the host's end

	mu     sync.Mutex
	closed bool
}

// ID is the sandbox's ID.
func (s *Sandbox) ID() string { return s.id }

// NetNSPath is the namespace file: what a process sandbox is started in
// (setns) and what the jail joins (jail.Spec.NetNS).
func (s *Sandbox) NetNSPath() string { return s.nsPath }

// Do runs fn on a thread that has joined the sandbox's namespace, then
// takes the thread home (inNS): a process fn starts is forked from that
// thread, so it runs in the sandbox's namespace.
func (s *Sandbox) Do(fn func() error) error {
	ns, err := netns.GetFromPath(s.nsPath)
	if err != nil {
		return fmt.Errorf("hostnet: sandbox %s: its network namespace: %w", s.id, err)
	}
	defer ns.Close()
	return inNS(ns, fn)
}

// Policy is the sandbox's network policy.
func (s *Sandbox) Policy() Policy { return s.policy }

// Tap says whether the namespace has the microVM's tap.
func (s *Sandbox) Tap() bool { return s.tap }

// Veth is the host end's name, "" without Egress.
func (s *Sandbox) Veth() string { return s.veth }

// Addr is the sandbox's address on its veth, the source of everything it
// sends out before the host's NAT; zero without Egress.
func (s *Sandbox) Addr() netip.Prefix { return s.addr }

// Gateway is the host's end of the veth, the sandbox's default route;
// zero without Egress.
func (s *Sandbox) Gateway() netip.Addr { return s.gw }

// Setup makes sandbox o's network namespace and applies its policy. On
// failure it leaves nothing behind.
func (h *Host) Setup(o Options) (sb *Sandbox, err error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Policy == "" {
		o.Policy = None
	}
	path := filepath.Join(o.Dir, NetNSName)
	if err := createNetNS(path); err != nil {
		return nil, fmt.Errorf("hostnet: sandbox %s: network namespace: %w", o.ID, err)
	}
	sb = &Sandbox{host: h, id: o.ID, nsPath: path, policy: o.Policy, tap: o.Tap}
	defer func() {
		if err != nil {
			if cerr := sb.Close(); cerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
			}
			sb = nil
		}
	}()
	sns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("hostnet: sandbox %s: open %s: %w", o.ID, path, err)
	}
	defer sns.Close()
	if err := inNS(sns, func() error { return prepareNS(o) }); err != nil {
		return nil, fmt.Errorf("hostnet: sandbox %s: %w", o.ID, err)
	}
	if o.Policy != Egress {
		return sb, nil
	}

	h.mu.Lock()
	err = h.ensureHostRules()
	var slot int
	if err == nil {
		slot, err = h.claimVeth(o.ID, sns)
	}
	h.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("hostnet: sandbox %s: %w", o.ID, err)
	}
	hostEnd, addr := h.pool.link(slot)
	sb.veth, sb.addr, sb.gw = vethName(slot), addr, hostEnd.Addr()
	if err := inNS(sns, func() error { return configurePeer(addr, sb.gw) }); err != nil {
		return nil, fmt.Errorf("hostnet: sandbox %s: %s: %w", o.ID, PeerName, err)
	}
	if o.Tap {
		if err := installSandboxTable(sns, TapName, PeerName); err != nil {
			return nil, fmt.Errorf("hostnet: sandbox %s: %w", o.ID, err)
		}
	}
	return sb, nil
}

func (o *Options) validate() error {
	if o.ID == "" || strings.ContainsAny(o.ID, "/\x00") || len(o.ID) > 200 {
		return fmt.Errorf("hostnet: sandbox ID %q: want 1 to 200 bytes, no '/' or NUL", o.ID)
	}
	if !filepath.IsAbs(o.Dir) {
		return fmt.Errorf("hostnet: sandbox %s: Dir %q: want an absolute path", o.ID, o.Dir)
	}
	if _, err := ParsePolicy(string(o.Policy)); err != nil {
		return fmt.Errorf("hostnet: sandbox %s: %w", o.ID, err)
	}
	if o.Tap && (o.TapUID <= 0 || o.TapGID <= 0) {
		return fmt.Errorf("hostnet: sandbox %s: tap owner %d:%d: want the jailed VMM's uid and gid (jail.UniqueID), never root", o.ID, o.TapUID, o.TapGID)
	}
	return nil
}

// prepareNS sets up a new sandbox namespace from inside: no IPv6 (the
// filters are IPv4 only), loopback up, and the tap. It runs in the
// sandbox's namespace.
func prepareNS(o Options) error {
	// "default" before any interface is made or moved in: they inherit it.
	for _, c := range []string{"all", "default"} {
		if err := writeSysctl("net/ipv6/conf/"+c+"/disable_ipv6", "1"); err != nil {
			return err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if !o.Tap {
		return nil
	}
	if err := makeTap(o.TapUID, o.TapGID); err != nil {
		return fmt.Errorf("tap %s: %w", TapName, err)
	}
	if o.Policy == Egress {
		// The guest's packets cross this namespace: forward them, and
		// only from the guest's own address (rp_filter: a spoofed
		// source arriving on the tap is dropped).
		if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		if err := writeSysctl("net/ipv4/conf/"+TapName+"/rp_filter", "1"); err != nil {
			return err
		}
	}
	return nil
}

// makeTap makes the persistent tap, owned by uid and gid, with the
// guests' gateway address and MAC, up. It runs in the sandbox's namespace.
func makeTap(uid, gid int) error {
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: TapName}, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Owner: uint32(uid), Group: uint32(gid)}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("create (is /dev/net/tun there?): %w", err)
	}
	// Persistent: it stays without our descriptors, for the VMM.
	for _, f := range tap.Fds {
		f.Close()
	}
	link, err := netlink.LinkByName(TapName)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetHardwareAddr(link, guestnet.GatewayMAC); err != nil {
		return fmt.Errorf("MAC %v: %w", guestnet.GatewayMAC, err)
	}
	if err := netlink.AddrAdd(link, nlAddr(TapAddr)); err != nil {
		return fmt.Errorf("address %v: %w", TapAddr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	return nil
}

// configurePeer gives the sandbox's end of the veth its address and the
// default route via the host's end. It runs in the sandbox's namespace.
func configurePeer(addr netip.Prefix, gw netip.Addr) error {
	link, err := netlink.LinkByName(PeerName)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(link, nlAddr(addr)); err != nil {
		return fmt.Errorf("address %v: %w", addr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	def := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if err := netlink.RouteAdd(def); err != nil {
		return fmt.Errorf("default route via %v: %w", gw, err)
	}
	return nil
}

// Close removes the sandbox's network: its veth (both ends) and its NAT
// entries, and the namespace's mount and file. Rules in the namespace go
// with it; the host's table has none per sandbox. A process still in the
// namespace (a VMM yet to exit) keeps it, and its tap, until it exits.
// Close again after a failure retries what is left; after a success it
// does nothing.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	var errs []error
	if s.veth != "" {
		s.host.mu.Lock()
		errs = append(errs, s.host.removeVeth(s.veth, s.id))
		s.host.mu.Unlock()
	}
	if err := removeNetNS(s.nsPath); err != nil {
		errs = append(errs, fmt.Errorf("hostnet: sandbox %s: %w", s.id, err))
	}
	err := errors.Join(errs...)
	s.closed = err == nil
	return err
}

// Reattach finds sandbox id's network again after a restart of the
// caller, from the namespace file in dir and the veth aliased with id,
// for a Close later.
func (h *Host) Reattach(id, dir string) (*Sandbox, error) {
	path := filepath.Join(dir, NetNSName)
	ok, err := isNetNSFile(path)
	if err != nil || !ok {
		return nil, fmt.Errorf("hostnet: sandbox %s: %s is not a network namespace (%v): the sandbox's network is gone; stop the sandbox", id, path, err)
	}
	sb := &Sandbox{host: h, id: id, nsPath: path, policy: None}
	h.mu.Lock()
	defer h.mu.Unlock()
	err = inNS(h.ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			slot, ok := parseVethName(l.Attrs().Name)
			if ok && l.Attrs().Alias == aliasPrefix+id {
				hostEnd, addr := h.pool.link(slot)
				sb.policy, sb.veth, sb.addr, sb.gw = Egress, l.Attrs().Name, addr, hostEnd.Addr()
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hostnet: sandbox %s: find its veth: %w", id, err)
	}
	sns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("hostnet: sandbox %s: %w", id, err)
	}
	defer sns.Close()
	err = inNS(sns, func() error {
		_, err := netlink.LinkByName(TapName)
		sb.tap = err == nil
		return nil
	})
	return sb, err
}
