// Package netdev is virtio-net (virtio 1.2, section 5.1) backed by a Linux
// tap: one receive and one transmit queue, a fixed MAC address and a link
// that is always up, and no offloads.
//
// The tap must exist already, persistent and owned by the VMM's uid: the
// host agent makes it in the VM's network namespace, with the addresses
// and routes the VM needs. This package only attaches to it by name; it
// never creates, configures or deletes interfaces.
//
// Transmit runs on the vCPU thread that notifies the queue: each frame is
// gathered straight from guest memory into one writev on the tap. Receive
// runs on one goroutine per device that reads a frame from the tap, then
// waits for a receive buffer from the guest; while it waits, the frame is
// held (not dropped) and later frames queue in the tap. It waits on a
// condition variable that the guest's receive notify, activation, Resume
// and Close signal, never by polling.
//
// Frames and descriptors come from the guest and are hostile: every length
// is checked before use, and a frame the device cannot pass on is dropped
// and counted, never a panic. The virtio-net header the guest sends is
// not passed to the tap: no offload was negotiated, so the device sends a
// zeroed one and the host stack never parses guest-chosen checksum or
// segmentation fields.
package netdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/memory"
)

const (
	// QueueSize is the size of each queue, as in Firecracker.
	QueueSize = 256

	rxQueue, txQueue = 0, 1

	// HeaderSize is struct virtio_net_hdr_v1 (5.1.6): with
	// VIRTIO_F_VERSION_1 every frame carries the 12-byte header, num_buffers
	// included, whatever else was negotiated.
	HeaderSize = 12
	// numBuffersOff is num_buffers' offset in the header.
	numBuffersOff = 10

	// MaxFrame bounds a frame without its header. With no segmentation
	// offload an Ethernet frame holds at most one IP packet, whose 16-bit
	// total length caps it at 65535 bytes, behind a 14-byte Ethernet header
	// and a 4-byte VLAN tag.
	MaxFrame = 65535 + 14 + 4
	// minFrame is an Ethernet header (ETH_HLEN): the tap refuses anything
	// shorter.
	minFrame = 14
)

// Feature bits (5.1.3).
const (
	featMAC    uint64 = 1 << 5  // VIRTIO_NET_F_MAC
	featStatus uint64 = 1 << 16 // VIRTIO_NET_F_STATUS
)

// Configuration space (struct virtio_net_config, 5.1.4) up to and including
// status; the fields after it belong to features not offered.
const (
	cfgMAC     = 0 // u8[6]
	cfgStatus  = 6 // le16
	configSize = 8

	statusLinkUp = 1 // VIRTIO_NET_S_LINK_UP
)

// Options configure a Device.
type Options struct {
	// Tap is the interface to attach to, in the calling thread's network
	// namespace.
	Tap string
	// MAC is the guest's address, offered in the configuration space. Nil
	// means DefaultMAC(0).
	MAC net.HardwareAddr
}

// DefaultMAC is the address interface i gets when its config names none:
// 06:00:ac:10:i:02, locally administered and unicast (06 in the first
// byte), whose last four bytes spell 172.16.i.2, the guest end of a /30
// at 172.16.i.0 (Firecracker's examples use the same scheme).
func DefaultMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x06, 0x00, 0xac, 0x10, byte(i), 0x02}
}

// CheckMAC accepts a 6-byte unicast address other than all zeros.
func CheckMAC(mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("MAC %v: want 6 bytes, e.g. 06:00:ac:10:00:02", mac)
	}
	if mac[0]&1 != 0 {
		return fmt.Errorf("MAC %v is a multicast address: the guest's own must be unicast (even first byte)", mac)
	}
	if [6]byte(mac) == [6]byte{} {
		return errors.New("MAC 00:00:00:00:00:00 is not an address")
	}
	return nil
}

// State is what a Device adds to its transport's state in a snapshot: the
// MAC the guest read, which its driver keeps. Queues and negotiated
// features are the transport's; frames in flight are not saved (a network
// loses them too).
type State struct {
	MAC string
}

