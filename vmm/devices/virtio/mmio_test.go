package virtio_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/kindlingvm/kindling/vmm/devices"
	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	vt "github.com/kindlingvm/kindling/vmm/devices/virtio/virtiotest"
	"github.com/kindlingvm/kindling/vmm/memory"
)

const echoFeature uint64 = 1 << 3 // a device-specific bit the echo device offers

// echoDevice copies each chain's readable bytes into its writable part. Its
// configuration space is 8 bytes, the last 4 writable.
type echoDevice struct {
	mu          sync.Mutex
	sizes       []uint16
	config      [8]byte
	activateErr error

	mem         *memory.Memory
	queues      []*virtio.Queue
	signal      virtio.SignalFunc
	features    uint64
	activations int
	resets      int
	requests    int
}

func newEcho(sizes ...uint16) *echoDevice {
	if len(sizes) == 0 {
		sizes = []uint16{16, 8}
	}
	d := &echoDevice{sizes: sizes}
	binary.LittleEndian.PutUint32(d.config[:], 0x12345678)
	return d
}

func (d *echoDevice) DeviceType() uint32      { return 0x42 }
func (d *echoDevice) Features() uint64        { return echoFeature }
func (d *echoDevice) QueueMaxSizes() []uint16 { return d.sizes }

func (d *echoDevice) ReadConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	virtio.CopyConfig(data, d.config[:], off)
}

func (d *echoDevice) WriteConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off >= 4 && off < 8 {
		copy(d.config[off:], data)
	}
}

func (d *echoDevice) Activate(mem *memory.Memory, queues []*virtio.Queue, features uint64, signal virtio.SignalFunc) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.activateErr != nil {
		return d.activateErr
	}
	if !queues[0].Ready {
		return errors.New("queue 0 not ready")
	}
	d.mem, d.queues, d.features, d.signal = mem, queues, features, signal
	d.activations++
	return nil
}

func (d *echoDevice) Notify(i int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.queues == nil || !d.queues[i].Ready {
		return nil
	}
	q := d.queues[i]
	for {
		c, err := q.Pop(d.mem)
		if err != nil {
			return err
		}
		if c == nil {
			break
		}
		w := c.Writer(d.mem)
		if _, err := io.CopyN(w, c.Reader(d.mem), int64(min(c.ReadableLen(), c.WritableLen()))); err != nil {
			return err
		}
		if err := q.Push(d.mem, c.Head, uint32(w.Written())); err != nil {
			return err
		}
		d.requests++
	}
	return d.signal(i)
}

func (d *echoDevice) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mem, d.queues, d.signal, d.features = nil, nil, nil, 0
	d.resets++
}

type rig struct {
	mem  *memory.Memory
	dev  *echoDevice
	line *vt.Line
	tr   *virtio.Transport
	qs   []*vt.Queue
}

func newRig(t testing.TB) *rig {
	t.Helper()
	r := &rig{mem: newMem(t, memSize), dev: newEcho(), line: &vt.Line{}}
	var err error
	if r.tr, err = virtio.NewTransport(r.mem, r.dev, r.line); err != nil {
		t.Fatal(err)
	}
	r.qs = []*vt.Queue{
		vt.NewQueue(t, r.mem, 0x10000, 16, 64<<10),
		vt.NewQueue(t, r.mem, 0x40000, 8, 64<<10),
	}
	return r
}

func (r *rig) reg(off uint64) uint32    { return vt.Read32(r.tr, off) }
func (r *rig) set(off uint64, v uint32) { vt.Write32(r.tr, off, v) }

