package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kindlingvm/kindling/vmm/memory"
)

// Split virtqueue layout (virtio 1.2, section 2.7 "Split Virtqueues").
const (
	// MaxQueueSize is the largest split virtqueue (2.7: "Queue Size ... the
	// maximum Queue Size value is 32768").
	MaxQueueSize = 32768

	descSize = 16 // struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next (2.7.5)

	// Alignment and size of the three parts, from the table in 2.7.
	descAlign     = 16
	availAlign    = 2
	usedAlign     = 4
	ringHeader    = 4 // le16 flags, le16 idx (2.7.6, 2.7.8)
	availElemSize = 2 // le16 ring[] entry (2.7.6)
	usedElemSize  = 8 // struct virtq_used_elem: le32 id, le32 len (2.7.8)
	ringTrailer   = 2 // used_event (avail ring) / avail_event (used ring)
)

// Descriptor flags (2.7.5).
const (
	descFNext     uint16 = 1
	descFWrite    uint16 = 2
	descFIndirect uint16 = 4
)

// availFNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT (2.7.6): without
// VIRTIO_F_EVENT_IDX the driver sets it to ask for no used-buffer interrupts.
const availFNoInterrupt uint16 = 1

// MaxChainBytes bounds the bytes one descriptor chain may describe. The used
// ring reports bytes written in a le32 (2.7.8), so a chain must stay well
// below 4 GiB for a device's count to fit; no Linux driver comes near 1 GiB
// (virtio-net frames are at most 64 KiB plus headers, virtio-vsock packets
// 64 KiB, and a virtio-blk request is bounded by the block layer's
// max_sectors, a few MiB). A larger chain is treated as hostile.
const MaxChainBytes = 1 << 30

// ErrNotReady is returned by Pop and Push on a queue the driver has not
// enabled.
var ErrNotReady = errors.New("virtqueue not ready")

// Queue is the device side of one split virtqueue. The exported fields are
// its configuration, written by the transport from the driver's register
// writes and fixed once the device is activated; the ring positions are
// private and change only through Pop, Push, NeedsInterrupt and SetState.
//
// A Queue is not safe for concurrent use: before activation the transport
// owns it, afterwards the device does, until Reset.
type Queue struct {
	MaxSize uint16 // largest Size the device accepts
	Size    uint16 // number of descriptors, set by the driver
	Ready   bool

	DescTable uint64 // guest address of the descriptor table
	AvailRing uint64 // guest address of the available ("driver") ring
	UsedRing  uint64 // guest address of the used ("device") ring

	EventIdx     bool // VIRTIO_F_EVENT_IDX negotiated
	IndirectDesc bool // VIRTIO_F_INDIRECT_DESC negotiated

	nextAvail     uint16 // next available ring entry to consume
	nextUsed      uint16 // next used ring entry to fill (the used idx published)
	signalledUsed uint16 // nextUsed when NeedsInterrupt last looked
}

// NewQueue returns a reset queue accepting up to maxSize descriptors.
func NewQueue(maxSize uint16) *Queue {
	q := &Queue{MaxSize: maxSize}
	q.Reset()
	return q
}

// Reset returns the queue to its state after a device reset: not ready, no
// addresses, indices zero, Size defaulting to MaxSize.
func (q *Queue) Reset() {
	*q = Queue{MaxSize: q.MaxSize, Size: q.MaxSize}
}

// NextAvail is the index of the next available ring entry Pop will consume.
func (q *Queue) NextAvail() uint16 { return q.nextAvail }

// NextUsed is the used idx the device has published.
func (q *Queue) NextUsed() uint16 { return q.nextUsed }

func checkSize(size, maxSize uint16) error {
	if size == 0 || size&(size-1) != 0 || size > maxSize {
		return fmt.Errorf("queue size %d is not a power of two between 1 and %d", size, maxSize)
	}
	return nil
}

