package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// HostConfig says where a Host puts the host side of sandboxes' networks.
type HostConfig struct {
	// NetNS is the namespace the sandboxes' veths, NAT and filters live
	// in, as a path: /proc/PID/ns/net or a bind mount of one. Empty means
	// the caller's own, the root namespace for kindlingd; the tests pass
	// a scratch one.
	NetNS string
	// Pool is the IPv4 network sandbox veths are cut from, a /30 each;
	// zero means DefaultPool. It must not overlap the host's own networks
	// or guestnet's 172.16.0.0/30, and must not change while sandboxes
	// of another pool run: their veths keep the old addresses while the
	// NAT and filters follow the new one.
	Pool netip.Prefix
}

// Host is the host side of every sandbox's network in one namespace.
// Make one per namespace (one per kindlingd); its methods are safe for
// concurrent use.
type Host struct {
	ns   netns.NsHandle
	pool pool

	// mu serialises the host namespace's shared state: claiming a slot
	// (list the veths, then create one), installing the table, sweeping.
	mu        sync.Mutex
	installed bool // the table and ip_forward are in place
}

// ErrPoolFull means every slot of the pool has a veth: as many sandboxes
// with Egress as the pool holds are running, or leftovers wait for Sweep.
var ErrPoolFull = errors.New("hostnet: the address pool is full")

// NewHost opens the namespace cfg names and checks its pool. It changes
// nothing: the host's table and ip_forward are set by the first Setup
// with Egress, so a host whose functions never use the network never has
// forwarding turned on.
func NewHost(cfg HostConfig) (*Host, error) {
	p, err := newPool(cfg.Pool)
	if err != nil {
		return nil, err
	}
	var ns netns.NsHandle
	if cfg.NetNS == "" {
		// The calling thread's namespace, read on a locked thread:
		// /proc/self is the thread group leader's, which a locked
		// goroutine elsewhere may have moved.
		runtime.LockOSThread()
		ns, err = netns.Get()
		runtime.UnlockOSThread()
	} else {
		ns, err = netns.GetFromPath(cfg.NetNS)
	}
	if err != nil {
		return nil, fmt.Errorf("hostnet: open the host's network namespace %q: %w", cfg.NetNS, err)
	}
	return &Host{ns: ns, pool: p}, nil
}

// Pool is the network the Host's sandboxes take their addresses from.
func (h *Host) Pool() netip.Prefix { return h.pool.prefix }

// Close lets go of the host's namespace. It leaves every sandbox, veth
// and rule in place: sandboxes outlive a kindlingd restart, and the next
// Host finds them (Reattach) or removes them (Sweep).
func (h *Host) Close() error { return h.ns.Close() }

// ensureHostRules turns forwarding on and installs the host's table,
// once per Host (each new Host replaces the table whole, so a restarted
// kindlingd brings an old one up to date). Call with h.mu held.
func (h *Host) ensureHostRules() error {
	if h.installed {
		return nil
	}
	if err := inNS(h.ns, func() error { return writeSysctl("net/ipv4/ip_forward", "1") }); err != nil {
		return fmt.Errorf("hostnet: enable IPv4 forwarding: %w", err)
	}
	if err := installHostTable(h.ns, h.pool.prefix); err != nil {
		return fmt.Errorf("hostnet: %w", err)
	}
	h.installed = true
	return nil
}

// claimVeth makes sandbox id's veth in the first free slot: the host end
// (vethName, aliased with the ID, the slot's host address, up) in the
// Host's namespace, the other end (PeerName, unconfigured) in sns. The
// veth's creation is the claim: a slot whose name exists is taken,
// whoever made it. Call with h.mu held.
func (h *Host) claimVeth(id string, sns netns.NsHandle) (slot int, err error) {
	err = inNS(h.ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		used := map[int]bool{}
		for _, l := range links {
			if n, ok := parseVethName(l.Attrs().Name); ok {
				used[n] = true
			}
		}
		for s := 0; s < h.pool.slots(); s++ {
			if used[s] {
				continue
			}
			name := vethName(s)
			err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name},
				PeerName: PeerName, PeerNamespace: netlink.NsFd(int(sns))})
			if errors.Is(err, unix.EEXIST) {
				continue // made since the listing, by another process
			}
			if err != nil {
				return fmt.Errorf("create veth %s: %w", name, err)
			}
			slot = s
			if err := h.configureHostEnd(name, id, s); err != nil {
				if l, lerr := netlink.LinkByName(name); lerr == nil {
					netlink.LinkDel(l)
				}
				return fmt.Errorf("veth %s: %w", name, err)
			}
			return nil
		}
		return fmt.Errorf("%w: %d sandboxes with Egress in %v: Sweep leftovers, or configure a larger pool", ErrPoolFull, h.pool.slots(), h.pool.prefix)
	})
	return slot, err
}

// configureHostEnd sets up the host end of slot's new veth; it runs in
// the Host's namespace.
func (h *Host) configureHostEnd(name, id string, slot int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetAlias(link, aliasPrefix+id); err != nil {
		return fmt.Errorf("alias: %w", err)
	}
	// A slot's last sandbox may have left NAT entries; replies to them
	// must not reach this one.
	if err := flushConntrack(h.pool, slot); err != nil {
		return err
	}
	// No IPv6 on the host end: the table filters IPv4 only, and a
	// link-local address would let the sandbox reach the host's
	// services over IPv6. Strict reverse-path filtering drops a sandbox
	// sending as another's address.
	if err := writeSysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil {
		return err
	}
	if err := writeSysctl("net/ipv4/conf/"+name+"/rp_filter", "1"); err != nil {
		return err
	}
	hostAddr, _ := h.pool.link(slot)
	if err := netlink.AddrAdd(link, nlAddr(hostAddr)); err != nil {
		return fmt.Errorf("address %v: %w", hostAddr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	return nil
}

// removeVeth deletes sandbox id's veth, if the link called name is still
// it (a name goes to a new sandbox once its veth is gone), and its NAT
// entries. Deleting one end deletes the other. Call with h.mu held.
func (h *Host) removeVeth(name, id string) error {
	slot, ok := parseVethName(name)
	if !ok {
		return fmt.Errorf("hostnet: %q is not a sandbox veth's name", name)
	}
	return inNS(h.ns, func() error {
		link, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("hostnet: veth %s: %w", name, err)
		}
		if link.Attrs().Alias != aliasPrefix+id {
			return nil // gone, and the name taken by another sandbox
		}
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("hostnet: delete veth %s: %w", name, err)
		}
		return flushConntrack(h.pool, slot)
	})
}

// flushConntrack forgets every connection to or from slot's addresses;
// it runs in the Host's namespace.
func flushConntrack(p pool, slot int) error {
	_, sb := p.link(slot)
	n := &net.IPNet{IP: sb.Masked().Addr().AsSlice(), Mask: net.CIDRMask(sb.Bits(), 32)}
	src, dst := &netlink.ConntrackFilter{}, &netlink.ConntrackFilter{}
	if err := src.AddIPNet(netlink.ConntrackOrigSrcIP, n); err != nil {
		return err
	}
	if err := dst.AddIPNet(netlink.ConntrackOrigDstIP, n); err != nil {
		return err
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, src, dst); err != nil {
		return fmt.Errorf("forget connections of %v: %w (the kernel needs CONFIG_NF_CT_NETLINK)", n, err)
	}
	return nil
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}
