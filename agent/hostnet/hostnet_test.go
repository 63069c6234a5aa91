package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guestnet"
)

// The jailed VMM's uid and gid in these tests (jail.UniqueID's range).
const (
	vmmUID = 1_234_567
	vmmGID = 1_234_568
)

// None: a namespace with loopback only, up, held by a bind mount; nothing
// in the host's namespace. Close removes the mount and the file, and
// again does nothing.
func TestSetupNone(t *testing.T) {
	h := newTestHost(t)
	sb := h.setup(t, Options{ID: "none-1"})
	if ok, err := isNetNSFile(sb.NetNSPath()); !ok || err != nil {
		t.Fatalf("%s: nsfs %v %v", sb.NetNSPath(), ok, err)
	}
	if got := linkNames(t, sb.NetNSPath()); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("sandbox links %v, want [lo]", got)
	}
	do(t, sb.NetNSPath(), func() error {
		lo, err := netlink.LinkByName("lo")
		if err == nil && lo.Attrs().Flags&net.FlagUp == 0 {
			t.Error("lo is down")
		}
		return err
	})
	if got := linkNames(t, h.ns); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("host links %v, want [lo]", got)
	}
	if sb.Policy() != None || sb.Veth() != "" || sb.Addr().IsValid() || sb.Tap() {
		t.Errorf("policy %v veth %q addr %v tap %v", sb.Policy(), sb.Veth(), sb.Addr(), sb.Tap())
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sb.NetNSPath()); !os.IsNotExist(err) {
		t.Errorf("%s after Close: %v", sb.NetNSPath(), err)
	}
	if m := nsfsMountsUnder(h.root); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	if err := sb.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Egress with a tap, as a microVM gets it: the tap (persistent, owned by
// the VMM's uid and gid, NO_PI and VNET_HDR, the gateway's address and
// MAC, up), the veth pair with its addresses and the default route, no
// IPv6, forwarding on, and both tables. The VMM's uid, with no
// capabilities, may attach to the tap as the VMM does; another uid may
// not.
func TestSetupEgressTap(t *testing.T) {
	requireNFTables(t)
	h := newTestHost(t)
	sb := h.setup(t, Options{ID: "vm-1", Policy: Egress, Tap: true, TapUID: vmmUID, TapGID: vmmGID})
	ns := sb.NetNSPath()
	if sb.Veth() != "kl0" || sb.Addr().String() != "10.200.0.2/30" || sb.Gateway().String() != "10.200.0.1" || !sb.Tap() {
		t.Errorf("veth %q addr %v gateway %v tap %v", sb.Veth(), sb.Addr(), sb.Gateway(), sb.Tap())
	}
	if got := linkNames(t, ns); !slices.Equal(got, []string{"lo", "tap0", "eth0"}) {
		t.Errorf("sandbox links %v, want [lo tap0 eth0]", got)
	}
	do(t, ns, func() error {
		l, err := netlink.LinkByName(TapName)
		if err != nil {
			return err
		}
		tap, ok := l.(*netlink.Tuntap)
		if !ok {
			t.Fatalf("%s is a %s", TapName, l.Type())
		}
		if tap.Mode != netlink.TUNTAP_MODE_TAP || tap.Owner != vmmUID || tap.Group != vmmGID || tap.NonPersist {
			t.Errorf("tap mode %v owner %d group %d non-persistent %v", tap.Mode, tap.Owner, tap.Group, tap.NonPersist)
		}
		info := tunInfo(t, l.Attrs().Index)
		if info[unix.IFLA_TUN_PI] != 0 || info[unix.IFLA_TUN_VNET_HDR] != 1 || info[unix.IFLA_TUN_PERSIST] != 1 {
			t.Errorf("tap flags: pi %d vnet_hdr %d persist %d, want 0 1 1", info[unix.IFLA_TUN_PI], info[unix.IFLA_TUN_VNET_HDR], info[unix.IFLA_TUN_PERSIST])
		}
		if l.Attrs().HardwareAddr.String() != guestnet.GatewayMAC.String() || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("tap MAC %v flags %v", l.Attrs().HardwareAddr, l.Attrs().Flags)
		}
		checkAddrs(t, l, "172.16.0.1/30")
		eth, err := netlink.LinkByName(PeerName)
		if err != nil {
			return err
		}
		if eth.Type() != "veth" || eth.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: %s, flags %v", PeerName, eth.Type(), eth.Attrs().Flags)
		}
		checkAddrs(t, eth, "10.200.0.2/30")
		checkDefaultRoute(t, eth, "10.200.0.1")
		for _, l := range []netlink.Link{l, eth} {
			if v6, _ := netlink.AddrList(l, unix.AF_INET6); len(v6) > 0 {
				t.Errorf("%s has IPv6 addresses: %v", l.Attrs().Name, v6)
			}
		}
		if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(b) != "1\n" {
			t.Errorf("sandbox ip_forward %q", b)
		}
		return nil
	})
	do(t, h.ns, func() error {
		l, err := netlink.LinkByName("kl0")
		if err != nil {
			return err
		}
		if l.Type() != "veth" || l.Attrs().Alias != "kindling:vm-1" || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("kl0: %s alias %q flags %v", l.Type(), l.Attrs().Alias, l.Attrs().Flags)
		}
		checkAddrs(t, l, "10.200.0.1/30")
		if v6, _ := netlink.AddrList(l, unix.AF_INET6); len(v6) > 0 {
			t.Errorf("kl0 has IPv6 addresses: %v", v6)
		}
		for file, want := range map[string]string{"ipv4/ip_forward": "1\n", "ipv4/conf/kl0/rp_filter": "1\n", "ipv6/conf/kl0/disable_ipv6": "1\n"} {
			if b, _ := os.ReadFile("/proc/sys/net/" + file); string(b) != want {
				t.Errorf("host %s: %q, want %q", file, b, want)
			}
		}
		return nil
	})
	for chain, want := range map[string][]string{
		"postrouting": {commentMasquerade},
		"forward":     {commentBetween, commentReplies, commentInbound, commentOutbound, commentSpoofed},
		"input":       {commentHostReplies, commentHostPing, commentHostRefused},
		"output":      {commentHostReplies, commentHostToSandbox},
	} {
		if got := comments(rules(t, h.ns, chain)); !reflect.DeepEqual(got, want) {
			t.Errorf("host chain %s: %q, want %q", chain, got, want)
		}
	}
	for chain, want := range map[string][]string{
		"postrouting": {commentGuestNAT},
		"forward":     {commentGuestOut, commentGuestReplies, commentGuestForbidden},
	} {
		if got := comments(rules(t, ns, chain)); !reflect.DeepEqual(got, want) {
			t.Errorf("sandbox chain %s: %q, want %q", chain, got, want)
		}
	}

	if err := attachTap(ns, vmmUID, vmmGID); err != nil {
		t.Errorf("the VMM's uid cannot attach to the tap: %v", err)
	}
	if err := attachTap(ns, vmmUID+1, vmmGID+1); err == nil || !errors.Is(err, unix.EPERM) {
		t.Errorf("another uid attaching to the tap: %v, want EPERM", err)
	}
}