// Check validates the driver's configuration before activation: the size,
// and that each ring part is aligned and lies entirely in guest RAM (2.7).
func (q *Queue) Check(mem *memory.Memory) error {
	if err := checkSize(q.Size, q.MaxSize); err != nil {
		return err
	}
	n := uint64(q.Size)
	parts := []struct {
		name        string
		addr, align uint64
		size        uint64
	}{
		{"descriptor table", q.DescTable, descAlign, descSize * n},
		{"available ring", q.AvailRing, availAlign, ringHeader + availElemSize*n + ringTrailer},
		{"used ring", q.UsedRing, usedAlign, ringHeader + usedElemSize*n + ringTrailer},
	}
	for _, p := range parts {
		if p.addr%p.align != 0 {
			return fmt.Errorf("%s at %#x is not %d-byte aligned", p.name, p.addr, p.align)
		}
		if err := mem.Check(p.addr, p.size); err != nil {
			return fmt.Errorf("%s at %#x+%#x: %w", p.name, p.addr, p.size, err)
		}
	}
	return nil
}

// usable guards Pop and Push against a queue that was never validated: a
// bad size would make the ring arithmetic meaningless (memory accesses would
// still be bounds-checked).
func (q *Queue) usable() error {
	if !q.Ready {
		return ErrNotReady
	}
	return checkSize(q.Size, q.MaxSize)
}

func (q *Queue) availIdxAddr() uint64 { return q.AvailRing + 2 }
func (q *Queue) usedIdxAddr() uint64  { return q.UsedRing + 2 }
func (q *Queue) usedEventAddr() uint64 {
	return q.AvailRing + ringHeader + availElemSize*uint64(q.Size)
}
func (q *Queue) availEventAddr() uint64 { return q.UsedRing + ringHeader + usedElemSize*uint64(q.Size) }

// pending reads the driver's avail idx and returns how many entries are
// waiting. The Fence orders the idx read before the ring-entry reads that
// follow (2.7.13.3: the driver publishes entries before the idx).
func (q *Queue) pending(mem *memory.Memory) (uint16, error) {
	idx, err := mem.ReadU16(q.availIdxAddr())
	if err != nil {
		return 0, fmt.Errorf("read avail idx: %w", err)
	}
	mem.Fence()
	n := idx - q.nextAvail // modulo 2^16: the indices wrap (2.7.6)
	if n > q.Size {
		return 0, fmt.Errorf("avail idx %d is %d entries past next avail %d, more than the queue size %d",
			idx, n, q.nextAvail, q.Size)
	}
	return n, nil
}

// Pop consumes the next available descriptor chain. It returns nil, nil when
// the driver has published nothing new. With VIRTIO_F_EVENT_IDX, finding the
// ring empty writes avail_event so that the driver notifies on its next
// addition (2.7.10); a device must therefore pop until Pop returns nil
// before it waits for the next Notify.
//
// A chain that breaks the spec's rules is consumed (so the next Pop moves
// on) and reported as an error; its head cannot be trusted, so nothing is
// returned to the used ring for it.
func (q *Queue) Pop(mem *memory.Memory) (*Chain, error) {
	if err := q.usable(); err != nil {
		return nil, err
	}
	n, err := q.pending(mem)
	if err != nil {
		return nil, err
	}
	if n == 0 && q.EventIdx {
		if err := mem.WriteU16(q.availEventAddr(), q.nextAvail); err != nil {
			return nil, fmt.Errorf("write avail_event: %w", err)
		}
		// The avail_event store must be visible before the re-read, or an
		// entry the driver added meanwhile could go unnotified.
		mem.Fence()
		if n, err = q.pending(mem); err != nil {
			return nil, err
		}
	}
	if n == 0 {
		return nil, nil
	}
	pos := q.nextAvail
	head, err := mem.ReadU16(q.AvailRing + ringHeader + availElemSize*uint64(pos&(q.Size-1)))
	if err != nil {
		return nil, fmt.Errorf("read avail ring entry %d: %w", pos, err)
	}
	q.nextAvail++
	c, err := q.walk(mem, head)
	if err != nil {
		return nil, fmt.Errorf("avail entry %d, chain head %d: %w", pos, head, err)
	}
	return c, nil
}

