// Package guestnet is the contract between the host and a microVM guest
// about the guest's network: one fixed address, gateway and MAC for every
// guest, and the kernel command-line argument (kindling.net=) that carries
// them with the DNS servers into the guest, where kindling-init applies it.
//
// Every guest gets the same addressing on purpose: a snapshot taken in one
// sandbox is restored into another with its configured interface, ARP
// cache and open sockets intact, and the host side (package hostnet)
// makes every sandbox's tap look the same (Firecracker's "network for
// clones"). The package imports only the standard library and netlink, so
// the guest's init stays small, and never touches the host's network.
package guestnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// The addressing every guest has: a /30 whose other usable address is
// the host's end of the tap. Treat them as constants.
var (
	// Addr is the guest's address and prefix.
	Addr = netip.MustParsePrefix("172.16.0.2/30")
	// Gateway is the host's end of the tap, the guest's default route.
	Gateway = netip.MustParseAddr("172.16.0.1")
	// MAC is the guest's virtio-net MAC: locally administered (bit 1 of
	// the first byte), unicast, with the guest's IPv4 address in its
	// last four bytes, as Firecracker's examples do.
	MAC = net.HardwareAddr{0x06, 0x00, 0xac, 0x10, 0x00, 0x02}
	// GatewayMAC is the host's end of the tap, the same in every
	// sandbox: a restored guest's ARP entry for its gateway stays right.
	GatewayMAC = net.HardwareAddr{0x06, 0x00, 0xac, 0x10, 0x00, 0x01}
)

// Param is the kernel command-line parameter that carries a Config.
const Param = "kindling.net"

// Config is a guest's network configuration.
type Config struct {
	Addr    netip.Prefix // the guest's address and prefix length
	Gateway netip.Addr   // the default route's next hop, inside Addr's prefix
	DNS     []netip.Addr // name servers for /etc/resolv.conf, in order; may be empty
}

// Default is the configuration every Kindling guest gets, with dns as its
// name servers.
func Default(dns ...netip.Addr) Config {
	return Config{Addr: Addr, Gateway: Gateway, DNS: dns}
}

// Validate checks that c is usable: an IPv4 address that is neither the
// prefix's network nor its broadcast address, a gateway in the same
// prefix other than the address, and IPv4 or IPv6 name servers.
func (c Config) Validate() error {
	if !c.Addr.IsValid() || !c.Addr.Addr().Is4() {
		return fmt.Errorf("%s: address %v: want an IPv4 address with a prefix length, such as %v", Param, c.Addr, Addr)
	}
	if c.Addr.Bits() > 30 {
		return fmt.Errorf("%s: address %v: want a prefix of /30 or shorter, with room for the gateway", Param, c.Addr)
	}
	a, p := c.Addr.Addr(), c.Addr.Masked()
	if a == p.Addr() || a == broadcast(p) {
		return fmt.Errorf("%s: address %v is its network's network or broadcast address", Param, c.Addr)
	}
	if !c.Gateway.Is4() || !p.Contains(c.Gateway) || c.Gateway == a || c.Gateway == p.Addr() || c.Gateway == broadcast(p) {
		return fmt.Errorf("%s: gateway %v: want another host address in %v", Param, c.Gateway, p)
	}
	for _, d := range c.DNS {
		if !d.IsValid() || d.Zone() != "" {
			return fmt.Errorf("%s: name server %v: want a plain IPv4 or IPv6 address", Param, d)
		}
	}
	return nil
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	for i := 0; i < 4; i++ {
		b[3-i] |= byte(host >> (8 * i))
	}
	return netip.AddrFrom4(b)
}

// CmdlineArg is c as one kernel command-line argument:
// kindling.net=ADDR/BITS,gw=GATEWAY[,dns=SERVER]... (a dns= per name
// server, so IPv6 servers need no other separator).
func (c Config) CmdlineArg() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s=%v,gw=%v", Param, c.Addr, c.Gateway)
	for _, d := range c.DNS {
		fmt.Fprintf(&b, ",dns=%v", d)
	}
	return b.String()
}

// ErrNoConfig means the command line has no kindling.net= argument: the
// guest has no network to configure.
var ErrNoConfig = errors.New(Param + " not on the kernel command line")

// ParseCmdline finds kindling.net= in a kernel command line (the whole of
// /proc/cmdline) and parses it; the last one wins, as the kernel's own
// parameters do. It returns ErrNoConfig when there is none.
func ParseCmdline(cmdline string) (Config, error) {
	val, found := "", false
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, Param+"="); ok {
			val, found = v, true
		}
	}
	if !found {
		return Config{}, ErrNoConfig
	}
	return Parse(val)
}

// Parse parses the value of kindling.net=, as CmdlineArg writes it.
func Parse(val string) (Config, error) {
	var c Config
	fields := strings.Split(val, ",")
	addr, err := netip.ParsePrefix(fields[0])
	if err != nil {
		return Config{}, fmt.Errorf("%s=%s: address %q: want ADDR/BITS first: %w", Param, val, fields[0], err)
	}
	c.Addr = addr
	gw := false
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "gw":
			a, err := netip.ParseAddr(v)
			if err != nil {
				return Config{}, fmt.Errorf("%s=%s: gw %q: %w", Param, val, v, err)
			}
			c.Gateway, gw = a, true
		case "dns":
			a, err := netip.ParseAddr(v)
			if err != nil {
				return Config{}, fmt.Errorf("%s=%s: dns %q: %w", Param, val, v, err)
			}
			c.DNS = append(c.DNS, a)
		default:
			return Config{}, fmt.Errorf("%s=%s: unknown field %q: want gw= and dns=", Param, val, f)
		}
	}
	if !gw {
		return Config{}, fmt.Errorf("%s=%s: no gw=", Param, val)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ResolvConf is the /etc/resolv.conf for c's name servers.
func (c Config) ResolvConf() string {
	var b strings.Builder
	b.WriteString("# written by kindling-init from " + Param + "\n")
	for _, d := range c.DNS {
		fmt.Fprintf(&b, "nameserver %v\n", d)
	}
	return b.String()
}