func TestTransportInit(t *testing.T) {
	r := newRig(t)
	for _, c := range []struct {
		off  uint64
		want uint32
	}{
		{vt.RegMagicValue, 0x74726976},
		{vt.RegVersion, 2},
		{vt.RegDeviceID, 0x42},
		{vt.RegVendorID, virtio.VendorID},
		{vt.RegStatus, 0},
		{vt.RegInterruptStatus, 0},
	} {
		if got := r.reg(c.off); got != c.want {
			t.Errorf("register %#x = %#x, want %#x", c.off, got, c.want)
		}
	}
	offered := vt.DeviceFeatures(r.tr)
	if want := echoFeature | virtio.TransportFeatures; offered != want {
		t.Fatalf("offered features %#x, want %#x", offered, want)
	}
	for i, want := range []uint32{16, 8, 0} {
		r.set(vt.RegQueueSel, uint32(i))
		if got := r.reg(vt.RegQueueNumMax); got != want {
			t.Errorf("queue %d QueueNumMax %d, want %d", i, got, want)
		}
	}

	want := echoFeature | virtio.FeatureVersion1 | virtio.FeatureEventIdx
	got := vt.Init(t, r.tr, want, r.qs...)
	if got != want {
		t.Fatalf("negotiated %#x, want %#x", got, want)
	}
	if st := r.reg(vt.RegStatus); st != 0xf {
		t.Fatalf("status %#x, want 0xf", st)
	}
	if r.dev.activations != 1 || r.dev.features != want {
		t.Fatalf("device activated %d times with features %#x", r.dev.activations, r.dev.features)
	}
	for i, q := range r.dev.queues {
		dq := r.qs[i]
		if !q.Ready || q.Size != dq.Size || q.DescTable != dq.Desc || q.AvailRing != dq.Avail || q.UsedRing != dq.Used ||
			!q.EventIdx || q.IndirectDesc {
			t.Errorf("queue %d = %+v, want driver layout %+v with event idx only", i, q.State(), dq)
		}
	}
	r.set(vt.RegQueueSel, 0)
	if r.reg(vt.RegQueueReady) != 1 {
		t.Error("QueueReady does not read back 1")
	}
}

// TestQueueAddressHighHalves uses queue addresses above 4 GiB to check the
// High registers (in a guest with RAM above the MMIO hole).
func TestQueueAddressHighHalves(t *testing.T) {
	r := newRig(t)
	vt.Negotiate(t, r.tr, virtio.FeatureVersion1)
	r.set(vt.RegQueueSel, 0)
	r.set(vt.RegQueueNum, 16)
	for i, reg := range []uint64{vt.RegQueueDescLow, vt.RegQueueDriverLow, vt.RegQueueDeviceLow} {
		r.set(reg, 0x1000*uint32(i+1))
		r.set(reg+4, 0x1+uint32(i))
	}
	st := r.tr.Save().Queues[0]
	if st.DescTable != 0x1_0000_1000 || st.AvailRing != 0x2_0000_2000 || st.UsedRing != 0x3_0000_3000 || st.Size != 16 {
		t.Fatalf("queue state %+v", st)
	}
}

func TestTransportNotifyAndInterrupt(t *testing.T) {
	t.Run("event idx", func(t *testing.T) { testNotifyAndInterrupt(t, true) })
	t.Run("no event idx", func(t *testing.T) { testNotifyAndInterrupt(t, false) })
}

