package vsock

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	vt "github.com/kindlingvm/kindling/vmm/devices/virtio/virtiotest"
	"github.com/kindlingvm/kindling/vmm/memory"
)

const guestCID = 3

// guest is a simulated Linux virtio-vsock driver: it keeps receive buffers
// posted, sends packets on tx and reads them off rx.
type guest struct {
	t            *testing.T
	dev          *Device
	tr           *virtio.Transport
	rx, tx, ev   *vt.Queue
	path         string
	posted       map[uint32]vt.Buf // rx head -> buffer
	bufAlloc     uint32            // what the guest tells the device it can buffer
	fwdCnt       uint32            // bytes the guest has consumed
	pending      []packet          // received, not yet taken
	txCnt        uint32            // bytes the guest sent per connection (one at a time in these tests)
	peerBuf      uint32            // device's buf_alloc as last seen
	peerFwd      uint32            // device's fwd_cnt as last seen
	rxBufferSize uint32
}

type packet struct {
	header
	data []byte
}

func newGuest(t *testing.T) *guest {
	t.Helper()
	dir := t.TempDir()
	g := &guest{t: t, path: filepath.Join(dir, "v.sock"), posted: map[uint32]vt.Buf{}, bufAlloc: 1 << 20, rxBufferSize: 4096}
	var err error
	mem, err := memory.New(16<<20, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() }) // after the device's Close (cleanups run last first)
	g.dev, err = New(Options{GuestCID: guestCID, Path: g.path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.dev.Close() })
	if g.tr, err = virtio.NewTransport(mem, g.dev, &vt.Line{}); err != nil {
		t.Fatal(err)
	}
	g.rx = vt.NewQueue(t, mem, 0x10000, QueueSize, 1<<20)
	g.tx = vt.NewQueue(t, mem, g.rx.End(), QueueSize, 8<<20)
	g.ev = vt.NewQueue(t, mem, g.tx.End(), QueueSize, 64<<10)
	vt.Init(t, g.tr, vt.FeatureVersion1, g.rx, g.tx, g.ev)
	var cid [8]byte
	g.tr.Read(vt.RegConfig, cid[:])
	if cid[0] != guestCID {
		t.Fatalf("config guest_cid %v", cid)
	}
	for i := 0; i < 32; i++ {
		g.post(g.rx.Writable(headerSize + g.rxBufferSize))
	}
	vt.Kick(g.tr, rxQueue)
	return g
}

func (g *guest) post(b vt.Buf) {
	head := g.rx.Add(b)
	g.posted[uint32(head)] = b
}

// send puts one packet on tx and kicks.
func (g *guest) send(op uint16, src, dst uint32, flags uint32, data []byte) {
	g.t.Helper()
	h := header{SrcCID: guestCID, DstCID: HostCID, SrcPort: src, DstPort: dst, Len: uint32(len(data)), Type: typeStream,
		Op: op, Flags: flags, BufAlloc: g.bufAlloc, FwdCnt: g.fwdCnt}
	g.tx.Add(g.tx.Readable(append(h.marshal(), data...)))
	vt.Kick(g.tr, txQueue)
	if u := g.tx.MustUsed(); u.Len != 0 {
		g.t.Fatalf("tx used len %d", u.Len)
	}
	if op == opRW {
		g.txCnt += uint32(len(data))
	}
}

// recv returns the next packet from the device, waiting up to 5 s.
func (g *guest) recv() packet {
	g.t.Helper()
	p, ok := g.tryRecv(5 * time.Second)
	if !ok {
		g.t.Fatal("no packet from the device within 5s")
	}
	return p
}

func (g *guest) tryRecv(wait time.Duration) (packet, bool) {
	g.t.Helper()
	if len(g.pending) > 0 {
		p := g.pending[0]
		g.pending = g.pending[1:]
		return p, true
	}
	deadline := time.Now().Add(wait)
	for {
		if u, ok := g.rx.NextUsed(); ok {
			b := g.posted[u.ID]
			raw := g.rx.Bytes(b.Addr, u.Len)
			h, err := parseHeader(raw)
			if err != nil {
				g.t.Fatal(err)
			}
			if int(h.Len) != len(raw)-headerSize {
				g.t.Fatalf("packet says %d bytes, used length gives %d", h.Len, len(raw)-headerSize)
			}
			delete(g.posted, u.ID)
			g.post(b)
			vt.Kick(g.tr, rxQueue)
			g.peerBuf, g.peerFwd = h.BufAlloc, h.FwdCnt
			return packet{h, append([]byte(nil), raw[headerSize:]...)}, true
		}
		if time.Now().After(deadline) {
			return packet{}, false
		}
		time.Sleep(time.Millisecond)
	}
}

