package virtio_test

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	vt "github.com/kindlingvm/kindling/vmm/devices/virtio/virtiotest"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Guest layout for FuzzQueuePop: a queue of fuzzSize descriptors whose
// descriptor table, available ring and an indirect table area come from the
// fuzzer's bytes; buffers can point anywhere.
const (
	fuzzSize      = 8
	fuzzDesc      = 0x1000
	fuzzAvail     = 0x1080
	fuzzUsed      = 0x1100
	fuzzIndirect  = 0x2000
	fuzzIndirectN = 256 // bytes of indirect table area
	fuzzBuf       = 0x3000
)

func encodeDescs(ds ...vt.Desc) []byte {
	b := make([]byte, 16*len(ds))
	for i, d := range ds {
		binary.LittleEndian.PutUint64(b[16*i:], d.Addr)
		binary.LittleEndian.PutUint32(b[16*i+8:], d.Len)
		binary.LittleEndian.PutUint16(b[16*i+12:], d.Flags)
		binary.LittleEndian.PutUint16(b[16*i+14:], d.Next)
	}
	return b
}

// encodeAvail is an available ring's flags and entries; the fuzz target
// derives idx itself.
func encodeAvail(flags uint16, heads ...uint16) []byte {
	b := make([]byte, 4+2*len(heads))
	binary.LittleEndian.PutUint16(b, flags)
	for i, h := range heads {
		binary.LittleEndian.PutUint16(b[4+2*i:], h)
	}
	return b
}