func testNotifyAndInterrupt(t *testing.T, eventIdx bool) {
	r := newRig(t)
	want := ^uint64(0)
	if !eventIdx {
		want &^= virtio.FeatureEventIdx
	}
	vt.Init(t, r.tr, want, r.qs...)
	q := r.qs[0]
	in := q.Readable([]byte("hello"))
	out := q.Writable(5)
	head := q.Add(in, out)
	vt.Kick(r.tr, 0)
	if u := q.MustUsed(); u.ID != uint32(head) || u.Len != 5 || string(q.Bytes(out.Addr, 5)) != "hello" {
		t.Fatalf("used %+v, buffer %q", u, q.Bytes(out.Addr, 5))
	}
	if !r.line.High() || r.line.Rises() != 1 || r.reg(vt.RegInterruptStatus) != virtio.InterruptUsedBuffer {
		t.Fatalf("after a used buffer: line high %v rises %d status %#x", r.line.High(), r.line.Rises(), r.reg(vt.RegInterruptStatus))
	}
	// A second completion before the ACK does not make another edge.
	q.Add(q.Readable([]byte("x")), q.Writable(1))
	vt.Kick(r.tr, 0)
	if r.line.Rises() != 1 {
		t.Fatalf("rises %d before the ACK, want 1", r.line.Rises())
	}
	if st := vt.AckInterrupt(r.tr); st != virtio.InterruptUsedBuffer {
		t.Fatalf("InterruptStatus %#x", st)
	}
	if r.line.High() || r.reg(vt.RegInterruptStatus) != 0 {
		t.Fatal("line still high after the ACK")
	}
	q.MustUsed()
	// After the ACK the next completion is a new edge.
	q.Add(q.Readable([]byte("y")), q.Writable(1))
	vt.Kick(r.tr, 0)
	if r.line.Rises() != 2 {
		t.Fatalf("rises %d, want 2", r.line.Rises())
	}
	vt.AckInterrupt(r.tr)
	// The driver suppressing interrupts (used_event or NO_INTERRUPT): no edge.
	if eventIdx {
		q.SetUsedEvent(q.UsedIdx() + 5)
	} else {
		q.SetAvailFlags(vt.AvailNoInterrupt)
	}
	q.Add(q.Readable([]byte("z")), q.Writable(1))
	vt.Kick(r.tr, 0)
	if r.line.Rises() != 2 || r.reg(vt.RegInterruptStatus) != 0 {
		t.Fatalf("interrupt raised although used_event was not reached")
	}
	// Notifies for queues that do not exist are ignored.
	vt.Kick(r.tr, 7)
	vt.Kick(r.tr, 1<<31)
	if r.dev.requests != 4 {
		t.Fatalf("device handled %d requests, want 4", r.dev.requests)
	}
}

func TestTransportNotifyBeforeDriverOK(t *testing.T) {
	r := newRig(t)
	vt.Negotiate(t, r.tr, ^uint64(0))
	vt.SetupQueue(t, r.tr, 0, r.qs[0])
	r.qs[0].Add(r.qs[0].Readable([]byte("x")), r.qs[0].Writable(1))
	vt.Kick(r.tr, 0)
	if _, ok := r.qs[0].NextUsed(); ok || r.dev.requests != 0 {
		t.Fatal("device processed a queue before DRIVER_OK")
	}
}

func TestFeatureRefusal(t *testing.T) {
	cases := []struct {
		name   string
		accept uint64
	}{
		{"feature not offered", virtio.FeatureVersion1 | 1<<40},
		{"device bit not offered", virtio.FeatureVersion1 | 1<<4},
		{"no VERSION_1", echoFeature},
		{"nothing", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.set(vt.RegStatus, vt.StatusAcknowledge)
			r.set(vt.RegStatus, vt.StatusAcknowledge|vt.StatusDriver)
			vt.WriteFeatures(r.tr, tc.accept)
			r.set(vt.RegStatus, vt.StatusAcknowledge|vt.StatusDriver|vt.StatusFeaturesOK)
			if st := r.reg(vt.RegStatus); st != vt.StatusAcknowledge|vt.StatusDriver {
				t.Fatalf("status %#x: FEATURES_OK must read back clear", st)
			}
			// DRIVER_OK cannot follow a refused negotiation.
			r.set(vt.RegStatus, 0xf)
			if st := r.reg(vt.RegStatus); st&vt.StatusDriverOK != 0 || r.dev.activations != 0 {
				t.Fatalf("status %#x, %d activations after refused features", st, r.dev.activations)
			}
		})
	}
}

