// Package vsock is virtio-vsock (virtio 1.2, section 5.10) with its host
// side on Unix sockets in Firecracker's "hybrid" style:
//
//   - host-initiated: a host process connects to the device's socket path
//     and writes "CONNECT <port>\n"; the device asks the guest to accept on
//     that port and, once it does, answers "OK <host port>\n"; after that
//     the Unix connection carries the stream.
//   - guest-initiated: a guest connect to the host (CID 2) on port P makes
//     the device connect to "<path>_<P>"; a listener there gets the stream.
//
// Flow control is the protocol's credit scheme: the device never sends the
// guest more than the guest said it can buffer, and offers the guest a
// fixed receive buffer per connection, which it drains into the Unix
// socket on a writer goroutine and re-offers with credit updates. A guest
// that overruns its credit, or sends anything malformed, gets its
// connection reset; packets come from the guest and are hostile.
//
// One mutex guards all state. Guest notifications and host events (a new
// connection, data read, data written) all end in process(), which drains
// the transmit queue and fills the receive queue; nothing blocks on a
// socket while holding the lock.
package vsock

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/memory"
)

const (
	// QueueSize is the size of each of the three queues (rx, tx, event).
	QueueSize = 256

	rxQueue, txQueue, eventQueue = 0, 1, 2

	// BufAlloc is the receive buffer the device offers the guest on each
	// connection: data written by the guest and not yet taken by the host
	// socket.
	BufAlloc = 256 << 10
	// readAhead bounds what the device reads from a host socket before the
	// guest has taken it.
	readAhead = 64 << 10
	// maxPayload bounds one packet from the guest; Linux sends at most 64 KiB.
	maxPayload = 64 << 10

	handshakeTimeout = 5 * time.Second
	// firstHostPort is where ports for host-initiated connections start,
	// clear of the ports guests bind (as in Firecracker).
	firstHostPort = 1 << 30
)

// Options configure a Device.
type Options struct {
	// GuestCID is the guest's context ID (3 or more).
	GuestCID uint64
	// Path is the Unix socket host processes connect to; guest-initiated
	// connections go to Path + "_<port>".
	Path string
}

var _ virtio.Device = (*Device)(nil)

// Device is a virtio-vsock device model. It implements virtio.Device.
type Device struct {
	cid  uint64
	path string
	ln   *net.UnixListener

	mu     sync.Mutex
	mem    *memory.Memory
	rx, tx *virtio.Queue
	ev     *virtio.Queue
	// resetPending: a transport-reset event is owed to the guest and waits
	// for an event buffer.
	resetPending bool
	signal       virtio.SignalFunc
	conns        map[connKey]*conn
	ctrl         []header // control packets waiting for a receive buffer
	nextPort     uint32
	failed       error // the driver broke the queue rules; the device is stopped
	closed       bool
	wg           sync.WaitGroup
}

type connKey struct{ hostPort, guestPort uint32 }

type connState int

const (
	connecting  connState = iota // host-initiated, waiting for the guest's RESPONSE
	established                  // data flows
	closed                       // torn down; goroutines are leaving
)

// chunk is bytes for a host socket: the guest's stream (counted against
// its credit) or the device's own "OK <port>" line.
type chunk struct {
	data    []byte
	counted bool
}

type conn struct {
	key   connKey
	sock  net.Conn
	state connState
	// guest -> host
	out      []chunk    // for the socket, not yet written by the writer goroutine
	outBytes uint32     // the guest's bytes in out
	fwdCnt   uint32     // bytes the host socket has taken
	told     uint32     // fwdCnt as last sent to the guest
	outCond  *sync.Cond // wakes the writer goroutine
	guestEOF bool       // the guest will send no more: half-close the socket once out drains
	// host -> guest
	in            []byte // read from the host socket, not yet sent
	hostEOF       bool   // the socket has no more to read
	shutdownSent  bool
	inCond        *sync.Cond // wakes the reader goroutine when in drains
	txCnt         uint32     // bytes sent to the guest
	peerBufAlloc  uint32
	peerFwdCnt    uint32
	readerStarted bool
}

// owed is the packet c owes the guest next, if any: data within the
// guest's credit, the end of the host's stream, or a credit update.
func (c *conn) owed() (op uint16, ok bool) {
	switch {
	case c.state != established:
		return 0, false
	case len(c.in) > 0 && c.credit() > 0:
		return opRW, true
	case c.hostEOF && len(c.in) == 0 && !c.shutdownSent:
		return opShutdown, true
	case c.owesCredit():
		return opCreditUpdate, true
	}
	return 0, false
}