type rawDesc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(mem *memory.Memory, table uint64, i uint16) (rawDesc, error) {
	var b [descSize]byte
	if err := mem.ReadAt(b[:], table+descSize*uint64(i)); err != nil {
		return rawDesc{}, err
	}
	return rawDesc{
		addr:  binary.LittleEndian.Uint64(b[0:]),
		len:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint16(b[12:]),
		next:  binary.LittleEndian.Uint16(b[14:]),
	}, nil
}

// walk follows the chain starting at head. Each descriptor is read once,
// into a local copy, so the guest changing the table meanwhile cannot make
// the checks and the use disagree. Termination: at most Size descriptors are
// read from the descriptor table and at most the indirect table's length
// from an indirect table, itself at most Size entries, so a looping chain
// ends with an error after at most 2*Size reads.
func (q *Queue) walk(mem *memory.Memory, head uint16) (*Chain, error) {
	c := &Chain{Head: head}
	table, entries := q.DescTable, uint32(q.Size)
	indirect, seenWrite := false, false
	walked := uint32(0)
	idx := head
	for {
		where := "descriptor"
		if indirect {
			where = "indirect descriptor"
		}
		if uint32(idx) >= entries {
			return nil, fmt.Errorf("%s index %d is outside the table of %d", where, idx, entries)
		}
		if walked++; walked > entries {
			return nil, fmt.Errorf("chain loops: more than %d descriptors in a table of %d", entries, entries)
		}
		d, err := readDesc(mem, table, idx)
		if err != nil {
			return nil, fmt.Errorf("read %s %d: %w", where, idx, err)
		}
		if d.flags&descFIndirect != 0 {
			// Rules from 2.7.5.3.1: only with the feature, one level only,
			// never together with NEXT, a whole number of descriptors.
			switch {
			case !q.IndirectDesc:
				return nil, fmt.Errorf("descriptor %d is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated", idx)
			case indirect:
				return nil, fmt.Errorf("indirect descriptor %d points to another indirect table", idx)
			case d.flags&descFNext != 0:
				return nil, fmt.Errorf("descriptor %d sets both INDIRECT and NEXT", idx)
			case d.len == 0 || d.len%descSize != 0:
				return nil, fmt.Errorf("descriptor %d: indirect table length %d is not a non-zero multiple of %d", idx, d.len, descSize)
			case d.len/descSize > uint32(q.Size):
				// 2.7.5.3.1: a chain must not be longer than the queue size.
				return nil, fmt.Errorf("descriptor %d: indirect table of %d descriptors exceeds the queue size %d", idx, d.len/descSize, q.Size)
			}
			if err := mem.Check(d.addr, uint64(d.len)); err != nil {
				return nil, fmt.Errorf("descriptor %d: indirect table: %w", idx, err)
			}
			// The WRITE flag of the descriptor pointing at the table is
			// ignored (2.7.5.3.2).
			table, entries, indirect, walked, idx = d.addr, d.len/descSize, true, 0, 0
			continue
		}
		// Readable descriptors come first (2.7.4.2).
		write := d.flags&descFWrite != 0
		if !write && seenWrite {
			return nil, fmt.Errorf("%s %d is device-readable after a device-writable one", where, idx)
		}
		seenWrite = seenWrite || write
		if d.len > 0 {
			if d.addr+uint64(d.len) < d.addr {
				return nil, fmt.Errorf("%s %d: %#x+%#x overflows", where, idx, d.addr, d.len)
			}
			if err := mem.Check(d.addr, uint64(d.len)); err != nil {
				return nil, fmt.Errorf("%s %d: %w", where, idx, err)
			}
			if c.readLen+c.writeLen+uint64(d.len) > MaxChainBytes {
				return nil, fmt.Errorf("chain is longer than %d bytes", MaxChainBytes)
			}
			if write {
				c.writeLen += uint64(d.len)
			} else {
				c.readLen += uint64(d.len)
				c.readable++
			}
			c.Descs = append(c.Descs, Descriptor{Addr: d.addr, Len: d.len, Write: write})
		}
		if d.flags&descFNext == 0 {
			break
		}
		idx = d.next
	}
	if len(c.Descs) == 0 {
		return nil, errors.New("chain describes no bytes")
	}
	return c, nil
}

