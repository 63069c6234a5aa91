package virtio

import (
	"fmt"
	"io"

	"github.com/kindlingvm/kindling/vmm/memory"
)

// Descriptor is one validated buffer of a chain: Len > 0 bytes at guest
// address Addr, all inside guest RAM. Write marks a device-writable buffer.
type Descriptor struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// Chain is a descriptor chain popped from a queue, with indirect tables
// flattened and zero-length descriptors dropped. Descs lists the
// device-readable buffers first, then the device-writable ones (2.7.4.2).
// Chains come from Queue.Pop; the descriptors were checked against guest
// memory then, but the bytes they point at are the guest's and may change at
// any time.
type Chain struct {
	Head  uint16 // descriptor index to give back to Queue.Push
	Descs []Descriptor

	readable          int // Descs[:readable] are device-readable
	readLen, writeLen uint64
}

// Readable is the device-readable part of the chain.
func (c *Chain) Readable() []Descriptor { return c.Descs[:c.readable] }

// Writable is the device-writable part of the chain.
func (c *Chain) Writable() []Descriptor { return c.Descs[c.readable:] }

// ReadableLen is the number of device-readable bytes.
func (c *Chain) ReadableLen() uint64 { return c.readLen }

// WritableLen is the number of device-writable bytes.
func (c *Chain) WritableLen() uint64 { return c.writeLen }

// Reader reads the device-readable bytes in order.
func (c *Chain) Reader(mem *memory.Memory) *Reader {
	return &Reader{mem: mem, descs: c.Readable(), left: c.readLen}
}

// Writer writes the device-writable bytes in order.
func (c *Chain) Writer(mem *memory.Memory) *Writer {
	return &Writer{mem: mem, descs: c.Writable(), left: c.writeLen}
}

// ReadableSlices returns the n device-readable bytes starting off bytes into
// the readable part, as slices aliasing guest memory, for zero-copy I/O.
func (c *Chain) ReadableSlices(mem *memory.Memory, off, n uint64) ([][]byte, error) {
	return slices(mem, c.Readable(), c.readLen, off, n)
}

// WritableSlices is ReadableSlices for the device-writable part.
func (c *Chain) WritableSlices(mem *memory.Memory, off, n uint64) ([][]byte, error) {
	return slices(mem, c.Writable(), c.writeLen, off, n)
}

func slices(mem *memory.Memory, descs []Descriptor, total, off, n uint64) ([][]byte, error) {
	if off > total || n > total-off {
		return nil, fmt.Errorf("bytes %d+%d are outside the %d the chain part holds", off, n, total)
	}
	var out [][]byte
	for _, d := range descs {
		if n == 0 {
			break
		}
		l := uint64(d.Len)
		if off >= l {
			off -= l
			continue
		}
		k := min(l-off, n)
		s, err := mem.Slice(d.Addr+off, k)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
		off, n = 0, n-k
	}
	return out, nil
}

// Reader is an io.Reader over a chain's device-readable buffers.
type Reader struct {
	mem   *memory.Memory
	descs []Descriptor
	off   uint64 // into descs[0]
	left  uint64
}

// Remaining is the number of readable bytes not yet read.
func (r *Reader) Remaining() uint64 { return r.left }

// Read copies the next readable bytes into p; it returns io.EOF once the
// readable part is exhausted.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for len(p) > 0 && len(r.descs) > 0 {
		d := r.descs[0]
		k := min(uint64(len(p)), uint64(d.Len)-r.off)
		if err := r.mem.ReadAt(p[:k], d.Addr+r.off); err != nil {
			return n, err
		}
		n += int(k)
		p = p[k:]
		r.left -= k
		if r.off += k; r.off == uint64(d.Len) {
			r.descs, r.off = r.descs[1:], 0
		}
	}
	return n, nil
}

// Writer is an io.Writer over a chain's device-writable buffers.
type Writer struct {
	mem     *memory.Memory
	descs   []Descriptor
	off     uint64 // into descs[0]
	left    uint64
	written uint64
}

// Written is the number of bytes written so far.
func (w *Writer) Written() uint64 { return w.written }

// Remaining is the room left in the writable part.
func (w *Writer) Remaining() uint64 { return w.left }

// Write copies p into the next writable bytes. If p does not fit, it writes
// what fits and returns io.ErrShortWrite.
func (w *Writer) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 && len(w.descs) > 0 {
		d := w.descs[0]
		k := min(uint64(len(p)), uint64(d.Len)-w.off)
		if err := w.mem.WriteAt(p[:k], d.Addr+w.off); err != nil {
			return n, err
		}
		n += int(k)
		p = p[k:]
		w.left -= k
		w.written += k
		if w.off += k; w.off == uint64(d.Len) {
			w.descs, w.off = w.descs[1:], 0
		}
	}
	if len(p) > 0 {
		return n, io.ErrShortWrite
	}
	return n, nil
}