// owesCredit says the guest should hear the device's fwd_cnt: the free
// space it last heard of is under half the buffer and the host socket has
// taken more since. Linux then waits for exactly this update.
func (c *conn) owesCredit() bool {
	if c.fwdCnt == c.told {
		return false
	}
	received := c.fwdCnt + c.outBytes // everything the guest sent
	return received-c.told > BufAlloc/2
}

// credit is how many bytes the guest can take now.
func (c *conn) credit() uint32 {
	used := c.txCnt - c.peerFwdCnt
	if used > c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - used
}

// New listens on opts.Path and returns the device. Close stops it.
func New(opts Options) (*Device, error) {
	if opts.GuestCID < 3 || opts.GuestCID > 0xffffffff {
		return nil, fmt.Errorf("vsock: guest CID %d: want 3 to 4294967295 (0-2 are reserved)", opts.GuestCID)
	}
	if opts.Path == "" {
		return nil, errors.New("vsock: no Unix socket path")
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: opts.Path, Net: "unix"})
	if errors.Is(err, syscall.EADDRINUSE) && stale(opts.Path) {
		// Left behind by a VMM that died: nobody answers on it.
		os.Remove(opts.Path)
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: opts.Path, Net: "unix"})
	}
	if err != nil {
		return nil, fmt.Errorf("vsock: listen on %s: %w (another VM's vsock socket? give this one another path)", opts.Path, err)
	}
	d := &Device{cid: opts.GuestCID, path: opts.Path, ln: ln, conns: map[connKey]*conn{}, nextPort: firstHostPort}
	d.wg.Add(1)
	go d.accept()
	return d, nil
}

// stale reports whether path is a Unix socket nobody listens on.
func stale(path string) bool {
	st, err := os.Lstat(path)
	if err != nil || st.Mode()&os.ModeSocket == 0 {
		return false
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// Close stops listening and closes every connection.
func (d *Device) Close() error {
	d.mu.Lock()
	d.closed = true
	for _, c := range d.conns {
		d.dropLocked(c)
	}
	d.mem, d.rx, d.tx, d.ev, d.signal = nil, nil, nil, nil, nil // no goroutine touches guest memory after Close
	d.mu.Unlock()
	err := d.ln.Close()
	d.wg.Wait()
	return err
}

func (d *Device) DeviceType() uint32      { return virtio.DeviceTypeVsock }
func (d *Device) Features() uint64        { return 0 }
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// ReadConfig serves struct virtio_vsock_config: le64 guest_cid.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [8]byte
	for i := range cfg {
		cfg[i] = byte(d.cid >> (8 * i))
	}
	virtio.CopyConfig(data, cfg[:], offset)
}

// WriteConfig ignores writes: the configuration is read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate starts the device once the driver has set up rx and tx.
func (d *Device) Activate(mem *memory.Memory, queues []*virtio.Queue, _ uint64, signal virtio.SignalFunc) error {
	if len(queues) != 3 || !queues[rxQueue].Ready || !queues[txQueue].Ready {
		return errors.New("virtio-vsock: rx and tx queues are not ready")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mem, d.rx, d.tx, d.ev, d.signal, d.failed = mem, queues[rxQueue], queues[txQueue], queues[eventQueue], signal, nil
	return nil
}

// TransportReset tells the guest that every connection it had is gone
// (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, 5.10.6.7): what a restored VM must
// hear, since the host ends of its connections did not survive the
// snapshot. The event goes out when the guest has an event buffer posted.
func (d *Device) TransportReset() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resetPending = true
	return d.sendEventLocked()
}

func (d *Device) sendEventLocked() error {
	if !d.resetPending || d.mem == nil || d.ev == nil || !d.ev.Ready || d.failed != nil {
		return d.failed
	}
	ch, err := d.ev.Pop(d.mem)
	if err != nil {
		d.failed = fmt.Errorf("virtio-vsock event: %w", err)
		return d.failed
	}
	if ch == nil {
		return nil
	}
	var ev [4]byte // le32 id; VIRTIO_VSOCK_EVENT_TRANSPORT_RESET is 0
	n, _ := ch.Writer(d.mem).Write(ev[:])
	if err := d.ev.Push(d.mem, ch.Head, uint32(n)); err != nil {
		d.failed = fmt.Errorf("virtio-vsock event: %w", err)
		return d.failed
	}
	d.resetPending = false
	return d.signal(eventQueue)
}

// Notify processes the driver's kick of any queue: new packets to send,
// new receive buffers.
func (d *Device) Notify(queue int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if queue == eventQueue {
		return d.sendEventLocked()
	}
	d.processLocked()
	return d.failed
}

// Reset drops every connection: the guest's side of them is gone.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		d.dropLocked(c)
	}
	d.ctrl = nil
	d.resetPending = false
	d.mem, d.rx, d.tx, d.ev, d.signal = nil, nil, nil, nil, nil
}

