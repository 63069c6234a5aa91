// Package testnet is test support for network devices: a private network
// namespace with persistent taps in it, made the way kindlingd makes a
// VM's, and the ARP and ICMP frames a simulated guest exchanges with the
// host's stack through them. Helpers fail or skip the test rather than
// return errors; nothing outside tests imports it.
package testnet

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netns is a network namespace that lives on one OS thread: work that
// must happen inside it (making taps, opening them, creating sockets)
// runs on that thread through Do.
type Netns struct {
	work chan func()
}

// Require skips the test, saying why, where taps in a private namespace
// cannot be had: not root, or no /dev/net/tun.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces and taps need root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: no tun/tap device: %v", err)
	}
}

// New makes a network namespace for the test (see Require for when it
// skips). Its thread ends with the test; the namespace goes when nothing
// holds it any more (a tap's open descriptor does).
func New(t testing.TB) *Netns {
	t.Helper()
	Require(t)
	n := &Netns{work: make(chan func())}
	ready := make(chan error)
	go func() {
		// Never unlocked: when this goroutine returns the runtime ends the
		// thread, so no other goroutine ever runs in the namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare a network namespace: %w", err)
			return
		}
		// No IPv6: its router and neighbour solicitations would be the only
		// traffic the host sends unasked, and tests want a quiet link.
		// /proc/sys/net answers for the opening thread's namespace.
		for _, p := range []string{"all", "default"} {
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+p+"/disable_ipv6", []byte("1"), 0)
		}
		ready <- nil
		for fn := range n.work {
			fn()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(n.work) })
	return n
}

// Do runs fn on the namespace's thread and returns its error.
func (n *Netns) Do(fn func() error) error {
	errc := make(chan error)
	n.work <- func() { errc <- fn() }
	return <-errc
}

// AddTap makes a persistent tap called name with IFF_NO_PI and
// IFF_VNET_HDR, owned by this process's uid, gives it hostCIDR (for
// example "172.16.0.1/30") and brings it up.
func (n *Netns) AddTap(t testing.TB, name, hostCIDR string) {
	t.Helper()
	n.AddTapOwnedBy(t, name, hostCIDR, os.Geteuid())
}

// AddTapOwnedBy is AddTap for a tap owned by uid (its group is this
// process's); an empty hostCIDR leaves it without an address.
func (n *Netns) AddTapOwnedBy(t testing.TB, name, hostCIDR string, uid int) {
	t.Helper()
	err := n.Do(func() error {
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Owner: uint32(uid), Group: uint32(os.Getegid())}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		// Persistent: the tap stays without them, free for the device.
		for _, f := range tap.Fds {
			f.Close()
		}
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if hostCIDR == "" {
			return netlink.LinkSetUp(link)
		}
		addr, err := netlink.ParseAddr(hostCIDR)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("tap %s: add %s: %w", name, hostCIDR, err)
		}
		return netlink.LinkSetUp(link)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// AddTun makes a persistent tun (layer 3) interface: an interface that
// is not a tap, for tests of what attaching to one says.
func (n *Netns) AddTun(t testing.TB, name string) {
	t.Helper()
	if err := n.Do(func() error {
		tun := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TUN,
			Flags: netlink.TUNTAP_NO_PI, Owner: uint32(os.Geteuid()), Group: uint32(os.Getegid())}
		if err := netlink.LinkAdd(tun); err != nil {
			return fmt.Errorf("create tun %s: %w", name, err)
		}
		for _, f := range tun.Fds {
			f.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// AddNeighbor tells the host that ip is at mac on the interface called
// dev, so it sends to ip without asking over ARP first.
// WaitUp waits until the link is operationally up. A tap's carrier comes
// on when a process attaches to it, but the kernel's link watcher
// activates its queue later (up to a second, more under load): until
// then the host drops what it sends there.
func (n *Netns) WaitUp(t testing.TB, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var state netlink.LinkOperState
		if err := n.Do(func() error {
			l, err := netlink.LinkByName(name)
			if err == nil {
				state = l.Attrs().OperState
			}
			return err
		}); err != nil {
			t.Fatalf("link %s: %v", name, err)
		}
		if state == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("link %s is still %v after 10 s", name, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (n *Netns) AddNeighbor(t testing.TB, dev string, ip netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	if err := n.Do(func() error {
		link, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_INET,
			State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac})
	}); err != nil {
		t.Fatal(err)
	}
}

// ReadFrames is how many frames the process attached to the tap called
// name has read from it: a tap counts a frame as transmitted when its
// reader takes it (tun_put_user), not when the host queues it.
func (n *Netns) ReadFrames(t testing.TB, name string) uint64 {
	t.Helper()
	var frames uint64
	if err := n.Do(func() error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if st := link.Attrs().Statistics; st != nil {
			frames = st.TxPackets
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return frames
}

// SendUDP sends payload from inside the namespace to dst:port; the host
// resolves dst over whichever tap routes to it, so this makes the host
// ARP for dst through the tap.
func (n *Netns) SendUDP(t testing.TB, dst netip.Addr, port int, payload []byte) {
	t.Helper()
	if err := n.Do(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(port))))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// Ethernet and ARP numbers (IEEE 802.3, RFC 826) and IPv4 and ICMP ones
// (RFC 791, RFC 792).
const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	ethHeader     = 14
	arpRequest    = 1
	arpReply      = 2
	ipv4Header    = 20
	protoICMP     = 1
	icmpEchoReply = 0
	icmpEcho      = 8
)

// Broadcast is the Ethernet broadcast address.
var Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ethernet(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, ethHeader, ethHeader+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], etherType)
	return append(f, payload...)
}

// ARP operations (RFC 826).
const (
	ARPRequestOp = 1
	ARPReplyOp   = 2
)

func arp(op uint16, dst, mac net.HardwareAddr, ip netip.Addr, targetMAC net.HardwareAddr, target netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1) // Ethernet
	binary.BigEndian.PutUint16(a[2:], etherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:14], mac)
	ip4 := ip.As4()
	copy(a[14:18], ip4[:])
	copy(a[18:24], targetMAC)
	tgt := target.As4()
	copy(a[24:28], tgt[:])
	return ethernet(dst, mac, etherTypeARP, a)
}