// Stats count frames through the device. Drops are frames the device
// could not pass on: too short or too long, a guest receive buffer too
// small, or a tap write that failed.
type Stats struct {
	RxFrames, RxBytes, RxDropped uint64
	TxFrames, TxBytes, TxDropped uint64
}

var _ virtio.Device = (*Device)(nil)

// Device is a virtio-net device model. It implements virtio.Device.
//
// Locking: mu guards everything below it and is held for a whole Notify
// and a whole delivery of a frame to the guest, so Pause returning means
// no goroutine of the device touches guest memory until Resume. Order:
// the transport's register lock, then mu, then the transport's interrupt
// lock (taken by the SignalFunc).
type Device struct {
	tap  string
	file *os.File        // the tap, non-blocking, in Go's poller
	rc   syscall.RawConn // file's, for read and writev on its descriptor
	done chan struct{}   // closed when the receive goroutine has returned

	mu     sync.Mutex
	cond   *sync.Cond // on mu; wakes the receive goroutine waiting for a buffer
	mac    [6]byte
	mem    *memory.Memory
	rx, tx *virtio.Queue
	signal virtio.SignalFunc
	paused bool  // Pause: no guest memory access until Resume
	closed bool  // Close: the receive goroutine must return
	failed error // the driver broke the queue rules; the device is stopped until reset
	rxErr  error // why the receive goroutine stopped reading the tap, if it did
	// holding is the frame (header included) the receive goroutine has
	// read and waits to deliver; it aliases that goroutine's buffer.
	holding []byte
	stats   Stats
}

// Open attaches to the tap opts.Tap and starts receiving from it. Close
// stops the device and detaches.
func Open(opts Options) (*Device, error) {
	mac := opts.MAC
	if mac == nil {
		mac = DefaultMAC(0)
	}
	if err := CheckMAC(mac); err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	f, err := openTap(opts.Tap)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-net: tap %s: %w", opts.Tap, err)
	}
	d := &Device{tap: opts.Tap, file: f, rc: rc, done: make(chan struct{}), mac: [6]byte(mac)}
	d.cond = sync.NewCond(&d.mu)
	go d.receive()
	return d, nil
}

// Tap is the name of the tap the device is attached to.
func (d *Device) Tap() string { return d.tap }

// MAC is the guest's address.
func (d *Device) MAC() net.HardwareAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(net.HardwareAddr(nil), d.mac[:]...)
}

// Stats returns the frame counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Err is why the device stopped receiving from the tap (the tap was
// deleted, say), or nil while it receives.
func (d *Device) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rxErr
}

// Close stops the receive goroutine and detaches from the tap, which
// stays (it is persistent). Stop the vCPUs first.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.done
		return nil
	}
	d.closed = true
	// No goroutine touches guest memory after Close.
	d.mem, d.rx, d.tx, d.signal = nil, nil, nil, nil
	d.cond.Broadcast()
	d.mu.Unlock()
	// Closing the file wakes a read waiting in the poller.
	err := d.file.Close()
	<-d.done
	if err != nil {
		return fmt.Errorf("virtio-net: close tap %s: %w", d.tap, err)
	}
	return nil
}

// Pause stops the device touching guest memory, for a snapshot: frames
// from the tap wait, in the tap's queue and the one held, until Resume.
// Transmit needs no pausing: it runs on vCPU threads, which a paused VM
// has parked.
func (d *Device) Pause() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.paused = true
}

// Resume lets a paused device deliver frames again.
func (d *Device) Resume() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.paused = false
	d.cond.Broadcast()
}

// DeviceType is virtio.DeviceTypeNet.
func (d *Device) DeviceType() uint32 { return virtio.DeviceTypeNet }

// Features offers the MAC address and the link status.
func (d *Device) Features() uint64 { return featMAC | featStatus }