// processLocked drains the transmit queue, then fills the receive queue.
func (d *Device) processLocked() {
	if d.mem == nil || d.failed != nil {
		return
	}
	popped := false
	for {
		c, err := d.tx.Pop(d.mem)
		if err != nil {
			d.failed = fmt.Errorf("virtio-vsock tx: %w", err)
			return
		}
		if c == nil {
			break
		}
		d.fromGuestLocked(c)
		if err := d.tx.Push(d.mem, c.Head, 0); err != nil {
			d.failed = fmt.Errorf("virtio-vsock tx: %w", err)
			return
		}
		popped = true
	}
	if popped {
		if err := d.signal(txQueue); err != nil {
			d.failed = err
			return
		}
	}
	d.toGuestLocked()
}

// fromGuestLocked handles one packet the guest sent.
func (d *Device) fromGuestLocked(ch *virtio.Chain) {
	hb := make([]byte, headerSize)
	n, _ := io.ReadFull(ch.Reader(d.mem), hb)
	h, err := parseHeader(hb[:n])
	if err != nil {
		return // not even a header: nothing to answer
	}
	if h.SrcCID != d.cid || h.DstCID != HostCID || h.Type != typeStream {
		d.rstLocked(h)
		return
	}
	if h.Len > maxPayload || uint64(h.Len) > ch.ReadableLen()-headerSize {
		d.rstLocked(h)
		d.dropKeyLocked(connKey{h.DstPort, h.SrcPort})
		return
	}
	key := connKey{hostPort: h.DstPort, guestPort: h.SrcPort}
	c := d.conns[key]
	if c != nil {
		c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	}
	switch h.Op {
	case opRequest:
		if c != nil {
			d.rstLocked(h)
			d.dropLocked(c)
			return
		}
		d.guestConnectLocked(h)
	case opResponse:
		if c == nil || c.state != connecting {
			d.rstLocked(h)
			return
		}
		c.state = established
		d.queueOutLocked(c, []byte(fmt.Sprintf("OK %d\n", c.key.hostPort)), false)
		d.startReaderLocked(c)
	case opRW:
		if c == nil || c.state != established || c.guestEOF {
			d.rstLocked(h)
			return
		}
		if c.outBytes+h.Len > BufAlloc {
			// The guest overran the credit we gave it.
			d.rstLocked(h)
			d.dropLocked(c)
			return
		}
		data := make([]byte, h.Len)
		r := ch.Reader(d.mem)
		if _, err := io.CopyN(io.Discard, r, headerSize); err == nil {
			_, err = io.ReadFull(r, data)
		}
		d.queueOutLocked(c, data, true)
	case opShutdown:
		if c == nil {
			d.rstLocked(h)
			return
		}
		if h.Flags&shutdownSend != 0 {
			c.guestEOF = true
			c.outCond.Signal()
		}
		if h.Flags&(shutdownSend|shutdownRcv) == shutdownSend|shutdownRcv {
			d.rstLocked(h)
			d.dropLocked(c)
		}
	case opRst:
		if c != nil {
			d.dropLocked(c)
		}
	case opCreditUpdate:
		// Credit fields were taken above; more data may flow now.
	case opCreditRequest:
		if c != nil {
			d.ctrl = append(d.ctrl, d.replyLocked(c, opCreditUpdate, 0))
		}
	default:
		d.rstLocked(h)
		if c != nil {
			d.dropLocked(c)
		}
	}
}

