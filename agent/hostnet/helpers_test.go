package hostnet

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/internal/testnet"
)

// The tests never touch the host's own namespace: each makes a scratch
// one to stand for it (HostConfig.NetNS), with an "internet" namespace
// behind an uplink where it needs one. Dropping a scratch namespace drops
// every veth and table in it.

// TestMain fails the run if the tests left a namespace mount or a kl*
// link in the real host namespace.
func TestMain(m *testing.M) {
	before := rootLinks()
	code := m.Run()
	if code == 0 {
		if left := nsfsMountsUnder(os.TempDir()); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "namespace mounts left behind: %v\n", left)
			code = 1
		}
		for l := range rootLinks() {
			if !before[l] {
				fmt.Fprintf(os.Stderr, "link left behind in the host's namespace: %s\n", l)
				code = 1
			}
		}
	}
	os.Exit(code)
}

func rootLinks() map[string]bool {
	out := map[string]bool{}
	links, _ := netlink.LinkList()
	for _, l := range links {
		out[l.Attrs().Name] = true
	}
	return out
}

// nsfsMountsUnder lists nsfs mount points under dir.
func nsfsMountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, fs := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(fs) < 1 || fs[0] != "nsfs" {
			continue
		}
		if mp := fields[4]; strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces, veths and taps need root")
	}
}

var (
	nftOnce sync.Once
	nftErr  error
)

// requireNFTables skips, naming the missing kernel feature, where the
// kernel cannot take the host's table (tried in a scratch namespace).
func requireNFTables(t testing.TB) {
	t.Helper()
	requireRoot(t)
	nftOnce.Do(func() {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("hostnet-nft-probe-%d", os.Getpid()))
		if nftErr = createNetNS(path); nftErr != nil {
			return
		}
		defer removeNetNS(path)
		ns, err := netns.GetFromPath(path)
		if err != nil {
			nftErr = err
			return
		}
		defer ns.Close()
		nftErr = installHostTable(ns, DefaultPool)
	})
	if nftErr != nil {
		t.Skipf("skipping: the kernel has no usable nf_tables (CONFIG_NF_TABLES, NFT_NAT, NFT_MASQ, NFT_CT): %v", nftErr)
	}
}

// scratchNS makes a network namespace held by a bind mount in a temporary
// directory, removed after the test; lo is up, as on a real host.
func scratchNS(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := createNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeNetNS(path); err != nil {
			t.Errorf("remove scratch namespace %s: %v", name, err)
		}
	})
	do(t, path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return path
}

// do runs fn in the namespace at path, failing the test on its error.
func do(t testing.TB, path string, fn func() error) {
	t.Helper()
	if err := doErr(path, fn); err != nil {
		t.Fatal(err)
	}
}

func doErr(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return inNS(ns, fn)
}

// testHost is a Host in a scratch namespace.
type testHost struct {
	*Host
	ns   string // its namespace
	root string // kindlingd's sandboxes/ directory
}

func newTestHost(t testing.TB) *testHost {
	t.Helper()
	requireRoot(t)
	ns := scratchNS(t, "host-ns")
	h, err := NewHost(HostConfig{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	root := filepath.Join(t.TempDir(), "sandboxes")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return &testHost{Host: h, ns: ns, root: root}
}

// setup is Setup in root/ID, closed after the test.
func (h *testHost) setup(t testing.TB, o Options) *Sandbox {
	t.Helper()
	o.Dir = filepath.Join(h.root, o.ID)
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sb, err := h.Setup(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Close(); err != nil {
			t.Errorf("close %s: %v", o.ID, err)
		}
	})
	return sb
}

// The uplink: a veth from the host's namespace to an "internet"
// namespace, 192.0.2.0/24 (TEST-NET-1), with the internet routing the
// pool back to the host (as a neighbour on a LAN could try).
var (
	uplinkHost = netip.MustParsePrefix("192.0.2.1/24")
	uplinkNet  = netip.MustParsePrefix("192.0.2.2/24")
)

func (h *testHost) uplink(t testing.TB) (internet string) {
	t.Helper()
	internet = scratchNS(t, "internet-ns")
	inet, err := netns.GetFromPath(internet)
	if err != nil {
		t.Fatal(err)
	}
	defer inet.Close()
	do(t, h.ns, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "wan0", PeerNamespace: netlink.NsFd(int(inet))}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("up0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, nlAddr(uplinkHost)); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	do(t, internet, func() error {
		l, err := netlink.LinkByName("wan0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, nlAddr(uplinkNet)); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		pool := DefaultPool
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: uplinkHost.Addr().AsSlice(),
			Dst: &net.IPNet{IP: pool.Addr().AsSlice(), Mask: net.CIDRMask(pool.Bits(), 32)}})
	})
	return internet
}

