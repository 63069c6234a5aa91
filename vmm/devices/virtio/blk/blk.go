// Package blk is virtio-blk (virtio 1.2, section 5.2): a block device backed
// by a host file, behind a virtio.Transport. It serves one request queue,
// synchronously on the vCPU thread that notifies it, reading and writing the
// file straight into guest memory.
//
// Requests come from the guest and are hostile: headers are copied out of
// guest memory before use, every sector range is checked against the
// capacity with overflow checks, and a malformed request is answered with
// an error status, never a panic or an access outside the disk or guest
// RAM. The file's size is fixed at construction; the device never grows it.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/memory"
)

const (
	// SectorSize is the unit of capacity and request offsets (5.2.4: capacity
	// "in 512-byte sectors"; 5.2.6: sector is "multiplied by 512").
	SectorSize = 512
	// QueueSize is the request queue's maximum size, as in Firecracker.
	QueueSize = 256
	// IDBytes is the length of the GET_ID answer (VIRTIO_BLK_ID_BYTES, 5.2.6).
	IDBytes = 20

	// segMax is offered as seg_max: with a header and a status descriptor a
	// request then fits in QueueSize descriptors, the most one chain (or
	// indirect table) may hold (2.7.5.3.1).
	segMax = QueueSize - 2

	headerSize = 16 // struct virtio_blk_req: le32 type, le32 reserved, le64 sector (5.2.6)
)

// Feature bits (5.2.3).
const (
	featSegMax  uint64 = 1 << 2 // VIRTIO_BLK_F_SEG_MAX
	featRO      uint64 = 1 << 5 // VIRTIO_BLK_F_RO
	featBlkSize uint64 = 1 << 6 // VIRTIO_BLK_F_BLK_SIZE
	featFlush   uint64 = 1 << 9 // VIRTIO_BLK_F_FLUSH
)

// Request types (5.2.6).
const (
	typeIn    = 0 // VIRTIO_BLK_T_IN
	typeOut   = 1 // VIRTIO_BLK_T_OUT
	typeFlush = 4 // VIRTIO_BLK_T_FLUSH
	typeGetID = 8 // VIRTIO_BLK_T_GET_ID
)

// Request status values (5.2.6).
const (
	statusOK     byte = 0 // VIRTIO_BLK_S_OK
	statusIOErr  byte = 1 // VIRTIO_BLK_S_IOERR
	statusUnsupp byte = 2 // VIRTIO_BLK_S_UNSUPP
)

// Configuration space layout (struct virtio_blk_config, 5.2.4), up to and
// including blk_size; the fields after it belong to features not offered.
const (
	cfgCapacity = 0  // le64
	cfgSegMax   = 12 // le32
	cfgBlkSize  = 20 // le32
	configSize  = 24
)

// Options configure a Block.
type Options struct {
	// ReadOnly offers VIRTIO_BLK_F_RO and refuses writes. A file opened
	// read-only is always served read-only.
	ReadOnly bool
	// ID is the serial the guest reads with GET_ID (at most IDBytes bytes;
	// /sys/block/vda/serial in Linux). Empty derives one from the file's
	// device and inode numbers.
	ID string
}

// State is what a Block adds to its transport's state in a snapshot: the
// disk geometry the guest saw, so a restore onto a different disk fails
// instead of corrupting it.
type State struct {
	Capacity uint64 // sectors
	ReadOnly bool
	ID       string
}

var _ virtio.Device = (*Block)(nil)

// Block is a virtio-blk device model. It implements virtio.Device.
type Block struct {
	file     *os.File
	readOnly bool
	capacity uint64 // sectors
	id       [IDBytes]byte
	idLen    int
	config   [configSize]byte

	mu         sync.Mutex // guards the fields below; held for a whole Notify
	mem        *memory.Memory
	queue      *virtio.Queue
	signal     virtio.SignalFunc
	writeCache bool // VIRTIO_BLK_F_FLUSH negotiated: writes may stay in the page cache until FLUSH
}

