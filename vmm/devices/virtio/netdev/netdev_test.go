package netdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/internal/testnet"
	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	vt "github.com/kindlingvm/kindling/vmm/devices/virtio/virtiotest"
	"github.com/kindlingvm/kindling/vmm/memory"
)

var (
	hostIP   = netip.MustParseAddr("172.16.0.1")
	guestIP  = netip.MustParseAddr("172.16.0.2")
	guestMAC = net.HardwareAddr{0x06, 0x00, 0xac, 0x10, 0x00, 0x02}
)

const hostCIDR = "172.16.0.1/30"

// linuxRxLen is what Linux's virtio_net posts per receive buffer without
// MRG_RXBUF or big packets (add_recvbuf_small): the header and
// GOOD_PACKET_LEN, a 1518-byte frame.
const linuxRxLen = HeaderSize + 1518

// Features a Linux driver accepts from this device.
const wantFeatures = vt.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | featMAC | featStatus

// guest is a simulated virtio-net driver on a device attached to a real
// tap in a private network namespace.
type guest struct {
	t      *testing.T
	ns     *testnet.Netns
	mem    *memory.Memory
	dev    *Device
	tr     *virtio.Transport
	rx, tx *vt.Queue
	posted map[uint32][]vt.Buf // rx head -> its buffers
	// frames and bytes (headers not counted) sent through the device
	sentFrames, sentBytes uint64
}

// newNetns makes a namespace holding tap0 with the host end at
// 172.16.0.1/30.
func newNetns(t *testing.T) *testnet.Netns {
	t.Helper()
	ns := testnet.New(t)
	ns.AddTap(t, "tap0", hostCIDR)
	return ns
}

// open attaches a device to tap in ns.
func open(t *testing.T, ns *testnet.Netns, opts Options) *Device {
	t.Helper()
	var dev *Device
	if err := ns.Do(func() (err error) { dev, err = Open(opts); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

// newGuest starts a driver on a device attached to tap0 in ns, with no
// receive buffers posted yet.
func newGuest(t *testing.T, ns *testnet.Netns) *guest {
	t.Helper()
	mem, err := memory.New(16<<20, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() }) // after the device's Close (cleanups run last first)
	g := &guest{t: t, ns: ns, mem: mem, posted: map[uint32][]vt.Buf{}}
	g.dev = open(t, ns, Options{Tap: "tap0", MAC: guestMAC})
	// What the host sends is dropped until the attached tap is up.
	ns.WaitUp(t, "tap0")
	if g.tr, err = virtio.NewTransport(mem, g.dev, &vt.Line{}); err != nil {
		t.Fatal(err)
	}
	g.rx = vt.NewQueue(t, mem, 0x10000, QueueSize, 4<<20)
	g.tx = vt.NewQueue(t, mem, g.rx.End(), QueueSize, 4<<20)
	if got := vt.Init(t, g.tr, wantFeatures, g.rx, g.tx); got != wantFeatures {
		t.Fatalf("negotiated %#x, want %#x", got, wantFeatures)
	}
	var cfg [8]byte
	g.tr.Read(vt.RegConfig, cfg[:])
	if !bytes.Equal(cfg[:6], guestMAC) || binary.LittleEndian.Uint16(cfg[6:]) != statusLinkUp {
		t.Fatalf("config space % x: want MAC %v and the link up", cfg, guestMAC)
	}
	return g
}

// post publishes one receive chain made of bufs, without kicking.
func (g *guest) post(bufs ...vt.Buf) {
	head := g.rx.Add(bufs...)
	g.posted[uint32(head)] = bufs
}

// postLinux posts n receive chains of linuxRxLen bytes and kicks: even
// ones as one buffer, as Linux does, odd ones split over three
// descriptors (header alone, then two parts), so frames span descriptors.
func (g *guest) postLinux(n int) {
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			g.post(g.rx.Writable(linuxRxLen))
		} else {
			g.post(g.rx.Writable(HeaderSize), g.rx.Writable(700), g.rx.Writable(linuxRxLen-HeaderSize-700))
		}
	}
	vt.Kick(g.tr, rxQueue)
}