// ARPRequest is a broadcast frame from (mac, ip) asking who has target.
func ARPRequest(mac net.HardwareAddr, ip, target netip.Addr) []byte {
	return arp(ARPRequestOp, Broadcast, mac, ip, make(net.HardwareAddr, 6), target)
}

// ARPReply is a frame from (mac, ip) telling (toMAC, toIP) that ip is at
// mac.
func ARPReply(mac net.HardwareAddr, ip netip.Addr, toMAC net.HardwareAddr, toIP netip.Addr) []byte {
	return arp(ARPReplyOp, toMAC, mac, ip, toMAC, toIP)
}

// ARP is a parsed ARP frame for IPv4 over Ethernet.
type ARP struct {
	Op                   uint16
	DstMAC               net.HardwareAddr // the frame's destination
	SenderMAC, TargetMAC net.HardwareAddr
	SenderIP, TargetIP   netip.Addr
}

// ParseARP reads an ARP frame.
func ParseARP(f []byte) (ARP, bool) {
	if len(f) < ethHeader+28 || binary.BigEndian.Uint16(f[12:]) != etherTypeARP {
		return ARP{}, false
	}
	a := f[ethHeader:]
	return ARP{
		Op: binary.BigEndian.Uint16(a[6:]), DstMAC: net.HardwareAddr(f[0:6]),
		SenderMAC: net.HardwareAddr(a[8:14]), SenderIP: netip.AddrFrom4([4]byte(a[14:18])),
		TargetMAC: net.HardwareAddr(a[18:24]), TargetIP: netip.AddrFrom4([4]byte(a[24:28])),
	}, true
}

// Checksum is the Internet checksum (RFC 1071).
func Checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// EchoRequest is an ICMP echo request frame from (srcMAC, src) to
// (dstMAC, dst), with valid IPv4 and ICMP checksums.
func EchoRequest(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	icmp := make([]byte, 8, 8+len(payload))
	icmp[0] = icmpEcho
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	icmp = append(icmp, payload...)
	binary.BigEndian.PutUint16(icmp[2:], Checksum(icmp))
	ip := make([]byte, ipv4Header, ipv4Header+len(icmp))
	ip[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(ip[2:], uint16(ipv4Header+len(icmp)))
	binary.BigEndian.PutUint16(ip[4:], id)
	ip[6] = 0x40 // don't fragment
	ip[8] = 64   // TTL
	ip[9] = protoICMP
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip))
	return ethernet(dstMAC, srcMAC, etherTypeIPv4, append(ip, icmp...))
}

// Echo is a parsed ICMP echo reply.
type Echo struct {
	SrcMAC, DstMAC net.HardwareAddr
	Src, Dst       netip.Addr
	ID, Seq        uint16
	Payload        []byte
}

// ParseEchoReply reads an ICMP echo reply frame, checking both checksums.
func ParseEchoReply(f []byte) (Echo, bool) {
	if len(f) < ethHeader+ipv4Header+8 || binary.BigEndian.Uint16(f[12:]) != etherTypeIPv4 {
		return Echo{}, false
	}
	ip := f[ethHeader:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || ihl < ipv4Header || total < ihl+8 || total > len(ip) || ip[9] != protoICMP {
		return Echo{}, false
	}
	if Checksum(ip[:ihl]) != 0 {
		return Echo{}, false
	}
	icmp := ip[ihl:total]
	if icmp[0] != icmpEchoReply || Checksum(icmp) != 0 {
		return Echo{}, false
	}
	return Echo{
		DstMAC: net.HardwareAddr(f[0:6]), SrcMAC: net.HardwareAddr(f[6:12]),
		Src: netip.AddrFrom4([4]byte(ip[12:16])), Dst: netip.AddrFrom4([4]byte(ip[16:20])),
		ID: binary.BigEndian.Uint16(icmp[4:]), Seq: binary.BigEndian.Uint16(icmp[6:]),
		Payload: icmp[8:],
	}, true
}

// Describe names a frame for test failures: its Ethernet type and length.
func Describe(f []byte) string {
	if len(f) < ethHeader {
		return fmt.Sprintf("%d-byte runt", len(f))
	}
	return fmt.Sprintf("%d-byte frame %v -> %v, type %#04x", len(f), net.HardwareAddr(f[6:12]), net.HardwareAddr(f[0:6]), binary.BigEndian.Uint16(f[12:]))
}