// Open opens the disk image at path, read-only if opts.ReadOnly, and serves
// it. Close closes the file.
func Open(path string, opts Options) (*Block, error) {
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open disk image: %w", err)
	}
	b, err := New(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

// New serves f, which it takes ownership of. The capacity is the file's
// size rounded down to whole sectors.
func New(f *os.File, opts Options) (*Block, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("size disk image %s: %w", f.Name(), err)
	}
	b := &Block{file: f, readOnly: opts.ReadOnly, capacity: uint64(size) / SectorSize}
	if !b.readOnly {
		mode, err := accessMode(f)
		if err != nil {
			return nil, fmt.Errorf("disk image %s: %w", f.Name(), err)
		}
		b.readOnly = mode == unix.O_RDONLY
	}
	id := opts.ID
	if id == "" {
		if id, err = defaultID(f); err != nil {
			return nil, fmt.Errorf("disk image %s: %w", f.Name(), err)
		}
	}
	if len(id) > IDBytes {
		return nil, fmt.Errorf("disk ID %q is longer than %d bytes", id, IDBytes)
	}
	b.idLen = copy(b.id[:], id)
	binary.LittleEndian.PutUint64(b.config[cfgCapacity:], b.capacity)
	binary.LittleEndian.PutUint32(b.config[cfgSegMax:], segMax)
	binary.LittleEndian.PutUint32(b.config[cfgBlkSize:], SectorSize)
	return b, nil
}

func accessMode(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0)
	}); err != nil {
		return 0, err
	}
	if ferr != nil {
		return 0, fmt.Errorf("F_GETFL: %w", ferr)
	}
	return flags & unix.O_ACCMODE, nil
}

// defaultID names the disk by the backing file's device and inode, like
// Firecracker, so the serial is stable across restarts of the same image.
func defaultID(f *os.File) (string, error) {
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", errors.New("no device and inode numbers")
	}
	id := fmt.Sprintf("%x-%x", st.Dev, st.Ino)
	if len(id) > IDBytes {
		id = id[len(id)-IDBytes:]
	}
	return id, nil
}

// Close closes the backing file. Reset the transport (or stop the VM) first.
func (b *Block) Close() error { return b.file.Close() }

// Capacity is the disk size in sectors.
func (b *Block) Capacity() uint64 { return b.capacity }

// ReadOnly reports whether the disk refuses writes.
func (b *Block) ReadOnly() bool { return b.readOnly }

// DeviceType is virtio.DeviceTypeBlock.
func (b *Block) DeviceType() uint32 { return virtio.DeviceTypeBlock }

// Features offers SEG_MAX, BLK_SIZE, FLUSH, and RO for a read-only disk.
func (b *Block) Features() uint64 {
	f := featSegMax | featBlkSize | featFlush
	if b.readOnly {
		f |= featRO
	}
	return f
}

// QueueMaxSizes is one request queue.
func (b *Block) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig reads struct virtio_blk_config.
func (b *Block) ReadConfig(offset uint64, data []byte) { virtio.CopyConfig(data, b.config[:], offset) }

// WriteConfig ignores writes: no offered feature makes a field writable
// (only writeback, with VIRTIO_BLK_F_CONFIG_WCE).
func (b *Block) WriteConfig(offset uint64, data []byte) {}

// Activate starts serving the request queue.
func (b *Block) Activate(mem *memory.Memory, queues []*virtio.Queue, features uint64, signal virtio.SignalFunc) error {
	if len(queues) != 1 || !queues[0].Ready {
		return errors.New("virtio-blk request queue is not ready")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mem, b.queue, b.signal = mem, queues[0], signal
	b.writeCache = features&featFlush != 0
	return nil
}

// Reset stops serving the queue.
func (b *Block) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mem, b.queue, b.signal, b.writeCache = nil, nil, nil, false
}

// Notify serves every request the driver has queued. The error is for a
// chain that breaks the virtqueue rules; a bad request gets an error status
// instead.
func (b *Block) Notify(queue int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queue == nil || queue != 0 {
		return nil
	}
	var qerr error
	for {
		c, err := b.queue.Pop(b.mem)
		if err != nil {
			qerr = fmt.Errorf("virtio-blk: %w", err)
			break
		}
		if c == nil {
			break
		}
		if err := b.queue.Push(b.mem, c.Head, b.serve(c)); err != nil {
			qerr = fmt.Errorf("virtio-blk: %w", err)
			break
		}
	}
	if err := b.signal(0); err != nil && qerr == nil {
		qerr = fmt.Errorf("virtio-blk: %w", err)
	}
	return qerr
}

// serve executes one request and returns the used length: the bytes written
// contiguously from the start of the writable part (2.7.8.1 lets a device
// report fewer than it wrote, never more).
func (b *Block) serve(c *virtio.Chain) uint32 {
	w := c.WritableLen()
	if w == 0 {
		return 0 // no room for a status byte: give the buffers back untouched
	}
	dataLen := w - 1 // the status byte is the last writable byte (5.2.6)
	status, n := b.execute(c, dataLen)
	s, err := c.WritableSlices(b.mem, dataLen, 1)
	if err != nil {
		return 0 // cannot happen: the chain's buffers were checked by Pop
	}
	s[0][0] = status
	if n == dataLen {
		return uint32(w) // w <= virtio.MaxChainBytes
	}
	return uint32(n)
}