// QueueMaxSizes is the receive queue, then the transmit queue (5.1.2).
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize, QueueSize} }

// ReadConfig serves struct virtio_net_config: the MAC, and a link that is
// always up.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [configSize]byte
	d.mu.Lock()
	copy(cfg[cfgMAC:], d.mac[:])
	d.mu.Unlock()
	binary.LittleEndian.PutUint16(cfg[cfgStatus:], statusLinkUp)
	virtio.CopyConfig(data, cfg[:], offset)
}

// WriteConfig ignores writes: no offered feature makes a field writable.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate starts the device once the driver has set up both queues.
func (d *Device) Activate(mem *memory.Memory, queues []*virtio.Queue, _ uint64, signal virtio.SignalFunc) error {
	if len(queues) != 2 || !queues[rxQueue].Ready || !queues[txQueue].Ready {
		return errors.New("virtio-net: receive and transmit queues are not ready")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("virtio-net: the device is closed")
	}
	d.mem, d.rx, d.tx, d.signal, d.failed = mem, queues[rxQueue], queues[txQueue], signal, nil
	d.cond.Broadcast() // a held frame may go now
	return nil
}

// Reset stops using the queues. A held frame stays held, for the driver
// that sets the device up again.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mem, d.rx, d.tx, d.signal = nil, nil, nil, nil
}

// Notify serves the driver's kick: new receive buffers wake the receive
// goroutine; new transmit chains are sent at once, on this thread.
func (d *Device) Notify(queue int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mem == nil || d.failed != nil {
		return d.failed
	}
	switch queue {
	case rxQueue:
		d.cond.Broadcast()
	case txQueue:
		d.transmitLocked()
	}
	return d.failed
}

// txHeader is the header every frame goes to the tap with: no checksum to
// complete, no segmentation, whatever the guest's said.
var txHeader [HeaderSize]byte

// transmitLocked sends every chain the driver has queued on tx.
func (d *Device) transmitLocked() {
	pushed := false
	defer func() {
		if pushed && d.failed == nil {
			if err := d.signal(txQueue); err != nil {
				d.failed = fmt.Errorf("virtio-net tx: %w", err)
			}
		}
	}()
	for {
		ch, err := d.tx.Pop(d.mem)
		if err != nil {
			d.failed = fmt.Errorf("virtio-net tx: %w", err)
			return
		}
		if ch == nil {
			return
		}
		d.sendLocked(ch)
		// The device writes nothing into a transmit chain (5.1.6.2).
		if err := d.tx.Push(d.mem, ch.Head, 0); err != nil {
			d.failed = fmt.Errorf("virtio-net tx: %w", err)
			return
		}
		pushed = true
	}
}

// sendLocked writes one frame from the guest to the tap: header, then the
// frame straight from the chain's buffers.
func (d *Device) sendLocked(ch *virtio.Chain) {
	n := ch.ReadableLen()
	if n < HeaderSize+minFrame || n-HeaderSize > MaxFrame {
		d.stats.TxDropped++
		return
	}
	bufs, err := ch.ReadableSlices(d.mem, HeaderSize, n-HeaderSize)
	if err != nil {
		d.stats.TxDropped++ // cannot happen: Pop checked the buffers
		return
	}
	iov := make([][]byte, 0, 1+len(bufs))
	iov = append(append(iov, txHeader[:]), bufs...)
	var werr error
	// Control, not Write: a tap never refuses a write for want of room,
	// and a vCPU must not wait in the poller holding mu if one ever did.
	cerr := d.rc.Control(func(fd uintptr) {
		for {
			if _, werr = unix.Writev(int(fd), iov); werr != unix.EINTR {
				return
			}
		}
	})
	if cerr != nil || werr != nil {
		d.stats.TxDropped++ // the host's side: the tap is down or gone
		return
	}
	d.stats.TxFrames++
	d.stats.TxBytes += n - HeaderSize
}

