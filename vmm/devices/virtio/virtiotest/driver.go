// Package virtiotest is a simulated guest virtio driver for tests. It lays
// out split virtqueues in guest memory the way a driver does, publishes
// descriptor chains, reads the used ring, drives a virtio-mmio register
// window through Linux's initialisation sequence, and writes raw descriptors
// on request so that tests can build hostile chains.
//
// It takes its numbers from the virtio 1.2 specification, not from package
// virtio, so that the two check each other. It is test support: helpers
// fail the test (testing.TB) rather than return errors, and nothing in the
// VMM imports it.
package virtiotest

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/kindlingvm/kindling/vmm/memory"
)

// Descriptor flags (virtio 1.2, 2.7.5) and ring flags (2.7.6).
const (
	DescNext     uint16 = 1
	DescWrite    uint16 = 2
	DescIndirect uint16 = 4

	AvailNoInterrupt uint16 = 1
)

// Desc is a raw descriptor table entry.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Buf is one buffer of a chain to publish.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Used is a used ring element.
type Used struct {
	ID  uint32
	Len uint32
}

// Queue is the driver's view of one split virtqueue in guest memory, with a
// bump allocator for buffers after the rings.
type Queue struct {
	tb   testing.TB
	Mem  *memory.Memory
	Size uint16

	Desc, Avail, Used uint64 // ring addresses to hand to the device

	heap, heapEnd uint64
	nextDesc      uint16 // next free descriptor, allocated round-robin
	availIdx      uint16
	usedIdx       uint16 // used entries consumed so far
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// NewQueue lays out a queue of size descriptors at base (which it aligns to
// 16) with heapSize bytes of buffer space after the rings. The rings start
// zeroed.
func NewQueue(tb testing.TB, mem *memory.Memory, base uint64, size uint16, heapSize uint64) *Queue {
	tb.Helper()
	q := &Queue{tb: tb, Mem: mem, Size: size}
	q.Desc = alignUp(base, 16)
	q.Avail = q.Desc + 16*uint64(size)
	q.Used = alignUp(q.Avail+6+2*uint64(size), 4)
	q.heap = alignUp(q.Used+6+8*uint64(size), 4096)
	q.heapEnd = q.heap + heapSize
	if err := mem.Check(q.Desc, q.heapEnd-q.Desc); err != nil {
		tb.Fatalf("virtiotest: queue at %#x does not fit in guest memory: %v", base, err)
	}
	zero := make([]byte, q.heap-q.Desc)
	q.write(q.Desc, zero)
	return q
}

// End is the first guest address after the queue's heap.
func (q *Queue) End() uint64 { return q.heapEnd }

func (q *Queue) write(addr uint64, b []byte) {
	q.tb.Helper()
	if err := q.Mem.WriteAt(b, addr); err != nil {
		q.tb.Fatalf("virtiotest: write %#x+%d: %v", addr, len(b), err)
	}
}

func (q *Queue) u16(addr uint64) uint16 {
	q.tb.Helper()
	v, err := q.Mem.ReadU16(addr)
	if err != nil {
		q.tb.Fatalf("virtiotest: read %#x: %v", addr, err)
	}
	return v
}

func (q *Queue) setU16(addr uint64, v uint16) {
	q.tb.Helper()
	if err := q.Mem.WriteU16(addr, v); err != nil {
		q.tb.Fatalf("virtiotest: write %#x: %v", addr, err)
	}
}

// Alloc reserves n bytes (16-byte aligned) of buffer space.
func (q *Queue) Alloc(n uint64) uint64 {
	q.tb.Helper()
	a := alignUp(q.heap, 16)
	if a+n > q.heapEnd || a+n < a {
		q.tb.Fatalf("virtiotest: heap exhausted allocating %d bytes", n)
	}
	q.heap = a + n
	return a
}

// Readable allocates a device-readable buffer holding data.
func (q *Queue) Readable(data []byte) Buf {
	q.tb.Helper()
	a := q.Alloc(uint64(len(data)))
	q.write(a, data)
	return Buf{Addr: a, Len: uint32(len(data))}
}

// Writable allocates a zeroed device-writable buffer of n bytes.
func (q *Queue) Writable(n uint32) Buf {
	q.tb.Helper()
	a := q.Alloc(uint64(n))
	q.write(a, make([]byte, n))
	return Buf{Addr: a, Len: n, Write: true}
}

// SetBytes writes b to guest memory at addr.
func (q *Queue) SetBytes(addr uint64, b []byte) { q.tb.Helper(); q.write(addr, b) }

// Bytes reads n bytes of guest memory at addr.
func (q *Queue) Bytes(addr uint64, n uint32) []byte {
	q.tb.Helper()
	b := make([]byte, n)
	if err := q.Mem.ReadAt(b, addr); err != nil {
		q.tb.Fatalf("virtiotest: read %#x+%d: %v", addr, n, err)
	}
	return b
}

// SetDesc writes descriptor i of the descriptor table.
func (q *Queue) SetDesc(i uint16, d Desc) { q.WriteTable(q.Desc+16*uint64(i), d) }

// WriteTable writes descriptors consecutively at addr: the descriptor table
// or an indirect table.
func (q *Queue) WriteTable(addr uint64, descs ...Desc) {
	q.tb.Helper()
	b := make([]byte, 16*len(descs))
	for i, d := range descs {
		e := b[16*i:]
		binary.LittleEndian.PutUint64(e[0:], d.Addr)
		binary.LittleEndian.PutUint32(e[8:], d.Len)
		binary.LittleEndian.PutUint16(e[12:], d.Flags)
		binary.LittleEndian.PutUint16(e[14:], d.Next)
	}
	q.write(addr, b)
}

// chainDescs turns bufs into descriptors linked first to last, the first one
// numbered first and the rest following modulo size.
func chainDescs(bufs []Buf, first, size uint16) []Desc {
	out := make([]Desc, len(bufs))
	for i, b := range bufs {
		d := Desc{Addr: b.Addr, Len: b.Len}
		if b.Write {
			d.Flags |= DescWrite
		}
		if i < len(bufs)-1 {
			d.Flags |= DescNext
			d.Next = (first + uint16(i) + 1) % size
		}
		out[i] = d
	}
	return out
}

// Add writes bufs as a chain of direct descriptors, publishes it and
// returns its head.
func (q *Queue) Add(bufs ...Buf) uint16 {
	q.tb.Helper()
	head := q.nextDesc
	for i, d := range chainDescs(bufs, head, q.Size) {
		q.SetDesc((head+uint16(i))%q.Size, d)
	}
	q.nextDesc = (head + uint16(len(bufs))) % q.Size
	q.Publish(head)
	return head
}

// AddIndirect writes bufs to an indirect table, publishes one descriptor
// pointing at it and returns its head.
func (q *Queue) AddIndirect(bufs ...Buf) uint16 {
	q.tb.Helper()
	table := q.Alloc(16 * uint64(len(bufs)))
	q.WriteTable(table, chainDescs(bufs, 0, uint16(len(bufs)))...)
	head := q.nextDesc
	q.SetDesc(head, Desc{Addr: table, Len: 16 * uint32(len(bufs)), Flags: DescIndirect})
	q.nextDesc = (head + 1) % q.Size
	q.Publish(head)
	return head
}

// Publish puts head in the next available ring slot and bumps avail idx.
func (q *Queue) Publish(head uint16) {
	q.tb.Helper()
	q.setU16(q.Avail+4+2*uint64(q.availIdx%q.Size), head)
	q.availIdx++
	q.setU16(q.Avail+2, q.availIdx)
}

// AvailIdx is the driver's avail idx.
func (q *Queue) AvailIdx() uint16 { return q.availIdx }

// SetAvailIdx writes avail idx directly, without publishing entries.
func (q *Queue) SetAvailIdx(v uint16) {
	q.tb.Helper()
	q.availIdx = v
	q.setU16(q.Avail+2, v)
}

// StartAt moves both rings' indices to idx, as if idx chains had been
// processed, to test 16-bit wrap-around. The device side must be moved to
// the same position (virtio.Queue.SetState).
func (q *Queue) StartAt(idx uint16) {
	q.tb.Helper()
	q.SetAvailIdx(idx)
	q.usedIdx = idx
	q.setU16(q.Used+2, idx)
}

// UsedIdx reads the device's used idx.
func (q *Queue) UsedIdx() uint16 {
	q.tb.Helper()
	return q.u16(q.Used + 2)
}

// NextUsed returns the next used element the device published, if any.
// Like Linux's virtqueue_get_buf it then sets used_event to the number of
// elements consumed, asking (under VIRTIO_F_EVENT_IDX) for an interrupt at
// the next one; without the feature the device ignores the field.
func (q *Queue) NextUsed() (Used, bool) {
	q.tb.Helper()
	if q.UsedIdx() == q.usedIdx {
		return Used{}, false
	}
	e := q.Bytes(q.Used+4+8*uint64(q.usedIdx%q.Size), 8)
	q.usedIdx++
	q.SetUsedEvent(q.usedIdx)
	return Used{ID: binary.LittleEndian.Uint32(e), Len: binary.LittleEndian.Uint32(e[4:])}, true
}

// MustUsed returns the next used element and fails the test if there is none.
func (q *Queue) MustUsed() Used {
	q.tb.Helper()
	u, ok := q.NextUsed()
	if !ok {
		q.tb.Fatalf("virtiotest: no used element (used idx %d)", q.usedIdx)
	}
	return u
}

// SetAvailFlags writes the avail ring's flags (AvailNoInterrupt).
func (q *Queue) SetAvailFlags(f uint16) { q.tb.Helper(); q.setU16(q.Avail, f) }

// SetUsedEvent writes used_event, the avail ring's trailing field.
func (q *Queue) SetUsedEvent(v uint16) { q.tb.Helper(); q.setU16(q.Avail+4+2*uint64(q.Size), v) }

// AvailEvent reads avail_event, the used ring's trailing field.
func (q *Queue) AvailEvent() uint16 { q.tb.Helper(); return q.u16(q.Used + 4 + 8*uint64(q.Size)) }

// Line is a fake interrupt line that records every level it is set to.
type Line struct {
	mu     sync.Mutex
	levels []bool
	Err    error // returned by SetLevel when set
}

// SetLevel records the level.
func (l *Line) SetLevel(high bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.levels = append(l.levels, high)
	return l.Err
}

// High reports the last level set.
func (l *Line) High() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.levels) > 0 && l.levels[len(l.levels)-1]
}

// Rises counts low-to-high transitions: interrupts on an edge-triggered pin.
func (l *Line) Rises() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, prev := 0, false
	for _, h := range l.levels {
		if h && !prev {
			n++
		}
		prev = h
	}
	return n
}