// Push returns the chain with the given head to the driver, reporting that
// the device wrote written bytes into its writable part: the used element is
// written first, then (after a Fence) the used idx (2.7.8).
func (q *Queue) Push(mem *memory.Memory, head uint16, written uint32) error {
	if err := q.usable(); err != nil {
		return err
	}
	if head >= q.Size {
		return fmt.Errorf("push head %d: outside the queue of %d", head, q.Size)
	}
	var e [usedElemSize]byte
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	if err := mem.WriteAt(e[:], q.UsedRing+ringHeader+usedElemSize*uint64(q.nextUsed&(q.Size-1))); err != nil {
		return fmt.Errorf("write used ring entry %d: %w", q.nextUsed, err)
	}
	mem.Fence()
	if err := mem.WriteU16(q.usedIdxAddr(), q.nextUsed+1); err != nil {
		return fmt.Errorf("write used idx: %w", err)
	}
	q.nextUsed++
	return nil
}

// NeedsInterrupt reports whether the driver wants a used-buffer interrupt
// for the entries pushed since the previous call (2.7.7): with
// VIRTIO_F_EVENT_IDX it applies vring_need_event to the driver's used_event;
// without, it honours VIRTQ_AVAIL_F_NO_INTERRUPT. Nothing pushed since the
// last call means no interrupt.
func (q *Queue) NeedsInterrupt(mem *memory.Memory) (bool, error) {
	if err := q.usable(); err != nil {
		return false, err
	}
	// The used idx store must be visible before the driver's suppression
	// fields are read, or a driver re-enabling interrupts could be missed.
	mem.Fence()
	old, now := q.signalledUsed, q.nextUsed
	if old == now {
		return false, nil
	}
	q.signalledUsed = now
	if q.EventIdx {
		ev, err := mem.ReadU16(q.usedEventAddr())
		if err != nil {
			return false, fmt.Errorf("read used_event: %w", err)
		}
		return needEvent(ev, now, old), nil
	}
	flags, err := mem.ReadU16(q.AvailRing)
	if err != nil {
		return false, fmt.Errorf("read avail flags: %w", err)
	}
	return flags&availFNoInterrupt == 0, nil
}

// needEvent is the spec's vring_need_event (2.7.7): whether event lies in the
// window of used indices [old, now) the device just published, in 16-bit
// wrapping arithmetic.
func needEvent(event, now, old uint16) bool {
	return now-event-1 < now-old
}

// QueueState is a queue's configuration and ring positions, for snapshots.
type QueueState struct {
	MaxSize, Size                      uint16
	Ready                              bool
	DescTable, AvailRing, UsedRing     uint64
	EventIdx, IndirectDesc             bool
	NextAvail, NextUsed, SignalledUsed uint16
}

// State captures the queue.
func (q *Queue) State() QueueState {
	return QueueState{
		MaxSize: q.MaxSize, Size: q.Size, Ready: q.Ready,
		DescTable: q.DescTable, AvailRing: q.AvailRing, UsedRing: q.UsedRing,
		EventIdx: q.EventIdx, IndirectDesc: q.IndirectDesc,
		NextAvail: q.nextAvail, NextUsed: q.nextUsed, SignalledUsed: q.signalledUsed,
	}
}

// SetState restores a queue captured by State. The saved maximum size must
// match this queue's, and a ready queue's size must be valid; ring addresses
// are checked against guest memory by Check at activation.
func (q *Queue) SetState(st QueueState) error {
	if st.MaxSize != q.MaxSize {
		return fmt.Errorf("saved queue has maximum size %d, this device's has %d", st.MaxSize, q.MaxSize)
	}
	if st.Ready {
		if err := checkSize(st.Size, q.MaxSize); err != nil {
			return fmt.Errorf("saved ready queue: %w", err)
		}
	}
	*q = Queue{
		MaxSize: st.MaxSize, Size: st.Size, Ready: st.Ready,
		DescTable: st.DescTable, AvailRing: st.AvailRing, UsedRing: st.UsedRing,
		EventIdx: st.EventIdx, IndirectDesc: st.IndirectDesc,
		nextAvail: st.NextAvail, nextUsed: st.NextUsed, signalledUsed: st.SignalledUsed,
	}
	return nil
}
