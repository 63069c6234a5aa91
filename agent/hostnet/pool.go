package hostnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kindlingvm/kindling/agent/guestnet"
)

// DefaultPool is where sandbox veths take their addresses when the Host's
// configuration names no pool: 16384 sandboxes in private space (RFC
// 1918) that home and cloud networks seldom use.
var DefaultPool = netip.MustParsePrefix("10.200.0.0/16")

// Each sandbox takes a /30 of the pool: the host's end of its veth, the
// sandbox's end, and the network and broadcast addresses that every
// tool handles without surprise (a /31 would fit twice as many).
const slotBits = 30

// vethPrefix starts the name of every sandbox veth's host end, and the
// nftables rules match interfaces by it: the host must have no other
// interface whose name starts so.
const vethPrefix = "kl"

// aliasPrefix starts a sandbox veth's alias (IFLA_IFALIAS), followed by
// the sandbox ID: how Sweep and Reattach find a sandbox's veth.
const aliasPrefix = "kindling:"

// pool is the prefix sandbox veths are cut from.
type pool struct{ prefix netip.Prefix }

func newPool(p netip.Prefix) (pool, error) {
	if !p.IsValid() {
		p = DefaultPool
	}
	if !p.Addr().Is4() || p != p.Masked() {
		return pool{}, fmt.Errorf("hostnet: pool %v: want an IPv4 network address with its prefix length, such as %v", p, DefaultPool)
	}
	if p.Bits() > slotBits || p.Bits() < 8 {
		return pool{}, fmt.Errorf("hostnet: pool %v: want a prefix between /8 and /%d", p, slotBits)
	}
	if guest := guestnet.Addr.Masked(); p.Overlaps(guest) {
		return pool{}, fmt.Errorf("hostnet: pool %v overlaps the guests' own network %v: pick another pool", p, guest)
	}
	return pool{p}, nil
}

// slots is how many sandboxes the pool holds.
func (p pool) slots() int { return 1 << (slotBits - p.prefix.Bits()) }

// link is slot's two addresses: the host's end and the sandbox's.
func (p pool) link(slot int) (host, sandbox netip.Prefix) {
	base := p.prefix.Addr().As4()
	n := binary.BigEndian.Uint32(base[:]) + uint32(slot)<<(32-slotBits)
	at := func(off uint32) netip.Prefix {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], n+off)
		return netip.PrefixFrom(netip.AddrFrom4(b), slotBits)
	}
	return at(1), at(2)
}

// vethName is the host end's name for slot: kl0 to kl4194303 for a /8,
// within IFNAMSIZ.
func vethName(slot int) string { return vethPrefix + strconv.Itoa(slot) }

// parseVethName is vethName's inverse; it accepts only the names vethName
// makes.
func parseVethName(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, vethPrefix)
	if !ok || s == "" || (s[0] == '0' && s != "0") {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}