func TestStatusOrdering(t *testing.T) {
	r := newRig(t)
	steps := []struct {
		write, want uint32
	}{
		{vt.StatusDriver, 0},                            // DRIVER before ACKNOWLEDGE
		{vt.StatusAcknowledge, 1},                       //
		{vt.StatusAcknowledge | vt.StatusFeaturesOK, 1}, // FEATURES_OK before DRIVER
		{0x3, 0x3},
		{0x3 | vt.StatusDriverOK, 0x3},          // DRIVER_OK before FEATURES_OK
		{0x1, 0x3},                              // clearing a bit
		{0x3 | 0x30 | vt.StatusNeedsReset, 0x3}, // reserved and device-owned bits
		{0x3 | vt.StatusFailed, 0x83},
	}
	for _, s := range steps {
		r.set(vt.RegStatus, s.write)
		if got := r.reg(vt.RegStatus); got != s.want {
			t.Fatalf("after writing %#x: status %#x, want %#x", s.write, got, s.want)
		}
	}
}

func TestDriverFeaturesFixedAfterFeaturesOK(t *testing.T) {
	r := newRig(t)
	vt.Negotiate(t, r.tr, virtio.FeatureVersion1)
	vt.WriteFeatures(r.tr, virtio.FeatureVersion1|echoFeature)
	if got := r.tr.Save().AckedFeatures; got != virtio.FeatureVersion1 {
		t.Fatalf("acked features %#x changed after FEATURES_OK", got)
	}
}

func TestQueueRegistersLocked(t *testing.T) {
	r := newRig(t)
	vt.Init(t, r.tr, ^uint64(0), r.qs[0])
	before := r.tr.Save().Queues
	// Queue 0 is ready and the device running; queue 1 was never set up
	// but DRIVER_OK locks it too.
	for _, sel := range []uint32{0, 1} {
		r.set(vt.RegQueueSel, sel)
		for _, reg := range []uint64{vt.RegQueueNum, vt.RegQueueDescLow, vt.RegQueueDescHigh,
			vt.RegQueueDriverLow, vt.RegQueueDriverHigh, vt.RegQueueDeviceLow, vt.RegQueueDeviceHigh, vt.RegQueueReady} {
			r.set(reg, 0x8)
		}
		r.set(vt.RegQueueReady, 0)
	}
	after := r.tr.Save().Queues
	for i := range before {
		if before[i] != after[i] {
			t.Errorf("queue %d changed after DRIVER_OK: %+v -> %+v", i, before[i], after[i])
		}
	}

	// Before DRIVER_OK, a ready queue's registers are locked too, and
	// writing 0 to QueueReady unlocks them.
	r2 := newRig(t)
	vt.Negotiate(t, r2.tr, ^uint64(0))
	vt.SetupQueue(t, r2.tr, 0, r2.qs[0])
	r2.set(vt.RegQueueDescLow, 0x5000)
	if got := r2.tr.Save().Queues[0].DescTable; got != r2.qs[0].Desc {
		t.Fatalf("descriptor table of a ready queue changed to %#x", got)
	}
	r2.set(vt.RegQueueReady, 0)
	r2.set(vt.RegQueueDescLow, 0x5000)
	if got := r2.tr.Save().Queues[0].DescTable; got != 0x5000 {
		t.Fatalf("descriptor table %#x after un-readying, want 0x5000", got)
	}
	r2.set(vt.RegQueueNum, 1<<16|16)
	if got := r2.tr.Save().Queues[0].Size; got != 0 {
		t.Fatalf("QueueNum beyond the maximum left size %d, want 0 (invalid)", got)
	}
}