// send transmits frame, the header in its own descriptor when split (as
// Linux does when it cannot push the header into the frame's headroom).
func (g *guest) send(frame []byte, split bool) {
	g.t.Helper()
	hdr := make([]byte, HeaderSize)
	if split {
		g.tx.Add(g.tx.Readable(hdr), g.tx.Readable(frame))
	} else {
		g.tx.Add(g.tx.Readable(append(hdr, frame...)))
	}
	vt.Kick(g.tr, txQueue)
	if u := g.tx.MustUsed(); u.Len != 0 {
		g.t.Fatalf("tx used length %d, want 0", u.Len)
	}
	g.sentFrames++
	g.sentBytes += uint64(len(frame))
}

// tryRecv returns the next received frame (header checked and removed),
// re-posting its buffers, or false after wait.
func (g *guest) tryRecv(wait time.Duration) ([]byte, bool) {
	g.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if u, ok := g.rx.NextUsed(); ok {
			bufs, ok := g.posted[u.ID]
			if !ok {
				g.t.Fatalf("used head %d was not posted", u.ID)
			}
			delete(g.posted, u.ID)
			var got []byte
			for _, b := range bufs {
				got = append(got, g.rx.Bytes(b.Addr, b.Len)...)
			}
			if int(u.Len) > len(got) || u.Len < HeaderSize+14 {
				g.t.Fatalf("used length %d for a %d-byte chain", u.Len, len(got))
			}
			got = got[:u.Len]
			var want [HeaderSize]byte
			want[numBuffersOff] = 1
			if !bytes.Equal(got[:HeaderSize], want[:]) {
				g.t.Fatalf("rx header % x, want % x (no offloads, num_buffers 1)", got[:HeaderSize], want)
			}
			g.post(bufs...)
			vt.Kick(g.tr, rxQueue)
			return got[HeaderSize:], true
		}
		if time.Now().After(deadline) {
			return nil, false
		}
		time.Sleep(time.Millisecond)
	}
}

// recvMatching returns the first frame match accepts, within 5 s. Like a
// guest's stack it answers the host's ARP requests for its address; other
// frames are logged and skipped.
func (g *guest) recvMatching(what string, match func([]byte) bool) []byte {
	g.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f, ok := g.tryRecv(time.Until(deadline))
		if !ok {
			break
		}
		if match(f) {
			return f
		}
		if a, ok := testnet.ParseARP(f); ok && a.Op == testnet.ARPRequestOp && a.TargetIP == guestIP {
			g.send(testnet.ARPReply(guestMAC, guestIP, a.SenderMAC, a.SenderIP), false)
			continue
		}
		g.t.Logf("skipping %s", testnet.Describe(f))
	}
	g.t.Fatalf("no %s within 5 s (stats %+v)", what, g.dev.Stats())
	return nil
}

// arp asks for the host's MAC and returns it.
func (g *guest) arp() net.HardwareAddr {
	g.t.Helper()
	g.send(testnet.ARPRequest(guestMAC, guestIP, hostIP), false)
	var hostMAC net.HardwareAddr
	g.recvMatching("ARP reply from "+hostIP.String(), func(f []byte) bool {
		a, ok := testnet.ParseARP(f)
		if ok && a.Op == testnet.ARPReplyOp && a.SenderIP == hostIP && a.TargetIP == guestIP &&
			bytes.Equal(a.DstMAC, guestMAC) && bytes.Equal(a.TargetMAC, guestMAC) {
			hostMAC = append(net.HardwareAddr(nil), a.SenderMAC...)
			return true
		}
		return false
	})
	return hostMAC
}

// ping sends an echo request with size bytes of payload and waits for the
// matching reply.
func (g *guest) ping(hostMAC net.HardwareAddr, seq uint16, size int, split bool) {
	g.t.Helper()
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	g.send(testnet.EchoRequest(guestMAC, hostMAC, guestIP, hostIP, 0x4b44, seq, payload), split)
	g.recvMatching("echo reply", func(f []byte) bool {
		e, ok := testnet.ParseEchoReply(f)
		return ok && e.Seq == seq && e.ID == 0x4b44 && e.Src == hostIP && e.Dst == guestIP &&
			bytes.Equal(e.DstMAC, guestMAC) && bytes.Equal(e.SrcMAC, hostMAC) && bytes.Equal(e.Payload, payload)
	})
}