// execute runs the request and returns its status and how many data bytes
// it wrote to the start of the writable part.
func (b *Block) execute(c *virtio.Chain, dataLen uint64) (byte, uint64) {
	var h [headerSize]byte
	if c.ReadableLen() < headerSize {
		return statusIOErr, 0
	}
	if _, err := io.ReadFull(c.Reader(b.mem), h[:]); err != nil {
		return statusIOErr, 0
	}
	typ := binary.LittleEndian.Uint32(h[0:])
	sector := binary.LittleEndian.Uint64(h[8:])
	switch typ {
	case typeIn:
		off, ok := b.rangeOK(sector, dataLen)
		if !ok {
			return statusIOErr, 0
		}
		bufs, err := c.WritableSlices(b.mem, 0, dataLen)
		if err != nil {
			return statusIOErr, 0
		}
		for _, s := range bufs {
			if _, err := b.file.ReadAt(s, off); err != nil {
				return statusIOErr, 0
			}
			off += int64(len(s))
		}
		return statusOK, dataLen
	case typeOut:
		if b.readOnly {
			return statusIOErr, 0 // 5.2.6.2: IOERR and no data written
		}
		n := c.ReadableLen() - headerSize
		off, ok := b.rangeOK(sector, n)
		if !ok {
			return statusIOErr, 0
		}
		bufs, err := c.ReadableSlices(b.mem, headerSize, n)
		if err != nil {
			return statusIOErr, 0
		}
		for _, s := range bufs {
			if _, err := b.file.WriteAt(s, off); err != nil {
				return statusIOErr, 0
			}
			off += int64(len(s))
		}
		if !b.writeCache {
			// Without FLUSH negotiated the driver takes the disk to be
			// write-through (5.2.5: "the cache will be in writeback mode
			// after reset if and only if VIRTIO_BLK_F_FLUSH is
			// negotiated"), so each write must be durable on completion.
			if err := b.file.Sync(); err != nil {
				return statusIOErr, 0
			}
		}
		return statusOK, 0
	case typeFlush:
		if err := b.file.Sync(); err != nil {
			return statusIOErr, 0
		}
		return statusOK, 0
	case typeGetID:
		n := min(uint64(IDBytes), dataLen)
		bufs, err := c.WritableSlices(b.mem, 0, n)
		if err != nil {
			return statusIOErr, 0
		}
		id := b.id[:n] // NUL-padded when the ID is shorter (5.2.6)
		for _, s := range bufs {
			id = id[copy(s, id):]
		}
		return statusOK, n
	}
	return statusUnsupp, 0
}

// rangeOK checks that n bytes at sector are whole sectors inside the disk
// and returns their byte offset.
func (b *Block) rangeOK(sector, n uint64) (int64, bool) {
	if n%SectorSize != 0 || sector > b.capacity || n/SectorSize > b.capacity-sector {
		return 0, false
	}
	// sector <= capacity = file size / 512, so this neither overflows nor
	// exceeds the file's int64 size.
	return int64(sector * SectorSize), true
}

// Save captures the device's own state; queues are in the transport's.
func (b *Block) Save() State {
	return State{Capacity: b.capacity, ReadOnly: b.readOnly, ID: string(b.id[:b.idLen])}
}

// Restore checks that this disk is the one the snapshot's guest saw.
func (b *Block) Restore(st State) error {
	switch {
	case st.Capacity != b.capacity:
		return fmt.Errorf("restore virtio-blk: snapshot disk has %d sectors, %s has %d", st.Capacity, b.file.Name(), b.capacity)
	case st.ReadOnly != b.readOnly:
		return fmt.Errorf("restore virtio-blk: snapshot disk read-only %v, %s read-only %v", st.ReadOnly, b.file.Name(), b.readOnly)
	case len(st.ID) > IDBytes:
		return fmt.Errorf("restore virtio-blk: snapshot disk ID %q longer than %d bytes", st.ID, IDBytes)
	}
	// The guest has read the serial already: it stays the snapshot's, even
	// when the disk was moved to another file (a restore-time override).
	b.mu.Lock()
	defer b.mu.Unlock()
	b.idLen = copy(b.id[:], st.ID)
	for i := b.idLen; i < IDBytes; i++ {
		b.id[i] = 0
	}
	return nil
}