// ping sends one ICMP echo request from the namespace at path to dst (a
// raw socket: ping sockets are off in a new namespace) and waits for the
// reply.
func ping(path string, dst netip.Addr, timeout time.Duration) error {
	var c net.PacketConn
	if err := doErr(path, func() (err error) { c, err = net.ListenPacket("ip4:icmp", "0.0.0.0"); return err }); err != nil {
		return err
	}
	defer c.Close()
	id := uint16(os.Getpid())
	msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'k', 'i', 'n', 'd'}
	binary.BigEndian.PutUint16(msg[2:], testnet.Checksum(msg))
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("no reply from %v: %w", dst, err)
		}
		if n >= 8 && buf[0] == 0 && binary.BigEndian.Uint16(buf[4:]) == id && from.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
			return nil
		}
	}
}

// listenUDP listens at addr in the namespace at path, until the test ends.
func listenUDP(t testing.TB, path string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	do(t, path, func() (err error) { c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr)); return err })
	t.Cleanup(func() { c.Close() })
	return c
}

// dialUDP is a UDP socket in the namespace at path, connected to dst.
func dialUDP(t testing.TB, path string, dst netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	do(t, path, func() (err error) { c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst)); return err })
	t.Cleanup(func() { c.Close() })
	return c
}

// receive reads one datagram within d; ok is false if none came.
func receive(c *net.UDPConn, d time.Duration) (payload string, from netip.AddrPort, ok bool) {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1500)
	n, addr, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", netip.AddrPort{}, false
	}
	return string(buf[:n]), addr, true
}

// counter is the packet count of the rule with comment in chain of the
// kindling table in the namespace at path.
func counter(t testing.TB, path, chain, comment string) uint64 {
	t.Helper()
	for _, r := range rules(t, path, chain) {
		if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); c != comment {
			continue
		}
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				return c.Packets
			}
		}
		t.Fatalf("rule %q in %s has no counter", comment, chain)
	}
	t.Fatalf("no rule %q in chain %s", comment, chain)
	return 0
}

// rules lists chain's rules in the kindling table of the namespace at path.
func rules(t testing.TB, path, chain string) []*nftables.Rule {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	rs, err := c.GetRules(tbl, &nftables.Chain{Name: chain, Table: tbl})
	if err != nil {
		t.Fatalf("list chain %s: %v", chain, err)
	}
	return rs
}

func comments(rs []*nftables.Rule) []string {
	var out []string
	for _, r := range rs {
		c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		out = append(out, c)
	}
	return out
}

// linkNames lists the namespace's links, by index.
func linkNames(t testing.TB, path string) []string {
	t.Helper()
	var names []string
	do(t, path, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	return names
}

// attachTap attaches to the namespace's tap as the VMM does (TUNSETIFF
// with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), as uid and gid with no
// capabilities. /dev/net/tun is opened first, as root: the host's node
// may be root's alone, and the jail gives the VMM a node of its own; the
// tun driver checks the tap's owner at TUNSETIFF. The credentials change
// on the call's own thread only (raw system calls: the syscall package's
// set*id change every thread), which is then discarded.
func attachTap(path string, uid, gid int) error {
	return doErr(path, func() error {
		runtime.LockOSThread() // never unlocked: inNS discards the thread
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			return fmt.Errorf("setgroups: %w", e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
			return fmt.Errorf("setresgid: %w", e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			return fmt.Errorf("setresuid: %w", e)
		}
		ifr, err := unix.NewIfreq(TapName)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	})
}

// tapFile is a simulated guest's end of the tap: frames without a
// virtio-net header (IFF_NO_PI only).
type tapFile struct{ fd int }

func openTap(t testing.TB, path string) *tapFile {
	t.Helper()
	var fd int
	do(t, path, func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(TapName)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("attach to %s: %w", TapName, err)
		}
		return nil
	})
	t.Cleanup(func() { unix.Close(fd) })
	return &tapFile{fd}
}

func (f *tapFile) write(t testing.TB, frame []byte) {
	t.Helper()
	if _, err := unix.Write(f.fd, frame); err != nil {
		t.Fatalf("write a frame to the tap: %v", err)
	}
}

// read returns the next frame the host sends the guest, or nil if none
// comes within d.
func (f *tapFile) read(t testing.TB, d time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		fds := []unix.PollFd{{Fd: int32(f.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		n, err := unix.Read(f.fd, buf)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
}

func echoRequest(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, seq uint16) []byte {
	return testnet.EchoRequest(srcMAC, dstMAC, src, dst, 0x4b4c, seq, []byte("kindling"))
}

func parseEchoReply(f []byte) (src, dst netip.Addr, seq uint16, ok bool) {
	e, ok := testnet.ParseEchoReply(f)
	return e.Src, e.Dst, e.Seq, ok
}