// The guest resolves the host's address over ARP and pings it, with
// frames up to the full 1514 bytes in Linux-sized receive buffers: real
// frames through a real tap and the host's own network stack.
func TestARPAndPingThroughTap(t *testing.T) {
	g := newGuest(t, newNetns(t))
	g.postLinux(16)
	hostMAC := g.arp()
	if st := vt.AckInterrupt(g.tr); st&virtio.InterruptUsedBuffer == 0 {
		t.Fatalf("interrupt status %#x after a received frame: no used-buffer interrupt", st)
	}
	// 1472 bytes of payload make a 1514-byte reply: header and frame fill
	// 1526 of the 1530 bytes Linux posts.
	for i, size := range []int{56, 1000, 1472} {
		g.ping(hostMAC, uint16(i), size, i%2 == 1)
	}
	st := g.dev.Stats()
	if st.RxDropped != 0 || st.TxDropped != 0 || st.TxFrames != g.sentFrames || st.TxBytes != g.sentBytes || st.RxFrames < 4 {
		t.Fatalf("stats %+v: want %d frames (%d bytes) out, at least 4 in, no drops", st, g.sentFrames, g.sentBytes)
	}
	if err := g.dev.Err(); err != nil {
		t.Fatal(err)
	}
}

// heldFrame returns the frame the device holds for want of a buffer.
func (d *Device) heldFrame() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.holding...)
}

// waitHeld waits for the device to hold a frame.
func waitHeld(t *testing.T, d *Device) []byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if f := d.heldFrame(); f != nil {
			return f
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("the device holds no frame after 5 s (stats %+v)", d.Stats())
	return nil
}

// A frame that arrives while the guest has no receive buffer is held,
// not dropped, and delivered as soon as the guest posts one; so is a
// frame that arrives while the device is paused, once it resumes.
func TestFrameWaitsForReceiveBuffer(t *testing.T) {
	g := newGuest(t, newNetns(t))
	g.send(testnet.ARPRequest(guestMAC, guestIP, hostIP), false)
	held := waitHeld(t, g.dev)
	if a, ok := testnet.ParseARP(held[HeaderSize:]); !ok || a.Op != testnet.ARPReplyOp || a.SenderIP != hostIP {
		t.Fatalf("the device holds %s, want the ARP reply", testnet.Describe(held[HeaderSize:]))
	}
	time.Sleep(100 * time.Millisecond)
	if f := g.dev.heldFrame(); !bytes.Equal(f, held) {
		t.Fatal("the held frame changed while no buffer was posted")
	}
	if st := g.dev.Stats(); st.RxDropped != 0 || st.RxFrames != 0 {
		t.Fatalf("stats %+v with no buffer posted", st)
	}
	g.postLinux(1)
	f, ok := g.tryRecv(5 * time.Second)
	if !ok {
		t.Fatalf("the held frame was not delivered when a buffer came (stats %+v)", g.dev.Stats())
	}
	if !bytes.Equal(f, held[HeaderSize:]) {
		t.Fatalf("delivered %s, not the held frame", testnet.Describe(f))
	}
	if g.dev.heldFrame() != nil {
		t.Fatal("the device still holds a frame")
	}

	// Paused, the device takes no buffer, even with one posted.
	g.dev.Pause()
	used := g.rx.UsedIdx()
	hostMAC := net.HardwareAddr(f[6:12])
	g.send(testnet.EchoRequest(guestMAC, hostMAC, guestIP, hostIP, 1, 1, []byte("paused")), false)
	waitHeld(t, g.dev)
	vt.Kick(g.tr, rxQueue)
	time.Sleep(100 * time.Millisecond)
	if g.rx.UsedIdx() != used {
		t.Fatal("a paused device filled a receive buffer")
	}
	g.dev.Resume()
	g.recvMatching("echo reply after resume", func(f []byte) bool {
		e, ok := testnet.ParseEchoReply(f)
		return ok && string(e.Payload) == "paused"
	})
}