func TestActivationFailure(t *testing.T) {
	cases := []struct {
		name  string
		setup func(r *rig)
	}{
		{"queue outside memory", func(r *rig) {
			r.qs[0].Used = memSize - 8
		}},
		{"queue size not a power of two", func(r *rig) {
			r.qs[0].Size = 12
		}},
		{"device refuses", func(r *rig) {
			r.dev.activateErr = errors.New("no backend")
		}},
		{"required queue not ready", func(r *rig) {
			r.qs = nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			tc.setup(r)
			vt.Init(t, r.tr, ^uint64(0), r.qs...)
			st := r.reg(vt.RegStatus)
			if st&vt.StatusNeedsReset == 0 || r.tr.Failure() == nil {
				t.Fatalf("status %#x, failure %v: want DEVICE_NEEDS_RESET", st, r.tr.Failure())
			}
			if r.reg(vt.RegInterruptStatus) != virtio.InterruptConfigChange || !r.line.High() {
				t.Fatal("no configuration change interrupt for DEVICE_NEEDS_RESET")
			}
			// Notifies are ignored; a reset and a correct init recover.
			vt.Kick(r.tr, 0)
			r.set(vt.RegStatus, 0)
			if r.reg(vt.RegStatus) != 0 || r.line.High() || r.tr.Failure() != nil {
				t.Fatal("reset did not clear the failure")
			}
		})
	}
}

// TestHostileChainNeedsReset: a chain breaking the ring rules puts the
// device in DEVICE_NEEDS_RESET and stops it.
func TestHostileChainNeedsReset(t *testing.T) {
	r := newRig(t)
	vt.Init(t, r.tr, ^uint64(0), r.qs...)
	q := r.qs[0]
	q.SetDesc(0, vt.Desc{Addr: 0x300000, Len: 8, Flags: vt.DescNext, Next: 0})
	q.Publish(0)
	vt.Kick(r.tr, 0)
	if st := r.reg(vt.RegStatus); st&vt.StatusNeedsReset == 0 {
		t.Fatalf("status %#x after a looping chain", st)
	}
	if err := r.tr.Failure(); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Fatalf("failure %v", err)
	}
	if r.dev.resets != 2 || r.dev.queues != nil { // one reset at init, one now
		t.Fatal("the device was not stopped")
	}
	if vt.AckInterrupt(r.tr) != virtio.InterruptConfigChange {
		t.Fatal("no configuration change interrupt")
	}
	q.Add(q.Readable([]byte("x")), q.Writable(1))
	vt.Kick(r.tr, 0)
	if r.dev.requests != 0 {
		t.Fatal("device processed requests while needing reset")
	}
	// The driver recovers with a reset and a new initialisation.
	r.qs = []*vt.Queue{vt.NewQueue(t, r.mem, 0x80000, 16, 64<<10)}
	vt.Init(t, r.tr, ^uint64(0), r.qs...)
	r.qs[0].Add(r.qs[0].Readable([]byte("x")), r.qs[0].Writable(1))
	vt.Kick(r.tr, 0)
	if _, ok := r.qs[0].NextUsed(); !ok {
		t.Fatal("device did not work after reset")
	}
}

func TestTransportReset(t *testing.T) {
	r := newRig(t)
	vt.Init(t, r.tr, ^uint64(0), r.qs...)
	r.qs[0].Add(r.qs[0].Readable([]byte("x")), r.qs[0].Writable(1))
	vt.Kick(r.tr, 0)
	if !r.line.High() {
		t.Fatal("no interrupt")
	}
	r.set(vt.RegStatus, 0)
	if r.dev.resets != 2 { // once at init, once now
		t.Fatalf("device reset %d times, want 2", r.dev.resets)
	}
	if r.line.High() || r.reg(vt.RegInterruptStatus) != 0 || r.reg(vt.RegStatus) != 0 {
		t.Fatal("reset left interrupt or status set")
	}
	st := r.tr.Save()
	for i, q := range st.Queues {
		if q.Ready || q.DescTable != 0 || q.NextAvail != 0 || q.NextUsed != 0 || q.Size != q.MaxSize {
			t.Errorf("queue %d after reset: %+v", i, q)
		}
	}
	if st.AckedFeatures != 0 || st.QueueSel != 0 {
		t.Errorf("transport after reset: %+v", st)
	}
}