// expect returns the next packet other than a credit update, which must
// have op.
func (g *guest) expect(op uint16) packet {
	g.t.Helper()
	p := g.recv()
	for p.Op == opCreditUpdate && op != opCreditUpdate {
		p = g.recv()
	}
	if p.Op != op {
		g.t.Fatalf("got op %d (%+v), want %d", p.Op, p.header, op)
	}
	return p
}

// hostConnect does the host side of a host-initiated connection to guest
// port port, answering the guest's side as Linux would.
func (g *guest) hostConnect(port uint32) (net.Conn, uint32) {
	g.t.Helper()
	c, err := net.Dial("unix", g.path)
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %d\n", port)
	req := g.expect(opRequest)
	if req.DstPort != port || req.SrcCID != HostCID || req.DstCID != guestCID || req.BufAlloc != BufAlloc {
		g.t.Fatalf("request %+v", req.header)
	}
	g.send(opResponse, port, req.SrcPort, 0, nil)
	line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", req.SrcPort) {
		g.t.Fatalf("handshake answer %q, %v", line, err)
	}
	return c, req.SrcPort
}

func TestHostInitiatedDataBothWays(t *testing.T) {
	g := newGuest(t)
	c, hostPort := g.hostConnect(52)
	c.Write([]byte("ping"))
	p := g.expect(opRW)
	if string(p.data) != "ping" || p.SrcPort != hostPort || p.DstPort != 52 {
		t.Fatalf("got %+v %q", p.header, p.data)
	}
	g.send(opRW, 52, hostPort, 0, []byte("pong"))
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("host read %q, %v", buf, err)
	}
}

func TestGuestInitiated(t *testing.T) {
	g := newGuest(t)
	ln, err := net.Listen("unix", g.path+"_1234")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	g.send(opRequest, 5000, 1234, 0, nil)
	resp := g.expect(opResponse)
	if resp.SrcPort != 1234 || resp.DstPort != 5000 {
		t.Fatalf("response %+v", resp.header)
	}
	c := <-accepted
	defer c.Close()
	g.send(opRW, 5000, 1234, 0, []byte("hello host"))
	buf := make([]byte, 10)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello host" {
		t.Fatalf("host read %q, %v", buf, err)
	}
	c.Write([]byte("hello guest"))
	if p := g.expect(opRW); string(p.data) != "hello guest" {
		t.Fatalf("guest got %q", p.data)
	}
	// Nobody listens on port 99: the guest's connect is refused.
	g.send(opRequest, 5001, 99, 0, nil)
	if p := g.expect(opRst); p.DstPort != 5001 {
		t.Fatalf("rst %+v", p.header)
	}
}

// The device never sends more than the guest's credit, and resumes when
// the guest says it consumed data.
func TestHostToGuestRespectsCredit(t *testing.T) {
	g := newGuest(t)
	g.bufAlloc = 8192
	c, hostPort := g.hostConnect(7)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	go c.Write(payload)
	var got []byte
	for len(got) < len(payload) {
		p, ok := g.tryRecv(300 * time.Millisecond)
		if !ok {
			// Stalled: the device must be exactly out of credit.
			if inFlight := uint32(len(got)) - g.fwdCnt; inFlight != g.bufAlloc {
				t.Fatalf("device stalled with %d bytes in flight, credit %d", inFlight, g.bufAlloc)
			}
			g.fwdCnt = uint32(len(got)) // the application read it all
			g.send(opCreditUpdate, 7, hostPort, 0, nil)
			continue
		}
		if p.Op != opRW {
			t.Fatalf("op %d", p.Op)
		}
		got = append(got, p.data...)
		if inFlight := uint32(len(got)) - g.fwdCnt; inFlight > g.bufAlloc {
			t.Fatalf("device sent %d bytes past a credit of %d", inFlight, g.bufAlloc)
		}
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("data corrupted")
	}
}

// The guest sends far more than the device's buffer, respecting the
// credit the device advertises as the host socket drains.
func TestGuestToHostPastTheCreditWindow(t *testing.T) {
	g := newGuest(t)
	c, hostPort := g.hostConnect(8)
	const total = 4 * BufAlloc
	payload := make([]byte, total)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(c, total))
		read <- b
	}()
	g.peerBuf, g.peerFwd = BufAlloc, 0
	for sent := 0; sent < total; {
		credit := g.peerBuf - (g.txCnt - g.peerFwd)
		if credit == 0 {
			p := g.recv() // a credit update as the host reads
			if p.Op != opCreditUpdate && p.Op != opRW {
				t.Fatalf("op %d while waiting for credit", p.Op)
			}
			continue
		}
		n := min(int(credit), 16<<10, total-sent)
		g.send(opRW, 8, hostPort, 0, payload[sent:sent+n])
		sent += n
	}
	select {
	case b := <-read:
		if !bytes.Equal(b, payload) {
			t.Fatalf("host read %d bytes, corrupted or short", len(b))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("host did not receive everything")
	}
}