// guestConnectLocked connects a guest's REQUEST to "<path>_<port>". Unix
// connects complete or fail at once, so this does not block the vCPU.
func (d *Device) guestConnectLocked(h header) {
	sock, err := net.DialTimeout("unix", d.path+"_"+strconv.FormatUint(uint64(h.DstPort), 10), time.Second)
	if err != nil {
		d.rstLocked(h)
		return
	}
	c := d.newConnLocked(connKey{h.DstPort, h.SrcPort}, sock, established)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	d.ctrl = append(d.ctrl, d.replyLocked(c, opResponse, 0))
	d.startReaderLocked(c)
}

func (d *Device) newConnLocked(key connKey, sock net.Conn, st connState) *conn {
	c := &conn{key: key, sock: sock, state: st}
	c.outCond = sync.NewCond(&d.mu)
	c.inCond = sync.NewCond(&d.mu)
	d.conns[key] = c
	d.wg.Add(1)
	go d.writer(c)
	return c
}

// replyLocked builds a packet from the host to the guest on c.
func (d *Device) replyLocked(c *conn, op uint16, flags uint32) header {
	c.told = c.fwdCnt
	return header{SrcCID: HostCID, DstCID: d.cid, SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
		Type: typeStream, Op: op, Flags: flags, BufAlloc: BufAlloc, FwdCnt: c.fwdCnt}
}

// rstLocked answers a packet with RST (unless it was one).
func (d *Device) rstLocked(h header) {
	if h.Op == opRst {
		return
	}
	d.ctrl = append(d.ctrl, header{SrcCID: HostCID, DstCID: h.SrcCID, SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: typeStream, Op: opRst, BufAlloc: BufAlloc})
}

// queueOutLocked hands data to c's writer goroutine; counted data is the
// guest's stream and uses its credit, the OK line does not.
func (d *Device) queueOutLocked(c *conn, data []byte, counted bool) {
	if len(data) == 0 {
		return
	}
	c.out = append(c.out, chunk{data, counted})
	if counted {
		c.outBytes += uint32(len(data))
	}
	c.outCond.Signal()
}

func (d *Device) dropKeyLocked(k connKey) {
	if c := d.conns[k]; c != nil {
		d.dropLocked(c)
	}
}

// dropLocked tears c down; its goroutines leave on their own.
func (d *Device) dropLocked(c *conn) {
	if c.state == closed {
		return
	}
	c.state = closed
	c.sock.Close()
	c.outCond.Broadcast()
	c.inCond.Broadcast()
	delete(d.conns, c.key)
}

// toGuestLocked fills receive buffers: control packets first, then data
// within each connection's credit, then end-of-stream notices.
func (d *Device) toGuestLocked() {
	keys := make([]connKey, 0, len(d.conns))
	for k := range d.conns {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].hostPort < keys[j].hostPort || keys[i].hostPort == keys[j].hostPort && keys[i].guestPort < keys[j].guestPort
	})
	pushed := false
	defer func() {
		if pushed && d.failed == nil {
			if err := d.signal(rxQueue); err != nil {
				d.failed = err
			}
		}
	}()
	for {
		var h header
		var data []byte
		var c *conn
		var op uint16
		if len(d.ctrl) > 0 {
			h = d.ctrl[0]
		} else {
			for _, k := range keys {
				if cc := d.conns[k]; cc != nil {
					var ok bool
					if op, ok = cc.owed(); ok {
						c = cc
						break
					}
				}
			}
			if c == nil {
				return
			}
		}
		ch, err := d.rx.Pop(d.mem)
		if err != nil {
			d.failed = fmt.Errorf("virtio-vsock rx: %w", err)
			return
		}
		if ch == nil {
			return // the guest has no buffers; it kicks rx when it adds some
		}
		if ch.WritableLen() < headerSize {
			d.failed = fmt.Errorf("virtio-vsock rx: a %d-byte buffer cannot hold a packet header", ch.WritableLen())
			return
		}
		switch {
		case c == nil:
			d.ctrl = d.ctrl[1:]
		case op == opRW:
			n := min(uint64(len(c.in)), uint64(c.credit()), ch.WritableLen()-headerSize)
			data = c.in[:n]
			h = d.replyLocked(c, opRW, 0)
			h.Len = uint32(n)
		case op == opShutdown:
			c.shutdownSent = true // (credit updates ride on this and on RW)
			h = d.replyLocked(c, opShutdown, shutdownSend|shutdownRcv)
		default:
			h = d.replyLocked(c, opCreditUpdate, 0)
		}
		w := ch.Writer(d.mem)
		if _, err := w.Write(h.marshal()); err == nil && len(data) > 0 {
			_, err = w.Write(data)
		}
		if c != nil && len(data) > 0 {
			c.txCnt += uint32(len(data))
			c.in = c.in[len(data):]
			c.inCond.Signal()
		}
		if err := d.rx.Push(d.mem, ch.Head, uint32(headerSize+len(data))); err != nil {
			d.failed = fmt.Errorf("virtio-vsock rx: %w", err)
			return
		}
		pushed = true
	}
}