// tunInfo is the tun driver's IFLA_INFO_DATA for the link at index, as
// bytes (netlink's Tuntap leaves the flags out).
func tunInfo(t *testing.T, index int) map[uint16]byte {
	t.Helper()
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("RTM_GETLINK %d: %v", index, err)
	}
	out := map[uint16]byte{}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		if a.Attr.Type != unix.IFLA_LINKINFO {
			continue
		}
		infos, _ := nl.ParseRouteAttr(a.Value)
		for _, i := range infos {
			if i.Attr.Type != unix.IFLA_INFO_DATA {
				continue
			}
			data, _ := nl.ParseRouteAttr(i.Value)
			for _, d := range data {
				if len(d.Value) > 0 {
					out[d.Attr.Type] = d.Value[0]
				}
			}
		}
	}
	return out
}

func checkAddrs(t *testing.T, l netlink.Link, want ...string) {
	t.Helper()
	addrs, err := netlink.AddrList(l, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s addresses %v, want %v", l.Attrs().Name, got, want)
	}
}

func checkDefaultRoute(t *testing.T, l netlink.Link, gw string) {
	t.Helper()
	routes, err := netlink.RouteList(l, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if r.Gw.String() != gw {
				t.Errorf("default route via %v, want %s", r.Gw, gw)
			}
			return
		}
	}
	t.Errorf("no default route on %s: %v", l.Attrs().Name, routes)
}

