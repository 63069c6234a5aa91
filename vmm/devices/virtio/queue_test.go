package virtio_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/virtiotest"
	"github.com/kindlingvm/kindling/vmm/memory"
)

const (
	memSize   = 4 << 20
	queueBase = 0x10000
	heapSize  = 1 << 20
)

func newMem(t testing.TB, size uint64) *memory.Memory {
	t.Helper()
	mem, err := memory.New(size, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

type queueOpts struct {
	size     uint16
	eventIdx bool
	indirect bool
}

// newQueue lays out a driver queue and the matching device queue, checked
// and ready, as the transport would leave it at DRIVER_OK.
func newQueue(t testing.TB, mem *memory.Memory, o queueOpts) (*virtiotest.Queue, *virtio.Queue) {
	t.Helper()
	if o.size == 0 {
		o.size = 16
	}
	dq := virtiotest.NewQueue(t, mem, queueBase, o.size, heapSize)
	q := virtio.NewQueue(256)
	q.Size, q.DescTable, q.AvailRing, q.UsedRing = o.size, dq.Desc, dq.Avail, dq.Used
	q.EventIdx, q.IndirectDesc, q.Ready = o.eventIdx, o.indirect, true
	if err := q.Check(mem); err != nil {
		t.Fatal(err)
	}
	return dq, q
}

func mustPop(t testing.TB, mem *memory.Memory, q *virtio.Queue) *virtio.Chain {
	t.Helper()
	c, err := q.Pop(mem)
	if err != nil {
		t.Fatalf("Pop: %v", err)
	}
	if c == nil {
		t.Fatal("Pop: no chain available")
	}
	return c
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestPopEmpty(t *testing.T) {
	mem := newMem(t, memSize)
	dq, q := newQueue(t, mem, queueOpts{})
	if c, err := q.Pop(mem); c != nil || err != nil {
		t.Fatalf("Pop on an empty queue = %v, %v; want nil, nil", c, err)
	}
	dq.Add(dq.Readable([]byte("x")))
	mustPop(t, mem, q)
	if c, err := q.Pop(mem); c != nil || err != nil {
		t.Fatalf("Pop after draining = %v, %v; want nil, nil", c, err)
	}
	q.Ready = false
	if _, err := q.Pop(mem); !errors.Is(err, virtio.ErrNotReady) {
		t.Fatalf("Pop on a queue that is not ready: %v, want ErrNotReady", err)
	}
}

// TestChainShapes publishes chains of various shapes, directly and through
// an indirect table, and checks what the device sees and what the driver
// gets back.
func TestChainShapes(t *testing.T) {
	type buf struct {
		n     int
		write bool
	}
	cases := []struct {
		name string
		bufs []buf
	}{
		{"one readable", []buf{{64, false}}},
		{"one writable", []buf{{64, true}}},
		{"readable then writable", []buf{{16, false}, {100, false}, {512, true}, {1, true}}},
		{"many small", []buf{{1, false}, {2, false}, {3, false}, {4, true}, {5, true}, {6, true}}},
		{"zero-length descriptors dropped", []buf{{0, false}, {8, false}, {0, true}, {8, true}}},
	}
	for _, tc := range cases {
		for _, indirect := range []bool{false, true} {
			name := tc.name
			if indirect {
				name += "/indirect"
			}
			t.Run(name, func(t *testing.T) {
				mem := newMem(t, memSize)
				dq, q := newQueue(t, mem, queueOpts{indirect: true})
				var bufs []virtiotest.Buf
				var wantRead []byte
				var wantDescs []virtio.Descriptor
				var writeLen uint64
				for i, b := range tc.bufs {
					var vb virtiotest.Buf
					if b.write {
						vb = dq.Writable(uint32(b.n))
						writeLen += uint64(b.n)
					} else {
						data := pattern(b.n, byte(i))
						vb = dq.Readable(data)
						wantRead = append(wantRead, data...)
					}
					bufs = append(bufs, vb)
					if b.n > 0 {
						wantDescs = append(wantDescs, virtio.Descriptor{Addr: vb.Addr, Len: vb.Len, Write: b.write})
					}
				}
				var head uint16
				if indirect {
					head = dq.AddIndirect(bufs...)
				} else {
					head = dq.Add(bufs...)
				}
				c := mustPop(t, mem, q)
				if c.Head != head {
					t.Errorf("head %d, want %d", c.Head, head)
				}
				if len(c.Descs) != len(wantDescs) {
					t.Fatalf("descriptors %+v, want %+v", c.Descs, wantDescs)
				}
				for i := range wantDescs {
					if c.Descs[i] != wantDescs[i] {
						t.Errorf("descriptor %d = %+v, want %+v", i, c.Descs[i], wantDescs[i])
					}
				}
				if c.ReadableLen() != uint64(len(wantRead)) || c.WritableLen() != writeLen {
					t.Errorf("lengths %d/%d, want %d/%d", c.ReadableLen(), c.WritableLen(), len(wantRead), writeLen)
				}
				if len(c.Readable())+len(c.Writable()) != len(c.Descs) {
					t.Errorf("readable %d + writable %d != %d descriptors", len(c.Readable()), len(c.Writable()), len(c.Descs))
				}
				got, err := io.ReadAll(c.Reader(mem))
				if err != nil || !bytes.Equal(got, wantRead) {
					t.Errorf("read %x, %v; want %x", got, err, wantRead)
				}
				out := pattern(int(writeLen), 0x80)
				if n, err := c.Writer(mem).Write(out); n != len(out) || err != nil {
					t.Errorf("write %d bytes: %d, %v", len(out), n, err)
				}
				var written []byte
				for _, b := range bufs {
					if b.Write {
						written = append(written, dq.Bytes(b.Addr, b.Len)...)
					}
				}
				if !bytes.Equal(written, out) {
					t.Errorf("guest buffers hold %x, want %x", written, out)
				}
				if err := q.Push(mem, c.Head, uint32(writeLen)); err != nil {
					t.Fatal(err)
				}
				if u := dq.MustUsed(); u.ID != uint32(head) || u.Len != uint32(writeLen) {
					t.Errorf("used element %+v, want {%d %d}", u, head, writeLen)
				}
				if c, err := q.Pop(mem); c != nil || err != nil {
					t.Errorf("second Pop = %v, %v", c, err)
				}
			})
		}
	}
}

// TestDirectThenIndirect: the spec lets direct descriptors precede a final
// indirect one (2.7.5.3.2).
func TestDirectThenIndirect(t *testing.T) {
	mem := newMem(t, memSize)
	dq, q := newQueue(t, mem, queueOpts{indirect: true})
	hdr := dq.Readable([]byte("header"))
	body := dq.Readable([]byte("body"))
	resp := dq.Writable(8)
	table := dq.Alloc(32)
	dq.WriteTable(table,
		virtiotest.Desc{Addr: body.Addr, Len: body.Len, Flags: virtiotest.DescNext, Next: 1},
		virtiotest.Desc{Addr: resp.Addr, Len: resp.Len, Flags: virtiotest.DescWrite})
	dq.SetDesc(3, virtiotest.Desc{Addr: hdr.Addr, Len: hdr.Len, Flags: virtiotest.DescNext, Next: 7})
	// The WRITE flag on the descriptor naming the table must be ignored.
	dq.SetDesc(7, virtiotest.Desc{Addr: table, Len: 32, Flags: virtiotest.DescIndirect | virtiotest.DescWrite})
	dq.Publish(3)
	c := mustPop(t, mem, q)
	got, _ := io.ReadAll(c.Reader(mem))
	if c.Head != 3 || string(got) != "headerbody" || c.WritableLen() != 8 || len(c.Descs) != 3 {
		t.Fatalf("chain head %d descs %+v read %q", c.Head, c.Descs, got)
	}
}

// TestWrapAround runs the 16-bit ring indices through 65535 -> 0, one chain
// at a time and in full batches.
func TestWrapAround(t *testing.T) {
	for _, start := range []uint16{65530, 65535, 65528} {
		mem := newMem(t, memSize)
		dq, q := newQueue(t, mem, queueOpts{size: 8, eventIdx: true})
		st := q.State()
		st.NextAvail, st.NextUsed, st.SignalledUsed = start, start, start
		if err := q.SetState(st); err != nil {
			t.Fatal(err)
		}
		dq.StartAt(start)
		// One at a time.
		for i := 0; i < 12; i++ {
			head := dq.Add(dq.Readable([]byte{byte(i)}), dq.Writable(1))
			c := mustPop(t, mem, q)
			b, _ := io.ReadAll(c.Reader(mem))
			if c.Head != head || len(b) != 1 || b[0] != byte(i) {
				t.Fatalf("start %d chain %d: head %d data %v", start, i, c.Head, b)
			}
			if err := q.Push(mem, c.Head, 1); err != nil {
				t.Fatal(err)
			}
			if u := dq.MustUsed(); u.ID != uint32(head) {
				t.Fatalf("start %d chain %d: used %+v", start, i, u)
			}
		}
		// A full ring of chains published before the device looks.
		var heads []uint16
		for i := 0; i < 8; i++ {
			heads = append(heads, dq.Add(dq.Readable([]byte{byte(i)})))
		}
		for i := 0; i < 8; i++ {
			c := mustPop(t, mem, q)
			if c.Head != heads[i] {
				t.Fatalf("start %d batch %d: head %d, want %d", start, i, c.Head, heads[i])
			}
			if err := q.Push(mem, c.Head, 0); err != nil {
				t.Fatal(err)
			}
		}
		if c, err := q.Pop(mem); c != nil || err != nil {
			t.Fatalf("start %d: Pop after the batch = %v, %v", start, c, err)
		}
		for i := 0; i < 8; i++ {
			if u := dq.MustUsed(); u.ID != uint32(heads[i]) {
				t.Fatalf("start %d: used %d = %+v", start, i, u)
			}
		}
		want := start + 20
		if q.NextAvail() != want || q.NextUsed() != want || dq.UsedIdx() != want {
			t.Fatalf("start %d: next avail %d, next used %d, used idx %d; want %d",
				start, q.NextAvail(), q.NextUsed(), dq.UsedIdx(), want)
		}
	}
}

func TestAvailEventWrittenWhenEmpty(t *testing.T) {
	mem := newMem(t, memSize)
	dq, q := newQueue(t, mem, queueOpts{eventIdx: true})
	dq.StartAt(65534)
	st := q.State()
	st.NextAvail, st.NextUsed, st.SignalledUsed = 65534, 65534, 65534
	if err := q.SetState(st); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		dq.Add(dq.Readable([]byte{1}))
	}
	for i := 0; i < 3; i++ {
		mustPop(t, mem, q)
		if ev := dq.AvailEvent(); ev != 0 {
			t.Fatalf("avail_event %d written while chains remained", ev)
		}
	}
	if c, err := q.Pop(mem); c != nil || err != nil {
		t.Fatal(c, err)
	}
	if ev := dq.AvailEvent(); ev != 1 {
		t.Fatalf("avail_event = %d after draining to index 1, want 1", ev)
	}
	// Without EVENT_IDX the device never writes it.
	mem2 := newMem(t, memSize)
	dq2, q2 := newQueue(t, mem2, queueOpts{})
	dq2.Add(dq2.Readable([]byte{1}))
	mustPop(t, mem2, q2)
	if c, err := q2.Pop(mem2); c != nil || err != nil || dq2.AvailEvent() != 0 {
		t.Fatalf("without EVENT_IDX: %v, %v, avail_event %d", c, err, dq2.AvailEvent())
	}
}

func TestNeedsInterruptEventIdx(t *testing.T) {
	cases := []struct {
		name      string
		start     uint16 // used idx before the batch (and last signalled)
		pushes    int
		usedEvent uint16
		want      bool
	}{
		{"first entry, event 0", 0, 1, 0, true},
		{"event not reached", 0, 1, 1, false},
		{"event inside batch", 0, 3, 1, true},
		{"event at last entry of batch", 0, 3, 2, true},
		{"event just past batch", 0, 3, 3, false},
		{"event long behind", 10, 2, 3, false},
		{"nothing pushed", 5, 0, 4, false},
		{"wrap, event before 0", 65534, 4, 65535, true},
		{"wrap, event after 0", 65534, 4, 1, true},
		{"wrap, event at new idx", 65534, 4, 2, false},
		{"wrap, event behind", 65534, 4, 65533, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := newMem(t, memSize)
			dq, q := newQueue(t, mem, queueOpts{eventIdx: true})
			st := q.State()
			st.NextAvail, st.NextUsed, st.SignalledUsed = tc.start, tc.start, tc.start
			if err := q.SetState(st); err != nil {
				t.Fatal(err)
			}
			dq.StartAt(tc.start)
			dq.SetUsedEvent(tc.usedEvent)
			// NO_INTERRUPT is ignored with EVENT_IDX (2.7.7.2).
			dq.SetAvailFlags(virtiotest.AvailNoInterrupt)
			for i := 0; i < tc.pushes; i++ {
				dq.Add(dq.Readable([]byte{1}))
				c := mustPop(t, mem, q)
				if err := q.Push(mem, c.Head, 0); err != nil {
					t.Fatal(err)
				}
			}
			got, err := q.NeedsInterrupt(mem)
			if err != nil || got != tc.want {
				t.Fatalf("NeedsInterrupt = %v, %v; want %v", got, err, tc.want)
			}
			if got, _ := q.NeedsInterrupt(mem); got {
				t.Fatal("NeedsInterrupt true again with nothing pushed since")
			}
		})
	}
}

func TestNeedsInterruptNoInterruptFlag(t *testing.T) {
	mem := newMem(t, memSize)
	dq, q := newQueue(t, mem, queueOpts{})
	push := func() {
		dq.Add(dq.Readable([]byte{1}))
		c := mustPop(t, mem, q)
		if err := q.Push(mem, c.Head, 0); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := q.NeedsInterrupt(mem); got {
		t.Fatal("interrupt wanted with nothing pushed")
	}
	push()
	if got, err := q.NeedsInterrupt(mem); !got || err != nil {
		t.Fatalf("flag clear: %v, %v; want true", got, err)
	}
	dq.SetAvailFlags(virtiotest.AvailNoInterrupt)
	push()
	if got, err := q.NeedsInterrupt(mem); got || err != nil {
		t.Fatalf("NO_INTERRUPT set: %v, %v; want false", got, err)
	}
	dq.SetAvailFlags(0)
	push()
	push()
	if got, _ := q.NeedsInterrupt(mem); !got {
		t.Fatal("flag cleared again: want an interrupt")
	}
}

// TestHostileChains feeds chains that break the rules: each must give a
// descriptive error, consume the entry, and leave the queue usable.
func TestHostileChains(t *testing.T) {
	const size = 16
	// D is virtiotest.Desc under a local name, so the table can use short
	// positional literals.
	type D struct {
		Addr  uint64
		Len   uint32
		Flags uint16
		Next  uint16
	}
	const (
		N = virtiotest.DescNext
		W = virtiotest.DescWrite
		I = virtiotest.DescIndirect
	)
	ok := uint64(0x300000) // an in-range buffer well clear of the rings
	cases := []struct {
		name     string
		indirect bool
		descs    []D                        // descriptor table from index 0; head 0
		table    []D                        // indirect table at tableAt, if any
		setup    func(dq *virtiotest.Queue) // instead of publishing head 0
		want     string
	}{
		{name: "next out of range", descs: []D{{ok, 8, N, size}}, want: "outside the table"},
		{name: "self loop", descs: []D{{ok, 8, N, 0}}, want: "loops"},
		{name: "two-descriptor loop", descs: []D{{ok, 8, N, 1}, {ok, 8, N, 0}}, want: "loops"},
		{name: "address past memory", descs: []D{{memSize, 8, 0, 0}}, want: "out of range"},
		{name: "buffer straddles end of memory", descs: []D{{memSize - 4, 8, 0, 0}}, want: "out of range"},
		{name: "address+length overflows", descs: []D{{^uint64(0) - 3, 8, 0, 0}}, want: "overflows"},
		{name: "huge address", descs: []D{{1 << 62, 1, 0, 0}}, want: "out of range"},
		{name: "readable after writable", descs: []D{{ok, 8, W | N, 1}, {ok, 8, 0, 0}}, want: "readable after"},
		{name: "readable after empty writable", descs: []D{{ok, 0, W | N, 1}, {ok, 8, 0, 0}}, want: "readable after"},
		{name: "zero-length chain", descs: []D{{ok, 0, 0, 0}}, want: "no bytes"},
		{name: "zero-length chain with bad address", descs: []D{{1 << 62, 0, N, 1}, {0, 0, W, 0}}, want: "no bytes"},
		{name: "indirect not negotiated", descs: []D{{ok, 16, I, 0}}, want: "not negotiated"},
		{name: "indirect with NEXT", indirect: true, descs: []D{{ok, 16, I | N, 1}, {ok, 8, 0, 0}}, want: "both INDIRECT and NEXT"},
		{name: "indirect table length not a multiple of 16", indirect: true, descs: []D{{ok, 20, I, 0}}, want: "multiple of 16"},
		{name: "indirect table length zero", indirect: true, descs: []D{{ok, 0, I, 0}}, want: "multiple of 16"},
		{name: "indirect table longer than queue", indirect: true, descs: []D{{ok, 16 * (size + 1), I, 0}}, want: "exceeds the queue size"},
		{name: "indirect table outside memory", indirect: true, descs: []D{{memSize - 16, 32, I, 0}}, want: "out of range"},
		{name: "indirect inside indirect", indirect: true, descs: []D{{ok, 32, I, 0}}, table: []D{{ok + 0x1000, 8, N, 1}, {ok, 16, I, 0}}, want: "another indirect table"},
		{name: "indirect loop", indirect: true, descs: []D{{ok, 32, I, 0}}, table: []D{{ok + 0x1000, 8, N, 1}, {ok + 0x1000, 8, N, 0}}, want: "loops"},
		{name: "indirect next out of range", indirect: true, descs: []D{{ok, 32, I, 0}}, table: []D{{ok + 0x1000, 8, N, 2}, {ok + 0x1000, 8, 0, 0}}, want: "outside the table of 2"},
		{name: "indirect bad buffer", indirect: true, descs: []D{{ok, 16, I, 0}}, table: []D{{1 << 40, 8, 0, 0}}, want: "out of range"},
		{name: "head out of range", setup: func(dq *virtiotest.Queue) { dq.Publish(size) }, want: "outside the table"},
		{name: "head far out of range", setup: func(dq *virtiotest.Queue) { dq.Publish(0xffff) }, want: "outside the table"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := newMem(t, memSize)
			dq, q := newQueue(t, mem, queueOpts{size: size, indirect: tc.indirect})
			for i, d := range tc.descs {
				dq.SetDesc(uint16(i), virtiotest.Desc(d))
			}
			for i, d := range tc.table {
				dq.WriteTable(ok+16*uint64(i), virtiotest.Desc(d))
			}
			if tc.setup != nil {
				tc.setup(dq)
			} else {
				dq.Publish(0)
			}
			c, err := q.Pop(mem)
			if err == nil || c != nil {
				t.Fatalf("Pop = %+v, %v; want an error", c, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			// The bad entry is consumed; a good chain after it works.
			head := dq.Add(dq.Readable([]byte("ok")))
			c = mustPop(t, mem, q)
			if c.Head != head {
				t.Fatalf("next chain head %d, want %d", c.Head, head)
			}
		})
	}
}

func TestAvailIdxTooFarAhead(t *testing.T) {
	mem := newMem(t, memSize)
	dq, q := newQueue(t, mem, queueOpts{size: 8})
	dq.SetAvailIdx(9)
	for i := 0; i < 2; i++ {
		if c, err := q.Pop(mem); c != nil || err == nil || !strings.Contains(err.Error(), "more than the queue size") {
			t.Fatalf("Pop %d = %v, %v; want a queue size error", i, c, err)
		}
	}
	// Exactly a full ring is fine.
	dq.SetAvailIdx(8)
	if _, err := q.Pop(mem); err != nil && strings.Contains(err.Error(), "queue size") {
		t.Fatalf("a full ring: %v", err)
	}
}

// TestChainByteLimit: a chain of in-range descriptors adding up to more
// than MaxChainBytes is refused.
func TestChainByteLimit(t *testing.T) {
	const big = 256 << 20
	mem := newMem(t, big)
	dq, q := newQueue(t, mem, queueOpts{size: 16})
	n := virtio.MaxChainBytes/(big/2) + 1
	for i := 0; i < n; i++ {
		d := virtiotest.Desc{Addr: big / 2, Len: big / 2, Flags: virtiotest.DescNext, Next: uint16(i + 1)}
		if i == n-1 {
			d.Flags = 0
		}
		dq.SetDesc(uint16(i), d)
	}
	dq.Publish(0)
	if _, err := q.Pop(mem); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("Pop of a %d-byte chain: %v", uint64(n)*big/2, err)
	}
}

func TestQueueCheck(t *testing.T) {
	mem := newMem(t, memSize)
	good := func() *virtio.Queue {
		q := virtio.NewQueue(256)
		q.Size, q.DescTable, q.AvailRing, q.UsedRing = 256, 0x1000, 0x2000, 0x3000
		return q
	}
	cases := []struct {
		name   string
		modify func(q *virtio.Queue)
		want   string
	}{
		{"good", func(q *virtio.Queue) {}, ""},
		{"size 1", func(q *virtio.Queue) { q.Size = 1 }, ""},
		{"size zero", func(q *virtio.Queue) { q.Size = 0 }, "power of two"},
		{"size not a power of two", func(q *virtio.Queue) { q.Size = 100 }, "power of two"},
		{"size above maximum", func(q *virtio.Queue) { q.Size = 512 }, "power of two"},
		{"descriptor table misaligned", func(q *virtio.Queue) { q.DescTable = 0x1008 }, "descriptor table"},
		{"avail ring misaligned", func(q *virtio.Queue) { q.AvailRing = 0x2001 }, "available ring"},
		{"used ring misaligned", func(q *virtio.Queue) { q.UsedRing = 0x3002 }, "used ring"},
		{"descriptor table past memory", func(q *virtio.Queue) { q.DescTable = memSize - 16*128 }, "descriptor table"},
		{"avail ring past memory", func(q *virtio.Queue) { q.AvailRing = memSize - 6 - 2*256 + 2 }, "available ring"},
		{"used ring past memory", func(q *virtio.Queue) { q.UsedRing = memSize - 6 - 8*256 + 4 }, "used ring"},
		{"used ring just fits", func(q *virtio.Queue) { q.UsedRing = memSize - 6 - 8*256 - 2 }, ""},
		{"ring in the MMIO hole", func(q *virtio.Queue) { q.UsedRing = memory.MMIOHoleStart }, "used ring"},
		{"address wraps", func(q *virtio.Queue) { q.DescTable = ^uint64(0) &^ 15 }, "descriptor table"},
	}
	for _, tc := range cases {
		q := good()
		tc.modify(q)
		err := q.Check(mem)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: Check = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestPushChecks(t *testing.T) {
	mem := newMem(t, memSize)
	_, q := newQueue(t, mem, queueOpts{size: 8})
	if err := q.Push(mem, 8, 0); err == nil {
		t.Fatal("Push of head 8 in a queue of 8 succeeded")
	}
	q.Ready = false
	if err := q.Push(mem, 0, 0); !errors.Is(err, virtio.ErrNotReady) {
		t.Fatalf("Push on a queue that is not ready: %v", err)
	}
}

func TestQueueStateRoundTrip(t *testing.T) {
	mem := newMem(t, memSize)
	dq, q := newQueue(t, mem, queueOpts{eventIdx: true, indirect: true})
	for i := 0; i < 3; i++ {
		dq.Add(dq.Readable([]byte{byte(i)}))
	}
	c := mustPop(t, mem, q)
	if err := q.Push(mem, c.Head, 0); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(q.State())
	if err != nil {
		t.Fatal(err)
	}
	var st virtio.QueueState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	q2 := virtio.NewQueue(256)
	if err := q2.SetState(st); err != nil {
		t.Fatal(err)
	}
	if q2.State() != q.State() {
		t.Fatalf("restored %+v, want %+v", q2.State(), q.State())
	}
	// The restored queue continues where the first stopped.
	c = mustPop(t, mem, q2)
	if b, _ := io.ReadAll(c.Reader(mem)); len(b) != 1 || b[0] != 1 {
		t.Fatalf("restored queue popped %v, want the second chain", b)
	}

	if err := virtio.NewQueue(128).SetState(st); err == nil {
		t.Error("SetState accepted a different maximum size")
	}
	bad := st
	bad.Size = 3
	if err := virtio.NewQueue(256).SetState(bad); err == nil {
		t.Error("SetState accepted a ready queue of size 3")
	}
}