// writer copies what the guest sent on c into its socket.
func (d *Device) writer(c *conn) {
	defer d.wg.Done()
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		for len(c.out) == 0 && !(c.guestEOF && c.outBytes == 0) && c.state != closed {
			c.outCond.Wait()
		}
		if c.state == closed {
			return
		}
		if len(c.out) == 0 { // the guest shut down its sending side
			if uc, ok := c.sock.(*net.UnixConn); ok {
				uc.CloseWrite()
			}
			for c.state != closed {
				c.outCond.Wait()
			}
			return
		}
		next := c.out[0]
		c.out = c.out[1:]
		d.mu.Unlock()
		_, err := c.sock.Write(next.data)
		d.mu.Lock()
		if err != nil {
			if c.state != closed {
				d.ctrl = append(d.ctrl, d.replyLocked(c, opRst, 0))
				d.dropLocked(c)
				d.processLocked()
			}
			return
		}
		if c.state == closed {
			return
		}
		if !next.counted {
			continue
		}
		c.outBytes -= uint32(len(next.data))
		c.fwdCnt += uint32(len(next.data))
		d.processLocked() // may owe the guest a credit update
	}
}

// startReaderLocked starts copying c's socket to the guest.
func (d *Device) startReaderLocked(c *conn) {
	if c.readerStarted {
		return
	}
	c.readerStarted = true
	d.wg.Add(1)
	go d.reader(c)
}

func (d *Device) reader(c *conn) {
	defer d.wg.Done()
	buf := make([]byte, readAhead)
	for {
		d.mu.Lock()
		for len(c.in) >= readAhead && c.state != closed {
			c.inCond.Wait()
		}
		st := c.state
		d.mu.Unlock()
		if st == closed {
			return
		}
		n, err := c.sock.Read(buf)
		d.mu.Lock()
		if c.state == closed {
			d.mu.Unlock()
			return
		}
		c.in = append(c.in, buf[:n]...)
		if err != nil {
			c.hostEOF = true
		}
		d.processLocked()
		d.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// accept serves host-initiated connections.
func (d *Device) accept() {
	defer d.wg.Done()
	for {
		sock, err := d.ln.Accept()
		if err != nil {
			return // closed
		}
		d.wg.Add(1)
		go d.handshake(sock)
	}
}

// handshake reads "CONNECT <port>\n" and asks the guest to accept.
func (d *Device) handshake(sock net.Conn) {
	defer d.wg.Done()
	sock.SetReadDeadline(time.Now().Add(handshakeTimeout))
	line, err := readLine(sock, 32)
	sock.SetReadDeadline(time.Time{})
	var port uint64
	if err == nil {
		f := strings.Fields(line)
		if len(f) != 2 || f[0] != "CONNECT" {
			err = fmt.Errorf("want \"CONNECT <port>\", got %q", line)
		} else if port, err = strconv.ParseUint(f[1], 10, 32); err != nil {
			err = fmt.Errorf("bad port %q", f[1])
		}
	}
	if err != nil {
		fmt.Fprintf(sock, "ERROR %v\n", err)
		sock.Close()
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.mem == nil {
		fmt.Fprintf(sock, "ERROR the guest's vsock driver is not running\n")
		sock.Close()
		return
	}
	key := connKey{hostPort: d.nextPort, guestPort: uint32(port)}
	d.nextPort++
	if d.nextPort == 0 {
		d.nextPort = firstHostPort
	}
	c := d.newConnLocked(key, sock, connecting)
	d.ctrl = append(d.ctrl, d.replyLocked(c, opRequest, 0))
	d.processLocked()
}

// readLine reads up to a newline one byte at a time, so nothing after the
// line is consumed.
func readLine(r io.Reader, max int) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < max {
		if _, err := io.ReadFull(r, one); err != nil {
			return "", fmt.Errorf("read handshake: %w", err)
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
	return "", fmt.Errorf("handshake line longer than %d bytes", max)
}