// Traffic under Egress, for process sandboxes (the sandbox's own
// namespace on the veth's address): the sandbox pings the host's end; it
// reaches the internet masqueraded behind the uplink's address and gets
// the reply; and nothing new crosses into a sandbox, from the internet,
// from another sandbox or from the host, nor from a sandbox to a host
// service. The drop rules' counters show which rule stopped each.
func TestEgressTraffic(t *testing.T) {
	requireNFTables(t)
	h := newTestHost(t)
	internet := h.uplink(t)
	a := h.setup(t, Options{ID: "proc-a", Policy: Egress})
	b := h.setup(t, Options{ID: "proc-b", Policy: Egress})
	if a.Addr() == b.Addr() || a.Veth() == b.Veth() {
		t.Fatalf("two sandboxes share %v / %s", a.Addr(), a.Veth())
	}

	if err := ping(a.NetNSPath(), a.Gateway(), 5*time.Second); err != nil {
		t.Errorf("ping the host's end %v: %v", a.Gateway(), err)
	}

	const port = 7777
	server := listenUDP(t, internet, netip.AddrPortFrom(uplinkNet.Addr(), port))
	c := dialUDP(t, a.NetNSPath(), netip.AddrPortFrom(uplinkNet.Addr(), port))
	if _, err := c.Write([]byte("out")); err != nil {
		t.Fatal(err)
	}
	msg, from, ok := receive(server, 5*time.Second)
	if !ok || msg != "out" {
		t.Fatalf("the internet got %q %v from the sandbox", msg, ok)
	}
	if from.Addr() != uplinkHost.Addr() {
		t.Errorf("the internet saw %v, want the host's %v (masqueraded)", from.Addr(), uplinkHost.Addr())
	}
	if _, err := server.WriteToUDPAddrPort([]byte("back"), from); err != nil {
		t.Fatal(err)
	}
	if msg, _, ok := receive(c, 5*time.Second); !ok || msg != "back" {
		t.Errorf("the reply did not come back: %q %v", msg, ok)
	}

	// What must not pass; each attempt must raise its rule's counter.
	inA := listenUDP(t, a.NetNSPath(), netip.AddrPortFrom(a.Addr().Addr(), port))
	inB := listenUDP(t, b.NetNSPath(), netip.AddrPortFrom(b.Addr().Addr(), port))
	inHost := listenUDP(t, h.ns, netip.AddrPortFrom(a.Gateway(), port))
	for _, c := range []struct {
		name        string
		from        string
		to          netip.Addr
		catcher     *net.UDPConn
		chain, rule string
	}{
		{"sandbox to sandbox", a.NetNSPath(), b.Addr().Addr(), inB, "forward", commentBetween},
		{"internet to sandbox", internet, a.Addr().Addr(), inA, "forward", commentInbound},
		{"sandbox to a host service", a.NetNSPath(), a.Gateway(), inHost, "input", commentHostRefused},
		{"host to sandbox", h.ns, a.Addr().Addr(), inA, "output", commentHostToSandbox},
	} {
		before := counter(t, h.ns, c.chain, c.rule)
		conn := dialUDP(t, c.from, netip.AddrPortFrom(c.to, port))
		conn.Write([]byte(c.name))
		if msg, from, ok := receive(c.catcher, 300*time.Millisecond); ok {
			t.Errorf("%s: %q from %v got through", c.name, msg, from)
		}
		if after := counter(t, h.ns, c.chain, c.rule); after <= before {
			t.Errorf("%s: rule %q counted %d, then %d", c.name, c.rule, before, after)
		}
	}
	if err := ping(a.NetNSPath(), b.Addr().Addr(), 300*time.Millisecond); err == nil {
		t.Error("a sandbox pinged another")
	}
}

// A microVM's guest, simulated on the tap with the guest's fixed address
// and MAC, pings the internet through the sandbox's NAT and the host's
// and gets the reply; a frame sent as another sandbox's address gets
// nothing.
func TestGuestEgressThroughTap(t *testing.T) {
	requireNFTables(t)
	h := newTestHost(t)
	h.uplink(t)
	sb := h.setup(t, Options{ID: "vm-guest", Policy: Egress, Tap: true, TapUID: vmmUID, TapGID: vmmGID})
	tap := openTap(t, sb.NetNSPath())
	// The host drops what it sends to an attached tap until the kernel's
	// link watcher has brought it up (up to a second, more under load).
	for up, deadline := false, time.Now().Add(10*time.Second); !up; {
		do(t, sb.NetNSPath(), func() error {
			l, err := netlink.LinkByName(TapName)
			up = err == nil && l.Attrs().OperState == netlink.OperUp
			return err
		})
		if !up && time.Now().After(deadline) {
			t.Fatal("tap0 is not up 10 s after it was attached")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The guest answers ARP in a real VM; here the host is told.
	do(t, sb.NetNSPath(), func() error {
		l, err := netlink.LinkByName(TapName)
		if err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: guestnet.Addr.Addr().AsSlice(), HardwareAddr: guestnet.MAC})
	})
	dst := uplinkNet.Addr()
	spoofed := netip.MustParseAddr("10.200.0.6")
	tap.write(t, echoRequest(guestnet.MAC, guestnet.GatewayMAC, spoofed, dst, 1))
	tap.write(t, echoRequest(guestnet.MAC, guestnet.GatewayMAC, guestnet.Addr.Addr(), dst, 2))
	deadline := time.Now().Add(5 * time.Second)
	for {
		f := tap.read(t, time.Until(deadline))
		if f == nil {
			t.Fatal("no echo reply reached the guest")
		}
		src, to, seq, ok := parseEchoReply(f)
		if !ok {
			continue
		}
		if seq != 2 || src != dst || to != guestnet.Addr.Addr() {
			t.Fatalf("echo reply %v -> %v seq %d, want %v -> %v seq 2", src, to, seq, dst, guestnet.Addr.Addr())
		}
		break
	}
	if f := tap.read(t, 300*time.Millisecond); f != nil {
		if _, _, seq, ok := parseEchoReply(f); ok {
			t.Errorf("a reply to the spoofed request (seq %d) reached the guest", seq)
		}
	}
}