func TestConfigSpace(t *testing.T) {
	r := newRig(t)
	b := make([]byte, 4)
	r.tr.Read(vt.RegConfig, b)
	if binary.LittleEndian.Uint32(b) != 0x12345678 {
		t.Fatalf("config word %x", b)
	}
	one := []byte{0xff}
	r.tr.Read(vt.RegConfig+1, one)
	if one[0] != 0x56 {
		t.Fatalf("config byte 1 = %#x", one[0])
	}
	r.tr.Write(vt.RegConfig+4, []byte{1, 2})
	eight := make([]byte, 8)
	r.tr.Read(vt.RegConfig, eight)
	if eight[4] != 1 || eight[5] != 2 {
		t.Fatalf("config after write %x", eight)
	}
	// Past the device's config space: zeros; past the window: ignored.
	r.tr.Read(vt.RegConfig+6, eight)
	if eight[0] != 0 || eight[2] != 0 || eight[7] != 0 {
		t.Fatalf("read past config space %x", eight)
	}
	eight[0] = 0xaa
	r.tr.Read(virtio.WindowSize-4, eight)
	if eight[0] != 0 {
		t.Fatal("read crossing the window end was not zeroed")
	}
	if g := r.reg(vt.RegConfigGeneration); g != 0 {
		t.Fatalf("config generation %d", g)
	}
	if err := r.tr.ConfigChanged(); err != nil {
		t.Fatal(err)
	}
	if g := r.reg(vt.RegConfigGeneration); g != 1 || r.reg(vt.RegInterruptStatus) != virtio.InterruptConfigChange || !r.line.High() {
		t.Fatal("ConfigChanged did not bump the generation and interrupt")
	}
}

// TestOddAccesses: every offset and size, read and written, must neither
// panic nor disturb state, and registers answer only aligned 32-bit reads.
func TestOddAccesses(t *testing.T) {
	r := newRig(t)
	vt.Init(t, r.tr, ^uint64(0), r.qs...)
	for off := uint64(0); off < virtio.ConfigOffset; off++ {
		for _, n := range []int{1, 2, 3, 8} {
			b := make([]byte, n)
			for i := range b {
				b[i] = 0xee
			}
			r.tr.Read(off, b)
			for _, v := range b {
				if v != 0 {
					t.Fatalf("%d-byte read at %#x = %x, want zeros", n, off, b)
				}
			}
			r.tr.Write(off, b)
		}
	}
	for _, off := range []uint64{virtio.WindowSize, virtio.WindowSize - 1, 1 << 40, ^uint64(0), ^uint64(0) - 3} {
		for _, n := range []int{0, 1, 4, 8, 64} {
			b := make([]byte, n)
			r.tr.Read(off, b)
			r.tr.Write(off, b)
		}
	}
	r.tr.Read(0, nil)
	r.tr.Write(vt.RegStatus, nil)
	if st := r.reg(vt.RegStatus); st != 0xf {
		t.Fatalf("status %#x after odd accesses", st)
	}
	for _, reg := range []uint64{0xb0, 0xb4, 0xb8, 0xbc} {
		if v := r.reg(reg); v != 0xffffffff {
			t.Errorf("shared memory register %#x = %#x, want all ones (no region)", reg, v)
		}
	}
}