// receive is the receive goroutine: read a frame, deliver it, repeat,
// until Close or a read error.
func (d *Device) receive() {
	defer close(d.done)
	buf := make([]byte, HeaderSize+MaxFrame)
	for {
		n, err := d.read(buf)
		if err != nil {
			d.mu.Lock()
			if !d.closed {
				d.rxErr = fmt.Errorf("virtio-net: tap %s: read: %w", d.tap, err)
			}
			d.mu.Unlock()
			return
		}
		if n < HeaderSize+minFrame {
			d.mu.Lock()
			d.stats.RxDropped++ // cannot happen: a tap hands over whole frames
			d.mu.Unlock()
			continue
		}
		if !d.deliver(buf[:n]) {
			return
		}
	}
}

// read takes one frame, with its header, from the tap, waiting in the
// poller while there is none.
func (d *Device) read(buf []byte) (int, error) {
	var n int
	var rerr error
	err := d.rc.Read(func(fd uintptr) bool {
		for {
			if n, rerr = unix.Read(int(fd), buf); rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// deliver puts frame into the guest's next receive buffer, waiting for one
// as long as it takes. It reports false when the device closed instead.
func (d *Device) deliver(frame []byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.holding = frame
	defer func() { d.holding = nil }()
	for !d.closed {
		if d.mem != nil && !d.paused && d.failed == nil {
			ch, err := d.rx.Pop(d.mem)
			if err != nil {
				// Reported by the next Notify, which resets the device.
				d.failed = fmt.Errorf("virtio-net rx: %w", err)
				continue
			}
			if ch != nil {
				d.fillLocked(ch, frame)
				return true
			}
			// None posted: Pop has asked for a notify (avail_event)
			// when the driver adds one.
		}
		d.cond.Wait()
	}
	return false
}

// fillLocked writes frame into ch and gives it to the driver. Without
// VIRTIO_NET_F_MRG_RXBUF a frame must fit one chain (5.1.6.3.1): Linux
// posts 1530 bytes (a 1518-byte frame and the header) per chain, over as
// many descriptors as it likes, and the writer spans them.
func (d *Device) fillLocked(ch *virtio.Chain, frame []byte) {
	written := uint32(0)
	if ch.WritableLen() < uint64(len(frame)) {
		// Too small for the frame: the frame is lost and the buffer goes
		// back empty, which Linux counts as a length error and re-posts.
		d.stats.RxDropped++
	} else {
		// The tap's header may say DATA_VALID, which needs
		// VIRTIO_NET_F_GUEST_CSUM: flags and GSO fields must be zero
		// without it (5.1.6.3.2), and num_buffers is 1 without MRG_RXBUF.
		clear(frame[:numBuffersOff])
		binary.LittleEndian.PutUint16(frame[numBuffersOff:], 1)
		if _, err := ch.Writer(d.mem).Write(frame); err != nil {
			d.failed = fmt.Errorf("virtio-net rx: %w", err) // cannot happen: Pop checked the buffers
			return
		}
		written = uint32(len(frame))
		d.stats.RxFrames++
		d.stats.RxBytes += uint64(len(frame) - HeaderSize)
	}
	if err := d.rx.Push(d.mem, ch.Head, written); err != nil {
		d.failed = fmt.Errorf("virtio-net rx: %w", err)
		return
	}
	if err := d.signal(rxQueue); err != nil {
		d.failed = fmt.Errorf("virtio-net rx: %w", err)
	}
}

// Save captures the device's own state; queues are in the transport's.
func (d *Device) Save() State {
	return State{MAC: d.MAC().String()}
}

// Restore takes the snapshot's MAC: the guest's driver has read it
// already and keeps using it, whatever the restored VM's config says.
func (d *Device) Restore(st State) error {
	mac, err := net.ParseMAC(st.MAC)
	if err == nil {
		err = CheckMAC(mac)
	}
	if err != nil {
		return fmt.Errorf("restore virtio-net: snapshot MAC %q: %w", st.MAC, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mac = [6]byte(mac)
	return nil
}