// Concurrent Setups take distinct slots; a new Host (a restarted
// kindlingd) sees the slots that are taken; Close frees a slot for the
// next sandbox and removes exactly its own veth.
func TestSlotsAreClaimedOnce(t *testing.T) {
	requireNFTables(t)
	h := newTestHost(t)
	const n = 6
	sbs := make([]*Sandbox, n)
	var wg sync.WaitGroup
	for i := range n {
		dir := filepath.Join(h.root, "c"+string(rune('0'+i)))
		os.Mkdir(dir, 0o755)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sb, err := h.Setup(Options{ID: filepath.Base(dir), Dir: dir, Policy: Egress})
			if err != nil {
				t.Error(err)
				return
			}
			sbs[i] = sb
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, sb := range sbs {
			if sb != nil {
				sb.Close()
			}
		}
	})
	if t.Failed() {
		return
	}
	seen := map[string]bool{}
	for _, sb := range sbs {
		if seen[sb.Veth()] || seen[sb.Addr().String()] {
			t.Errorf("%s: %s / %v taken twice", sb.ID(), sb.Veth(), sb.Addr())
		}
		seen[sb.Veth()], seen[sb.Addr().String()] = true, true
	}

	h2, err := NewHost(HostConfig{NetNS: h.ns})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	next := (&testHost{Host: h2, ns: h.ns, root: h.root}).setup(t, Options{ID: "after-restart", Policy: Egress})
	if next.Veth() != vethName(n) {
		t.Errorf("after a restart the next sandbox took %s, want %s", next.Veth(), vethName(n))
	}

	freed := sbs[2].Veth()
	if err := sbs[2].Close(); err != nil {
		t.Fatal(err)
	}
	reuse := h.setup(t, Options{ID: "reuse", Policy: Egress})
	if reuse.Veth() != freed {
		t.Errorf("took %s, want the freed %s", reuse.Veth(), freed)
	}
	// The old sandbox's name is the new one's now: removing the old
	// veth again must leave it.
	h.mu.Lock()
	err = h.removeVeth(freed, sbs[2].ID())
	h.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(reuse.NetNSPath(), reuse.Gateway(), 5*time.Second); err != nil {
		t.Errorf("the new owner of %s lost its veth: %v", freed, err)
	}

	for _, sb := range append(sbs, next, reuse) {
		if err := sb.Close(); err != nil {
			t.Error(err)
		}
	}
	for _, l := range linkNames(t, h.ns) {
		if strings.HasPrefix(l, vethPrefix) {
			t.Errorf("%s left after Close", l)
		}
	}
	if m := nsfsMountsUnder(h.root); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// Setup refuses bad options, and a directory whose namespace file is