// A guest receive chain too small for a frame comes back empty and the
// frame is counted as dropped; the next frame uses the next chain.
func TestReceiveBufferTooSmall(t *testing.T) {
	ns := newNetns(t)
	// The host knows the guest's MAC, so its datagrams go straight out.
	ns.AddNeighbor(t, "tap0", guestIP, guestMAC)
	g := newGuest(t, ns)
	small := g.rx.Writable(200)
	head := g.rx.Add(small)
	vt.Kick(g.tr, rxQueue)
	ns.SendUDP(t, guestIP, 9, make([]byte, 1400))
	deadline := time.Now().Add(5 * time.Second)
	for g.rx.UsedIdx() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the small buffer did not come back (stats %+v)", g.dev.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if u := g.rx.MustUsed(); u.ID != uint32(head) || u.Len != 0 {
		t.Fatalf("used %+v, want head %d back with length 0", u, head)
	}
	if st := g.dev.Stats(); st.RxDropped != 1 || st.RxFrames != 0 {
		t.Fatalf("stats %+v: want the one frame dropped", st)
	}
	g.postLinux(1)
	ns.SendUDP(t, guestIP, 9, []byte("after"))
	g.recvMatching("the next datagram", func(f []byte) bool { return bytes.HasSuffix(f, []byte("after")) })
}

// numReceivers counts goroutines running this package's receive loop.
func numReceivers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "netdev.(*Device).receive(")
}

// waitReceivers waits up to a second for n receive goroutines: one just
// started may not have run yet, one that closed done may not have
// returned yet.
func waitReceivers(n int) int {
	deadline := time.Now().Add(time.Second)
	for {
		got := numReceivers()
		if got == n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(time.Millisecond)
	}
}

// Close ends the receive goroutine wherever it waits (in the poller for a
// frame, or for a receive buffer with a frame held) and detaches: the
// persistent tap stays and another device can attach to it.
func TestCloseStopsReceiver(t *testing.T) {
	ns := newNetns(t)
	before := numReceivers()
	for _, holding := range []bool{false, true} {
		var d *Device
		if err := ns.Do(func() (err error) { d, err = Open(Options{Tap: "tap0"}); return err }); err != nil {
			t.Fatal(err)
		}
		if holding {
			// Make the host send something: it ARPs for 172.16.0.2 on
			// tap0, and the device, never activated, holds the request.
			ns.SendUDP(t, guestIP, 9, []byte("x"))
			waitHeld(t, d)
		}
		if n := waitReceivers(before + 1); n != before+1 {
			t.Fatalf("%d receive goroutines running, want %d", n, before+1)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-d.done:
		default:
			t.Fatal("Close returned before the receive goroutine ended")
		}
		if n := waitReceivers(before); n != before {
			t.Fatalf("holding %v: %d receive goroutines after Close, want %d", holding, n, before)
		}
		if err := d.Err(); err != nil {
			t.Fatalf("Close recorded a receive error: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
}

// Attaching says what is wrong and how to fix it.
func TestOpenErrors(t *testing.T) {
	ns := newNetns(t)
	ns.AddTun(t, "tun0")
	open(t, ns, Options{Tap: "tap0"}) // holds tap0
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Tap: ""}, "virtio-net: tap: no interface name"},
		{Options{Tap: "a/b"}, `virtio-net: tap "a/b": interface names cannot hold '/', ':' or white space`},
		{Options{Tap: "0123456789abcdef"}, `virtio-net: tap "0123456789abcdef": name longer than 15 bytes`},
		{Options{Tap: "nosuch0"}, "virtio-net: tap nosuch0: no such device in this network namespace: create it first (kindlingd does, in the VM's netns)"},
		{Options{Tap: "tun0"}, "virtio-net: tap tun0: attach: invalid argument: the interface exists but is not a single-queue tap"},
		{Options{Tap: "tap0"}, "virtio-net: tap tap0: attach: device or resource busy: another process holds it open (a VMM still running?)"},
		{Options{Tap: "tap1", MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}}, "virtio-net: MAC 01:00:00:00:00:01 is a multicast address"},
		{Options{Tap: "tap1", MAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}}, "virtio-net: MAC 00:00:00:00:00:00 is not an address"},
		{Options{Tap: "tap1", MAC: net.HardwareAddr{6, 0, 0, 0}}, "virtio-net: MAC 06:00:00:00: want 6 bytes"},
	} {
		err := ns.Do(func() error {
			d, err := Open(tc.opts)
			if err == nil {
				d.Close()
			}
			return err
		})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Open(%+v): %v\nwant an error starting %q", tc.opts, err, tc.want)
		}
	}
	err := ns.Do(func() error { _, err := Open(Options{Tap: "nosuch0"}); return err })
	if !errors.Is(err, ErrNoTap) {
		t.Errorf("a missing tap: %v is not ErrNoTap", err)
	}
	// The look-up did not create the tap it did not find.
	if err := ns.Do(func() error { return tapExists("nosuch0") }); !errors.Is(err, ErrNoTap) {
		t.Errorf("after the failed attach: %v", err)
	}
}