func TestTransportStateRoundTrip(t *testing.T) {
	r := newRig(t)
	vt.Init(t, r.tr, ^uint64(0), r.qs...)
	q := r.qs[0]
	q.Add(q.Readable([]byte("a")), q.Writable(1))
	vt.Kick(r.tr, 0)
	q.MustUsed()
	// Leave the interrupt pending and one chain published but unprocessed.
	outB := q.Writable(1)
	pending := q.Add(q.Readable([]byte("b")), outB)

	b, err := json.Marshal(r.tr.Save())
	if err != nil {
		t.Fatal(err)
	}
	var st virtio.TransportState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != 0xf || st.InterruptStatus != virtio.InterruptUsedBuffer || len(st.Queues) != 2 {
		t.Fatalf("saved %+v", st)
	}

	// A new device and transport on the same memory, as after a restore.
	dev2, line2 := newEcho(), &vt.Line{}
	tr2, err := virtio.NewTransport(r.mem, dev2, line2)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr2.Restore(st); err != nil {
		t.Fatal(err)
	}
	if dev2.activations != 1 || !line2.High() {
		t.Fatalf("restore: %d activations, line high %v", dev2.activations, line2.High())
	}
	if got := tr2.Save(); got.Queues[0] != st.Queues[0] || got.Status != st.Status || got.AckedFeatures != st.AckedFeatures {
		t.Fatalf("restored state %+v, want %+v", got, st)
	}
	if tr2.Restore(st) == nil {
		t.Fatal("Restore into a running transport succeeded")
	}
	vt.AckInterrupt(tr2)
	if line2.High() {
		t.Fatal("ACK after restore did not lower the line")
	}
	vt.Kick(tr2, 0)
	if u := q.MustUsed(); u.ID != uint32(pending) || string(q.Bytes(outB.Addr, 1)) != "b" {
		t.Fatalf("used %+v, buffer %q", u, q.Bytes(outB.Addr, 1))
	}
	if line2.Rises() != 2 {
		t.Fatalf("rises %d after the restored device completed a request, want 2", line2.Rises())
	}

	// Mismatches are refused and leave the transport reset.
	for name, modify := range map[string]func(s *virtio.TransportState){
		"queue count":      func(s *virtio.TransportState) { s.Queues = s.Queues[:1] },
		"unoffered bit":    func(s *virtio.TransportState) { s.AckedFeatures |= 1 << 50 },
		"queue max size":   func(s *virtio.TransportState) { s.Queues[1].MaxSize = 4 },
		"bad ring address": func(s *virtio.TransportState) { s.Queues[0].UsedRing = 1 << 40 },
	} {
		bad := st
		bad.Queues = append([]virtio.QueueState(nil), st.Queues...)
		modify(&bad)
		tr3, _ := virtio.NewTransport(r.mem, newEcho(), &vt.Line{})
		if err := tr3.Restore(bad); err == nil {
			t.Errorf("%s: Restore succeeded", name)
		} else if s := tr3.Save(); s.Status != 0 {
			t.Errorf("%s: status %#x after a failed restore", name, s.Status)
		}
	}
}

func TestNewTransportChecks(t *testing.T) {
	mem := newMem(t, memSize)
	for _, sizes := range [][]uint16{{0}, {3}, {16, 100}} {
		if _, err := virtio.NewTransport(mem, newEcho(sizes...), &vt.Line{}); err == nil {
			t.Errorf("queue sizes %v accepted", sizes)
		}
	}
	if _, err := virtio.NewTransport(mem, nil, &vt.Line{}); err == nil {
		t.Error("nil device accepted")
	}
}

// The transport sits on the MMIO bus.
var _ devices.Device = (*virtio.Transport)(nil)

// TestConcurrentAccess has several vCPUs kick, read and acknowledge while
// the device completes requests and reports configuration changes; run with
// -race. Every request must complete and the line must end consistent with
// InterruptStatus.
func TestConcurrentAccess(t *testing.T) {
	r := newRig(t)
	vt.Init(t, r.tr, ^uint64(0), r.qs...)
	q := r.qs[0]
	const requests = 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				vt.Kick(r.tr, 0)
				vt.AckInterrupt(r.tr)
				r.tr.Read(vt.RegConfig, make([]byte, 4))
				_ = r.tr.ConfigChanged()
			}
		}()
	}
	done := 0
	for i := 0; i < requests; i++ {
		q.Add(q.Readable([]byte{byte(i)}), q.Writable(1))
		vt.Kick(r.tr, 0)
		for {
			if _, ok := q.NextUsed(); ok {
				done++
				break
			}
		}
	}
	close(stop)
	wg.Wait()
	vt.AckInterrupt(r.tr)
	if done != requests || r.line.High() {
		t.Fatalf("%d of %d requests done, line high %v", done, requests, r.line.High())
	}
}