// FuzzQueuePop writes arbitrary descriptor tables, available rings and
// indirect tables into guest memory, then pops, reads, writes and pushes
// every chain. Nothing may panic, and every descriptor returned must lie in
// guest memory and obey the chain invariants.
//
// flags: bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bits 4-7 how many entries
// past start the driver's avail idx is (above fuzzSize is hostile).
func FuzzQueuePop(f *testing.F) {
	const (
		N = vt.DescNext
		W = vt.DescWrite
		I = vt.DescIndirect
	)
	f.Add(byte(0x10), uint16(0),
		encodeDescs(vt.Desc{Addr: fuzzBuf, Len: 16, Flags: N, Next: 1}, vt.Desc{Addr: fuzzBuf + 0x100, Len: 16, Flags: W}),
		encodeAvail(0, 0), []byte(nil))
	f.Add(byte(0x13), uint16(65535),
		encodeDescs(vt.Desc{Addr: fuzzIndirect, Len: 48, Flags: I}, vt.Desc{Addr: fuzzBuf, Len: 1}),
		encodeAvail(0, 0, 1),
		encodeDescs(vt.Desc{Addr: fuzzBuf, Len: 8, Flags: N, Next: 2}, vt.Desc{Addr: fuzzBuf + 0x200, Len: 8, Flags: W},
			vt.Desc{Addr: fuzzBuf + 0x100, Len: 8, Flags: N, Next: 1}))
	f.Add(byte(0x30), uint16(100),
		encodeDescs(vt.Desc{Addr: fuzzBuf, Len: 8, Flags: N, Next: 1}, vt.Desc{Addr: fuzzBuf, Len: 8, Flags: N, Next: 0},
			vt.Desc{Addr: memory.MinSize - 4, Len: 8}),
		encodeAvail(0, 0, 2, 9), []byte(nil))
	f.Add(byte(0x22), uint16(65534),
		encodeDescs(vt.Desc{Addr: fuzzIndirect, Len: 32, Flags: I}, vt.Desc{Addr: fuzzIndirect, Len: 16, Flags: I | N, Next: 0}),
		encodeAvail(1, 0, 1),
		encodeDescs(vt.Desc{Addr: fuzzIndirect, Len: 16, Flags: I}, vt.Desc{Addr: ^uint64(0), Len: 2}))
	f.Add(byte(0x91), uint16(7), []byte{}, []byte{}, []byte{})

	f.Fuzz(func(t *testing.T, flags byte, start uint16, desc, avail, indirect []byte) {
		mem, err := memory.New(memory.MinSize, memory.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		put := func(addr uint64, b []byte, max int) {
			if len(b) > max {
				b = b[:max]
			}
			if err := mem.WriteAt(b, addr); err != nil {
				t.Fatal(err)
			}
		}
		put(fuzzDesc, desc, 16*fuzzSize)
		put(fuzzAvail, avail, 4+2*fuzzSize+2)
		put(fuzzIndirect, indirect, fuzzIndirectN)
		if err := mem.WriteU16(fuzzAvail+2, start+uint16(flags>>4)); err != nil {
			t.Fatal(err)
		}

		q := virtio.NewQueue(fuzzSize)
		err = q.SetState(virtio.QueueState{
			MaxSize: fuzzSize, Size: fuzzSize, Ready: true,
			DescTable: fuzzDesc, AvailRing: fuzzAvail, UsedRing: fuzzUsed,
			EventIdx: flags&1 != 0, IndirectDesc: flags&2 != 0,
			NextAvail: start, NextUsed: start, SignalledUsed: start,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Check(mem); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		for i := 0; i < 2*fuzzSize; i++ {
			c, err := q.Pop(mem)
			if err != nil {
				continue
			}
			if c == nil {
				break
			}
			checkChain(t, mem, c)
			r := c.Reader(mem)
			n, err := io.ReadFull(r, buf[:min(uint64(len(buf)), c.ReadableLen())])
			if err != nil || r.Remaining() != c.ReadableLen()-uint64(n) {
				t.Fatalf("read %d of %d readable bytes: %v", n, c.ReadableLen(), err)
			}
			w := c.Writer(mem)
			want := min(uint64(len(buf)), c.WritableLen())
			if n, err := w.Write(buf[:want]); uint64(n) != want || err != nil {
				t.Fatalf("write %d of %d writable bytes: %d, %v", want, c.WritableLen(), n, err)
			}
			if err := q.Push(mem, c.Head, uint32(w.Written())); err != nil {
				t.Fatalf("Push(%d): %v", c.Head, err)
			}
		}
		if _, err := q.NeedsInterrupt(mem); err != nil {
			t.Fatalf("NeedsInterrupt: %v", err)
		}
	})
}

func checkChain(t *testing.T, mem *memory.Memory, c *virtio.Chain) {
	t.Helper()
	if c.Head >= fuzzSize {
		t.Fatalf("head %d outside the queue", c.Head)
	}
	if len(c.Descs) == 0 || len(c.Descs) > 2*fuzzSize {
		t.Fatalf("%d descriptors", len(c.Descs))
	}
	var rl, wl uint64
	seenWrite := false
	for i, d := range c.Descs {
		if d.Len == 0 {
			t.Fatalf("descriptor %d has length 0", i)
		}
		if err := mem.Check(d.Addr, uint64(d.Len)); err != nil {
			t.Fatalf("descriptor %d %+v outside guest memory: %v", i, d, err)
		}
		if !d.Write && seenWrite {
			t.Fatalf("descriptor %d readable after writable", i)
		}
		seenWrite = seenWrite || d.Write
		if d.Write {
			wl += uint64(d.Len)
		} else {
			rl += uint64(d.Len)
		}
	}
	if rl != c.ReadableLen() || wl != c.WritableLen() || rl+wl > virtio.MaxChainBytes {
		t.Fatalf("lengths %d/%d, chain says %d/%d", rl, wl, c.ReadableLen(), c.WritableLen())
	}
	if len(c.Readable())+len(c.Writable()) != len(c.Descs) {
		t.Fatal("readable and writable parts do not add up")
	}
	for _, part := range []struct {
		slices func(*memory.Memory, uint64, uint64) ([][]byte, error)
		n      uint64
	}{{c.ReadableSlices, rl}, {c.WritableSlices, wl}} {
		s, err := part.slices(mem, 0, part.n)
		if err != nil {
			t.Fatal(err)
		}
		total := uint64(0)
		for _, b := range s {
			total += uint64(len(b))
		}
		if total != part.n {
			t.Fatalf("slices cover %d of %d bytes", total, part.n)
		}
	}
}

type fuzzOp struct {
	write bool
	size  int
	off   uint16
	val   uint32
}

func encodeOps(ops ...fuzzOp) []byte {
	var b []byte
	for _, o := range ops {
		code := byte(0)
		if o.write {
			code = 1
		}
		switch o.size {
		case 1:
		case 2:
			code |= 2
		case 4:
			code |= 4
		case 8:
			code |= 6
		}
		b = append(b, code, byte(o.off), byte(o.off>>8))
		b = binary.LittleEndian.AppendUint32(b, o.val)
	}
	return b
}

// FuzzTransport drives the register window with arbitrary accesses: each 7
// input bytes are one access (bit 0 write, bits 1-2 size 1/2/4/8, offset
// u16, value u32) against an echo device whose queue 0 the guest has laid
// out at 0x10000 with two chains published. Nothing may panic, and the
// interrupt line must match InterruptStatus.
func FuzzTransport(f *testing.F) {
	w := func(off uint16, v uint32) fuzzOp { return fuzzOp{write: true, size: 4, off: off, val: v} }
	r := func(off uint16) fuzzOp { return fuzzOp{size: 4, off: off} }
	// The driver queue layout NewQueue makes at 0x10000 with 16 entries.
	const desc, avail, used = 0x10000, 0x10100, 0x10128
	linuxInit := []fuzzOp{
		r(vt.RegMagicValue), r(vt.RegVersion), r(vt.RegDeviceID),
		w(vt.RegStatus, 0), w(vt.RegStatus, 1), w(vt.RegStatus, 3),
		w(vt.RegDeviceFeaturesSel, 1), r(vt.RegDeviceFeatures), w(vt.RegDeviceFeaturesSel, 0), r(vt.RegDeviceFeatures),
		w(vt.RegDriverFeaturesSel, 1), w(vt.RegDriverFeatures, 1), w(vt.RegDriverFeaturesSel, 0), w(vt.RegDriverFeatures, 3<<28),
		w(vt.RegStatus, 0xb), r(vt.RegStatus),
		w(vt.RegQueueSel, 0), r(vt.RegQueueReady), r(vt.RegQueueNumMax), w(vt.RegQueueNum, 16),
		w(vt.RegQueueDescLow, desc), w(vt.RegQueueDescHigh, 0),
		w(vt.RegQueueDriverLow, avail), w(vt.RegQueueDriverHigh, 0),
		w(vt.RegQueueDeviceLow, used), w(vt.RegQueueDeviceHigh, 0),
		w(vt.RegQueueReady, 1), w(vt.RegStatus, 0xf),
	}
	f.Add(encodeOps(linuxInit...))
	f.Add(encodeOps(append(linuxInit, w(vt.RegQueueNotify, 0), r(vt.RegInterruptStatus), w(vt.RegInterruptACK, 1),
		w(vt.RegQueueNotify, 0), r(vt.RegConfigGeneration), w(vt.RegStatus, 0))...))
	f.Add(encodeOps(append(linuxInit[:len(linuxInit)-1], w(vt.RegQueueNum, 3), w(vt.RegQueueReady, 1), w(vt.RegStatus, 0xf),
		w(vt.RegQueueNotify, 0), fuzzOp{size: 1, off: 0x101}, fuzzOp{write: true, size: 2, off: 0x104, val: 7},
		fuzzOp{size: 8, off: 0x70}, fuzzOp{write: true, size: 1, off: 0x70})...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})

	f.Fuzz(func(t *testing.T, ops []byte) {
		mem, err := memory.New(memory.MinSize, memory.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		dq := vt.NewQueue(t, mem, desc, 16, 64<<10)
		if dq.Desc != desc || dq.Avail != avail || dq.Used != used {
			t.Fatalf("driver queue layout moved: %#x %#x %#x", dq.Desc, dq.Avail, dq.Used)
		}
		dq.Add(dq.Readable([]byte("hello")), dq.Writable(5))
		dq.AddIndirect(dq.Readable([]byte("indirect")), dq.Writable(3), dq.Writable(5))

		dev, line := newEcho(), &vt.Line{}
		tr, err := virtio.NewTransport(mem, dev, line)
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 8)
		for ; len(ops) >= 7; ops = ops[7:] {
			size := 1 << (ops[0] >> 1 & 3)
			off := uint64(binary.LittleEndian.Uint16(ops[1:])) % (virtio.WindowSize + 0x100)
			binary.LittleEndian.PutUint32(data, binary.LittleEndian.Uint32(ops[3:]))
			if ops[0]&1 != 0 {
				tr.Write(off, data[:size])
			} else {
				tr.Read(off, data[:size])
			}
		}
		if isr := vt.Read32(tr, vt.RegInterruptStatus); line.High() != (isr != 0) {
			t.Fatalf("interrupt line high %v with InterruptStatus %#x", line.High(), isr)
		}
		st := tr.Save()
		if st.Status&vt.StatusNeedsReset == 0 && st.Status&vt.StatusDriverOK != 0 && tr.Failure() != nil {
			t.Fatalf("failure %v without DEVICE_NEEDS_RESET", tr.Failure())
		}
	})
}