// A tap owned by another uid is refused to a VMM without CAP_NET_ADMIN,
// and the error names the owner problem.
func TestOpenOtherOwnersTap(t *testing.T) {
	ns := testnet.New(t)
	ns.AddTapOwnedBy(t, "tap0", "", 4242)
	err := ns.Do(func() error {
		// Drop every effective capability on this thread only (capset
		// is per thread; the namespace's thread ends with the test).
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return err
		}
		data[0].Effective, data[1].Effective = 0, 0
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return err
		}
		d, err := Open(Options{Tap: "tap0"})
		if err == nil {
			d.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "tap tap0: attach: operation not permitted: the tap's owner or group is not this VMM's") {
		t.Fatalf("attach to another uid's tap: %v", err)
	}
}

// The transmit path drops what a tap cannot take, counts it, and still
// returns every chain.
func TestTransmitDrops(t *testing.T) {
	g := newGuest(t, newNetns(t))
	for _, tc := range []struct {
		name string
		bufs []vt.Buf
	}{
		{"header only", []vt.Buf{g.tx.Readable(make([]byte, HeaderSize))}},
		{"runt frame", []vt.Buf{g.tx.Readable(make([]byte, HeaderSize+13))}},
		{"oversized frame", []vt.Buf{g.tx.Readable(make([]byte, HeaderSize)), g.tx.Readable(make([]byte, MaxFrame+1))}},
		{"writable only", []vt.Buf{g.tx.Writable(64)}},
	} {
		before := g.dev.Stats().TxDropped
		g.tx.Add(tc.bufs...)
		vt.Kick(g.tr, txQueue)
		if u := g.tx.MustUsed(); u.Len != 0 {
			t.Errorf("%s: used length %d", tc.name, u.Len)
		}
		if got := g.dev.Stats().TxDropped; got != before+1 {
			t.Errorf("%s: %d drops, want %d", tc.name, got, before+1)
		}
	}
	if g.tr.Failure() != nil {
		t.Fatalf("the transport failed: %v", g.tr.Failure())
	}
	// The device still works.
	g.postLinux(4)
	g.arp()
}

// Device state survives a snapshot: a new device on the tap, given the
// saved device and transport state, has the snapshot's MAC and carries on
// with the guest's rings where they were.
func TestSaveRestore(t *testing.T) {
	ns := newNetns(t)
	g := newGuest(t, ns)
	g.postLinux(8)
	hostMAC := g.arp()
	g.dev.Pause()
	devState, trState := g.dev.Save(), g.tr.Save()
	if devState.MAC != guestMAC.String() {
		t.Fatalf("saved MAC %q", devState.MAC)
	}
	if err := g.dev.Close(); err != nil {
		t.Fatal(err)
	}

	// The restoring VMM's config would give another MAC; the guest's
	// driver knows the saved one.
	d := open(t, ns, Options{Tap: "tap0", MAC: DefaultMAC(7)})
	if err := d.Restore(State{MAC: "not a mac"}); err == nil || !strings.Contains(err.Error(), `snapshot MAC "not a mac"`) {
		t.Fatalf("restore of a bad MAC: %v", err)
	}
	if err := d.Restore(devState); err != nil {
		t.Fatal(err)
	}
	tr, err := virtio.NewTransport(g.mem, d, &vt.Line{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Restore(trState); err != nil {
		t.Fatal(err)
	}
	var cfg [6]byte
	tr.Read(vt.RegConfig, cfg[:])
	if !bytes.Equal(cfg[:], guestMAC) {
		t.Fatalf("restored config MAC % x, want %v", cfg, guestMAC)
	}
	g.dev, g.tr = d, tr
	g.sentFrames, g.sentBytes = 0, 0
	g.ping(hostMAC, 1, 1472, false)
	if st := d.Stats(); st.TxFrames != g.sentFrames || st.RxFrames < 1 {
		t.Fatalf("restored device stats %+v", st)
	}
}
