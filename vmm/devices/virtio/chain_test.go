package virtio_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/kindlingvm/kindling/vmm/memory"
)

func TestReaderWriterAcrossDescriptors(t *testing.T) {
	mem := newMem(t, memSize)
	dq, q := newQueue(t, mem, queueOpts{})
	in := pattern(10, 1)
	w1, w2 := dq.Writable(3), dq.Writable(4)
	dq.Add(dq.Readable(in[:4]), dq.Readable(in[4:5]), dq.Readable(in[5:]), w1, w2)
	c := mustPop(t, mem, q)

	r := c.Reader(mem)
	var got []byte
	buf := make([]byte, 3)
	for {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, in) || r.Remaining() != 0 {
		t.Fatalf("read %x remaining %d, want %x", got, r.Remaining(), in)
	}

	w := c.Writer(mem)
	if n, err := w.Write([]byte{1, 2}); n != 2 || err != nil {
		t.Fatal(n, err)
	}
	if n, err := w.Write([]byte{3, 4, 5, 6, 7, 8}); n != 5 || !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("overlong write: %d, %v; want 5, ErrShortWrite", n, err)
	}
	if w.Written() != 7 || w.Remaining() != 0 {
		t.Fatalf("written %d remaining %d", w.Written(), w.Remaining())
	}
	if got := append(dq.Bytes(w1.Addr, 3), dq.Bytes(w2.Addr, 4)...); !bytes.Equal(got, []byte{1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("guest holds %v", got)
	}

	// Slices: bytes 3..7 of the readable part span three descriptors.
	s, err := c.ReadableSlices(mem, 3, 5)
	if err != nil || len(s) != 3 || !bytes.Equal(bytes.Join(s, nil), in[3:8]) {
		t.Fatalf("ReadableSlices(3, 5) = %x, %v", s, err)
	}
	s, err = c.WritableSlices(mem, 6, 1)
	if err != nil || len(s) != 1 || &s[0][0] != &mustSlice(t, mem, w2.Addr+3)[0] {
		t.Fatalf("WritableSlices(6, 1) = %v, %v; want the last byte of the second buffer", s, err)
	}
	for _, r := range [][2]uint64{{0, 11}, {10, 1}, {11, 0}, {^uint64(0), 2}} {
		if _, err := c.ReadableSlices(mem, r[0], r[1]); err == nil {
			t.Errorf("ReadableSlices(%d, %d) succeeded past the end", r[0], r[1])
		}
	}
	if s, err := c.ReadableSlices(mem, 10, 0); err != nil || len(s) != 0 {
		t.Errorf("empty range at the end: %v, %v", s, err)
	}
}

func mustSlice(t *testing.T, mem *memory.Memory, addr uint64) []byte {
	s, err := mem.Slice(addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
