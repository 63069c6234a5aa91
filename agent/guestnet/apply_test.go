package guestnet

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/internal/testnet"
)

// Apply in a scratch namespace, with a veth standing in for virtio-net's
// eth0 and its peer, in a second namespace, for the host's end of the
// tap: the guest end gets the address, comes up, routes by default via
// the gateway, and a datagram to an address beyond the gateway leaves
// through it. Applying again changes nothing.
func TestApplyInANamespace(t *testing.T) {
	guest, host := testnet.New(t), testnet.New(t)
	var hostFd int
	if err := host.Do(func() error {
		var err error
		hostFd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(hostFd)
	if err := guest.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "host0", PeerNamespace: netlink.NsFd(hostFd)})
	}); err != nil {
		t.Fatal(err)
	}
	// The host end: the gateway's address, and a catcher for what the
	// guest sends beyond it.
	beyond := netip.MustParseAddr("198.51.100.7")
	var catcher *net.UDPConn
	if err := host.Do(func() error {
		l, err := netlink.LinkByName("host0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: Gateway.AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: beyond.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		catcher, err = net.ListenUDP("udp4", &net.UDPAddr{IP: beyond.AsSlice(), Port: 5353})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer catcher.Close()

	c := Default(netip.MustParseAddr("192.0.2.53"))
	for i := 0; i < 2; i++ {
		var name string
		if err := guest.Do(func() (err error) { name, err = Apply(c); return err }); err != nil {
			t.Fatalf("apply #%d: %v", i+1, err)
		}
		if name != "eth0" {
			t.Errorf("configured %s, want eth0", name)
		}
	}
	if err := guest.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			t.Error("eth0 is down")
		}
		addrs, err := netlink.AddrList(l, unix.AF_INET)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != Addr.String() {
			t.Errorf("eth0 addresses %v, want only %v", addrs, Addr)
		}
		routes, err := netlink.RouteList(l, unix.AF_INET)
		if err != nil {
			return err
		}
		defaults := 0
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				defaults++
				if !r.Gw.Equal(Gateway.AsSlice()) {
					t.Errorf("default route via %v, want %v", r.Gw, Gateway)
				}
			}
		}
		if defaults != 1 {
			t.Errorf("%d default routes, want 1: %v", defaults, routes)
		}
		conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: beyond.AsSlice(), Port: 5353})
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("hello"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	catcher.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, from, err := catcher.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("nothing arrived beyond the gateway: %v", err)
	}
	if string(buf[:n]) != "hello" || !from.IP.Equal(Addr.Addr().AsSlice()) {
		t.Errorf("got %q from %v, want hello from %v", buf[:n], from, Addr.Addr())
	}
}

// With no Ethernet interface, Apply says what the VM lacks.
func TestApplyWithoutAnInterface(t *testing.T) {
	ns := testnet.New(t)
	err := ns.Do(func() error { _, err := Apply(Default()); return err })
	if err == nil || !strings.Contains(err.Error(), "virtio-net") {
		t.Errorf("%v, want an error naming virtio-net", err)
	}
}

func TestWriteResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	c := Default(netip.MustParseAddr("192.0.2.53"))
	if err := WriteResolvConf(c, path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != c.ResolvConf() {
		t.Errorf("%q %v", b, err)
	}
	none := filepath.Join(t.TempDir(), "resolv.conf")
	if err := WriteResolvConf(Default(), none); err != nil {
		t.Errorf("no servers: %v", err)
	}
	if _, err := os.Stat(none); err == nil {
		t.Error("wrote a resolv.conf without name servers")
	}
}