// still there (a leftover), without touching it.
func TestSetupRefuses(t *testing.T) {
	h := newTestHost(t)
	dir := filepath.Join(h.root, "x")
	os.Mkdir(dir, 0o755)
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{ID: "", Dir: dir}, "sandbox ID"},
		{Options{ID: "a/b", Dir: dir}, "sandbox ID"},
		{Options{ID: "x", Dir: "rel"}, "absolute"},
		{Options{ID: "x", Dir: dir, Policy: "open"}, "network policy"},
		{Options{ID: "x", Dir: dir, Tap: true}, "never root"},
	} {
		if _, err := h.Setup(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
	first := h.setup(t, Options{ID: "x"})
	if _, err := h.Setup(Options{ID: "x", Dir: dir}); err == nil || !strings.Contains(err.Error(), "Sweep") {
		t.Errorf("a second Setup in %s: %v, want an error naming Sweep", dir, err)
	}
	if ok, _ := isNetNSFile(first.NetNSPath()); !ok {
		t.Error("the refused Setup removed the first sandbox's namespace")
	}
}

// After a crash: Sweep removes the veths and namespace files of
// sandboxes that are gone, and a veth that never got its alias; it keeps
// the live sandbox's, other people's links, and what it cannot place. The
// live sandbox's network still works, Reattach finds it, and Close
// removes it.
func TestSweep(t *testing.T) {
	requireNFTables(t)
	h := newTestHost(t)
	var crashed []*Sandbox
	for _, o := range []Options{{ID: "dead-egress", Policy: Egress}, {ID: "dead-none"}, {ID: "live", Policy: Egress}} {
		o.Dir = filepath.Join(h.root, o.ID)
		os.Mkdir(o.Dir, 0o755)
		sb, err := h.Setup(o)
		if err != nil {
			t.Fatal(err)
		}
		crashed = append(crashed, sb)
	}
	// Whatever the test's end, nothing stays mounted.
	t.Cleanup(func() {
		for _, sb := range crashed {
			removeNetNS(sb.NetNSPath())
		}
	})
	do(t, h.ns, func() error {
		for name, alias := range map[string]string{"kl99": "", "kl98": "not kindling's", "other0": ""} {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
				return err
			}
			if alias != "" {
				l, _ := netlink.LinkByName(name)
				if err := netlink.LinkSetAlias(l, alias); err != nil {
					return err
				}
			}
		}
		return nil
	})

	restarted, err := NewHost(HostConfig{NetNS: h.ns})
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.Close()
	removed, err := restarted.Sweep(h.root, func(id string) bool { return id == "live" })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{
		"network namespace " + filepath.Join(h.root, "dead-egress", NetNSName),
		"network namespace " + filepath.Join(h.root, "dead-none", NetNSName),
		"veth kl0 of sandbox dead-egress",
		"veth kl99 of an unnamed sandbox",
	}
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	links := linkNames(t, h.ns)
	for _, l := range []string{"kl1", "kl98", "kl98p", "other0", "other0p"} {
		if !slices.Contains(links, l) {
			t.Errorf("%s is gone: %v", l, links)
		}
	}
	for _, l := range []string{"kl0", "kl99"} {
		if slices.Contains(links, l) {
			t.Errorf("%s is still there: %v", l, links)
		}
	}
	if m := nsfsMountsUnder(h.root); !slices.Equal(m, []string{filepath.Join(h.root, "live", NetNSName)}) {
		t.Errorf("mounts %v, want only the live sandbox's", m)
	}
	if err := ping(crashed[2].NetNSPath(), crashed[2].Gateway(), 5*time.Second); err != nil {
		t.Errorf("the live sandbox lost its network: %v", err)
	}
	sb, err := restarted.Reattach("live", filepath.Join(h.root, "live"))
	if err != nil {
		t.Fatal(err)
	}
	if sb.Policy() != Egress || sb.Veth() != "kl1" || sb.Addr() != crashed[2].Addr() || sb.Tap() {
		t.Errorf("reattached: policy %v veth %s addr %v tap %v", sb.Policy(), sb.Veth(), sb.Addr(), sb.Tap())
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(linkNames(t, h.ns), "kl1") {
		t.Error("kl1 left after Close")
	}
	if m := nsfsMountsUnder(h.root); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	// Sweeping again finds nothing; a sweep of a root that is not there
	// is not an error.
	if removed, err := restarted.Sweep(filepath.Join(h.root, "nothing"), func(string) bool { return false }); err != nil || len(removed) != 0 {
		t.Errorf("second sweep: %v %v", removed, err)
	}
	if _, err := restarted.Reattach("dead-none", filepath.Join(h.root, "dead-none")); err == nil {
		t.Error("reattached a swept sandbox")
	}
}

// Do: a process started in fn runs in the sandbox's namespace, the
// calling thread stays in its own, and a sandbox whose namespace is gone
// says so.
func TestDoStartsInTheSandbox(t *testing.T) {
	h := newTestHost(t)
	sb := h.setup(t, Options{ID: "do-1"})
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(sb.NetNSPath(), &st); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	var out strings.Builder
	cmd.Stdout = &out
	if err := sb.Do(cmd.Start); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(out.String()), fmt.Sprintf("net:[%d]", st.Ino); got != want {
		t.Fatalf("the process's namespace is %s, want the sandbox's %s (ours: %s)", got, want, home)
	}
	if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != home {
		t.Fatalf("our thread's namespace changed to %s", now)
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Do(func() error { return nil }); err == nil || !strings.Contains(err.Error(), "its network namespace") {
		t.Fatalf("Do after Close: %v", err)
	}
}