func TestGuestOverrunIsReset(t *testing.T) {
	g := newGuest(t)
	c, hostPort := g.hostConnect(9)
	_ = c // the host never reads: its socket buffer, then the device's, fill
	chunk := make([]byte, 32<<10)
	for sent := 0; sent < 8*BufAlloc; sent += len(chunk) {
		g.send(opRW, 9, hostPort, 0, chunk) // ignoring the credit the device gave
	}
	if p := g.expect(opRst); p.SrcPort != hostPort {
		t.Fatalf("rst %+v", p.header)
	}
}

func TestResetAndCloseFromTheGuest(t *testing.T) {
	g := newGuest(t)
	for _, how := range []string{"rst", "shutdown"} {
		c, hostPort := g.hostConnect(10)
		if how == "rst" {
			g.send(opRst, 10, hostPort, 0, nil)
		} else {
			g.send(opShutdown, 10, hostPort, shutdownRcv|shutdownSend, nil)
			if p := g.expect(opRst); p.SrcPort != hostPort {
				t.Fatalf("%s: %+v", how, p.header)
			}
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("%s: host read %d, %v; want EOF", how, n, err)
		}
	}
	// Host closes: the guest is told with a full SHUTDOWN.
	c, hostPort := g.hostConnect(11)
	c.Close()
	if p := g.expect(opShutdown); p.Flags != shutdownRcv|shutdownSend || p.SrcPort != hostPort {
		t.Fatalf("shutdown %+v", p.header)
	}
	g.send(opRst, 11, hostPort, 0, nil)
}

func TestBadHandshakes(t *testing.T) {
	g := newGuest(t)
	for _, line := range []string{"HELLO\n", "CONNECT x\n", "CONNECT 99999999999\n", strings.Repeat("A", 100)} {
		c, err := net.Dial("unix", g.path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(line))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(reply), "ERROR ") {
			t.Errorf("%q: reply %q", line, reply)
		}
		c.Close()
	}
	if p, ok := g.tryRecv(50 * time.Millisecond); ok {
		t.Fatalf("a bad handshake reached the guest: %+v", p.header)
	}
	// The guest refuses a connection: the host sees it closed.
	c, err := net.Dial("unix", g.path)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT 77\n")
	req := g.expect(opRequest)
	g.send(opRst, 77, req.SrcPort, 0, nil)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("refused connect: read %q, %v", b, err)
	}
}

// After a restore the guest must hear that its connections are gone; the
// event waits for an event buffer if none is posted.
func TestTransportResetEvent(t *testing.T) {
	g := newGuest(t)
	if err := g.dev.TransportReset(); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.ev.NextUsed(); ok {
		t.Fatal("event used without a buffer")
	}
	b := g.ev.Writable(8)
	g.ev.Add(b)
	vt.Kick(g.tr, eventQueue)
	u := g.ev.MustUsed()
	if u.Len != 4 || !bytes.Equal(g.ev.Bytes(b.Addr, 4), []byte{0, 0, 0, 0}) {
		t.Fatalf("event %+v %v", u, g.ev.Bytes(b.Addr, 4))
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := New(Options{GuestCID: 2, Path: filepath.Join(t.TempDir(), "s")}); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("cid 2: %v", err)
	}
	if _, err := New(Options{GuestCID: 3, Path: "/nonexistent/dir/s"}); err == nil {
		t.Error("unlistenable path accepted")
	}
	// A live device's socket is refused; a dead one's is taken over.
	p := filepath.Join(t.TempDir(), "s")
	d, err := New(Options{GuestCID: 3, Path: p})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{GuestCID: 4, Path: p}); err == nil || !strings.Contains(err.Error(), "another path") {
		t.Errorf("second device on a live socket: %v", err)
	}
	d.ln.SetUnlinkOnClose(false) // die without cleaning up
	d.Close()
	d2, err := New(Options{GuestCID: 4, Path: p})
	if err != nil {
		t.Fatalf("stale socket not taken over: %v", err)
	}
	d2.Close()
}

// FuzzPacket feeds arbitrary bytes to the device as a guest packet; it must
// never panic and must keep serving.
func FuzzPacket(f *testing.F) {
	h := header{SrcCID: guestCID, DstCID: HostCID, SrcPort: 1, DstPort: 2, Type: typeStream, Op: opRequest}
	f.Add(h.marshal())
	h.Op, h.Len = opRW, 4
	f.Add(append(h.marshal(), "data"...))
	h.Len = 1 << 30
	f.Add(h.marshal())
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		g := newGuest(t)
		if len(pkt) == 0 {
			pkt = []byte{0}
		}
		g.tx.Add(g.tx.Readable(pkt))
		vt.Kick(g.tr, txQueue)
		g.tx.MustUsed()
		for { // drain any answer (an RST, a refused connect)
			if _, ok := g.tryRecv(20 * time.Millisecond); !ok {
				break
			}
		}
		// Still serving: a host connection gets through.
		g.hostConnect(1)
	})
}
