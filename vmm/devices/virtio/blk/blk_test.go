package blk_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/blk"
	vt "github.com/kindlingvm/kindling/vmm/devices/virtio/virtiotest"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Spec values, written out independently of the package under test.
const (
	tIn, tOut, tFlush, tGetID = 0, 1, 4, 8
	sOK, sIOErr, sUnsupp      = 0, 1, 2

	fSegMax, fRO, fBlkSize, fFlush = 1 << 2, 1 << 5, 1 << 6, 1 << 9

	sectors = 64
)

type disk struct {
	t    testing.TB
	path string
	mem  *memory.Memory
	blk  *blk.Block
	line *vt.Line
	tr   *virtio.Transport
	q    *vt.Queue
	feat uint64
}

// sectorData is the initial content of sector i.
func sectorData(i int) []byte { return bytes.Repeat([]byte{byte(i)}, blk.SectorSize) }

func newImage(t testing.TB, size int) string {
	t.Helper()
	var img []byte
	for i := 0; len(img) < size; i++ {
		img = append(img, sectorData(i)...)
	}
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, img[:size], 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newDisk builds an image of sectors sectors, a Block on it, a transport,
// and initialises the device through the transport accepting want.
func newDisk(t testing.TB, opts blk.Options, want uint64) *disk {
	t.Helper()
	d := &disk{t: t, path: newImage(t, sectors*blk.SectorSize), line: &vt.Line{}}
	var err error
	if d.blk, err = blk.Open(d.path, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.blk.Close() })
	if d.mem, err = memory.New(8<<20, memory.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.mem.Close() })
	if d.tr, err = virtio.NewTransport(d.mem, d.blk, d.line); err != nil {
		t.Fatal(err)
	}
	d.q = vt.NewQueue(t, d.mem, 0x10000, blk.QueueSize, 4<<20)
	d.feat = vt.Init(t, d.tr, want, d.q)
	return d
}

func header(typ uint32, sector uint64) []byte {
	h := make([]byte, 16)
	binary.LittleEndian.PutUint32(h, typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

// split cuts b into pieces of at most n bytes.
func split(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

type req struct {
	typ      uint32
	sector   uint64
	out      []byte // data after the header
	in       uint32 // bytes of device-writable data before the status byte
	segment  int    // split data into descriptors of at most this many bytes (0: one)
	indirect bool
}

type result struct {
	status byte
	data   []byte
	used   vt.Used
}

func (d *disk) do(r req) result {
	d.t.Helper()
	q := d.q
	bufs := []vt.Buf{q.Readable(header(r.typ, r.sector))}
	seg := r.segment
	if seg == 0 {
		seg = 1 << 30
	}
	if len(r.out) > 0 {
		for _, p := range split(r.out, seg) {
			bufs = append(bufs, q.Readable(p))
		}
	}
	var in []vt.Buf
	for left := int(r.in); left > 0; left -= seg {
		b := q.Writable(uint32(min(left, seg)))
		in = append(in, b)
		bufs = append(bufs, b)
	}
	st := q.Writable(1)
	q.SetBytes(st.Addr, []byte{0xee})
	bufs = append(bufs, st)
	var head uint16
	if r.indirect {
		head = q.AddIndirect(bufs...)
	} else {
		head = q.Add(bufs...)
	}
	vt.Kick(d.tr, 0)
	u := q.MustUsed()
	if u.ID != uint32(head) {
		d.t.Fatalf("used id %d, want head %d", u.ID, head)
	}
	if _, more := q.NextUsed(); more {
		d.t.Fatal("more than one used element for one request")
	}
	res := result{status: q.Bytes(st.Addr, 1)[0], used: u}
	for _, b := range in {
		res.data = append(res.data, q.Bytes(b.Addr, b.Len)...)
	}
	vt.AckInterrupt(d.tr)
	return res
}

func (d *disk) file() []byte {
	d.t.Helper()
	b, err := os.ReadFile(d.path)
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

func TestConfigAndFeatures(t *testing.T) {
	d := newDisk(t, blk.Options{}, ^uint64(0))
	if id := vt.Read32(d.tr, vt.RegDeviceID); id != 2 {
		t.Fatalf("device ID %d, want 2", id)
	}
	want := uint64(fSegMax|fBlkSize|fFlush) | virtio.TransportFeatures
	if d.feat != want {
		t.Fatalf("features %#x, want %#x", d.feat, want)
	}
	cfg := make([]byte, 24)
	d.tr.Read(vt.RegConfig, cfg[:8])
	for off := 8; off < 24; off += 4 {
		d.tr.Read(vt.RegConfig+uint64(off), cfg[off:off+4])
	}
	if c := binary.LittleEndian.Uint64(cfg); c != sectors || d.blk.Capacity() != sectors {
		t.Errorf("capacity %d, want %d", c, sectors)
	}
	if s := binary.LittleEndian.Uint32(cfg[12:]); s != blk.QueueSize-2 {
		t.Errorf("seg_max %d", s)
	}
	if s := binary.LittleEndian.Uint32(cfg[20:]); s != 512 {
		t.Errorf("blk_size %d", s)
	}
	// Writes are ignored; reads past the structure are zero.
	d.tr.Write(vt.RegConfig, make([]byte, 8))
	d.tr.Read(vt.RegConfig, cfg[:8])
	if binary.LittleEndian.Uint64(cfg) != sectors {
		t.Error("config write changed the capacity")
	}
	tail := []byte{1, 2, 3, 4}
	d.tr.Read(vt.RegConfig+24, tail)
	if !bytes.Equal(tail, make([]byte, 4)) {
		t.Errorf("bytes past the config structure: %x", tail)
	}
}

func TestWriteReadBack(t *testing.T) {
	layouts := []struct {
		name     string
		segment  int
		indirect bool
	}{
		{"one descriptor", 0, false},
		{"sector segments", 512, false},
		{"odd segments", 100, false},
		{"indirect", 0, true},
		{"indirect odd segments", 333, true},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			d := newDisk(t, blk.Options{}, ^uint64(0))
			data := make([]byte, 3*blk.SectorSize)
			for i := range data {
				data[i] = byte(i*13 + 1)
			}
			r := d.do(req{typ: tOut, sector: 5, out: data, segment: l.segment, indirect: l.indirect})
			if r.status != sOK || r.used.Len != 1 {
				t.Fatalf("write: status %d used len %d", r.status, r.used.Len)
			}
			img := d.file()
			if !bytes.Equal(img[5*512:8*512], data) || !bytes.Equal(img[4*512:5*512], sectorData(4)) || !bytes.Equal(img[8*512:9*512], sectorData(8)) {
				t.Fatal("image does not hold the written sectors exactly")
			}
			r = d.do(req{typ: tIn, sector: 4, in: 5 * blk.SectorSize, segment: l.segment, indirect: l.indirect})
			if r.status != sOK || r.used.Len != 5*512+1 {
				t.Fatalf("read: status %d used len %d", r.status, r.used.Len)
			}
			want := append(append(sectorData(4), data...), sectorData(8)...)
			if !bytes.Equal(r.data, want) {
				t.Fatal("read back different data")
			}
			// The last sector of the disk.
			r = d.do(req{typ: tIn, sector: sectors - 1, in: 512, segment: l.segment, indirect: l.indirect})
			if r.status != sOK || !bytes.Equal(r.data, sectorData(sectors-1)) {
				t.Fatalf("last sector: status %d", r.status)
			}
		})
	}
}

// TestFraming: the device must not rely on how the driver splits a request
// into descriptors (2.7.4 "Message Framing"): header split in two, data and status in
// one writable buffer.
func TestFraming(t *testing.T) {
	d := newDisk(t, blk.Options{}, ^uint64(0))
	q := d.q
	h := header(tIn, 2)
	buf := q.Writable(512 + 1)
	head := q.Add(q.Readable(h[:5]), q.Readable(h[5:]), buf)
	vt.Kick(d.tr, 0)
	u := q.MustUsed()
	got := q.Bytes(buf.Addr, 513)
	if u.ID != uint32(head) || u.Len != 513 || got[512] != sOK || !bytes.Equal(got[:512], sectorData(2)) {
		t.Fatalf("used %+v status %d", u, got[512])
	}
	// A write whose header and data share one readable buffer.
	data := bytes.Repeat([]byte{0xab}, 512)
	st := q.Writable(1)
	q.Add(q.Readable(append(header(tOut, 3), data...)), st)
	vt.Kick(d.tr, 0)
	q.MustUsed()
	if q.Bytes(st.Addr, 1)[0] != sOK || !bytes.Equal(d.file()[3*512:4*512], data) {
		t.Fatal("write with header and data in one buffer failed")
	}
}

func TestFlush(t *testing.T) {
	for _, want := range []uint64{^uint64(0), ^uint64(fFlush)} {
		d := newDisk(t, blk.Options{}, want)
		if r := d.do(req{typ: tFlush}); r.status != sOK || r.used.Len != 1 {
			t.Fatalf("flush: status %d used %d", r.status, r.used.Len)
		}
		// Writes work with and without a negotiated write cache.
		if r := d.do(req{typ: tOut, sector: 1, out: make([]byte, 512)}); r.status != sOK {
			t.Fatalf("features %#x: write status %d", d.feat, r.status)
		}
	}
}

func TestGetID(t *testing.T) {
	d := newDisk(t, blk.Options{ID: "kindling-disk-0"}, ^uint64(0))
	r := d.do(req{typ: tGetID, in: 20})
	want := append([]byte("kindling-disk-0"), 0, 0, 0, 0, 0)
	if r.status != sOK || r.used.Len != 21 || !bytes.Equal(r.data, want) {
		t.Fatalf("GET_ID: status %d used %d data %q", r.status, r.used.Len, r.data)
	}
	// A short buffer gets a prefix; a long one the ID and untouched rest.
	if r := d.do(req{typ: tGetID, in: 8}); r.status != sOK || string(r.data) != "kindling" || r.used.Len != 9 {
		t.Fatalf("short GET_ID: %d %q %d", r.status, r.data, r.used.Len)
	}
	if r := d.do(req{typ: tGetID, in: 32, segment: 7}); r.status != sOK || !bytes.Equal(r.data[:20], want) || r.used.Len != 20 {
		t.Fatalf("long GET_ID: %d %q used %d", r.status, r.data, r.used.Len)
	}
	// The default ID is derived from the file.
	d2 := newDisk(t, blk.Options{}, ^uint64(0))
	if r := d2.do(req{typ: tGetID, in: 20}); r.status != sOK || r.data[0] == 0 || d2.blk.Save().ID == "" {
		t.Fatalf("default GET_ID: %d %q", r.status, r.data)
	}
	if _, err := blk.Open(d.path, blk.Options{ID: strings.Repeat("x", 21)}); err == nil {
		t.Fatal("a 21-byte ID was accepted")
	}
}

func TestBadRequests(t *testing.T) {
	cases := []struct {
		name string
		req  req
		want byte
	}{
		{"read past the end", req{typ: tIn, sector: sectors, in: 512}, sIOErr},
		{"read straddling the end", req{typ: tIn, sector: sectors - 1, in: 1024}, sIOErr},
		{"write past the end", req{typ: tOut, sector: sectors, out: make([]byte, 512)}, sIOErr},
		{"write straddling the end", req{typ: tOut, sector: sectors - 2, out: make([]byte, 3*512)}, sIOErr},
		{"sector overflows a byte offset", req{typ: tIn, sector: 1 << 55, in: 512}, sIOErr},
		{"sector at the top of uint64", req{typ: tOut, sector: ^uint64(0), out: make([]byte, 512)}, sIOErr},
		{"read not whole sectors", req{typ: tIn, sector: 0, in: 100}, sIOErr},
		{"write not whole sectors", req{typ: tOut, sector: 0, out: make([]byte, 513)}, sIOErr},
		{"discard (not offered)", req{typ: 11, sector: 0, out: make([]byte, 16)}, sUnsupp},
		{"write zeroes (not offered)", req{typ: 13, sector: 0, out: make([]byte, 16)}, sUnsupp},
		{"unknown type", req{typ: 0xffffffff}, sUnsupp},
	}
	d := newDisk(t, blk.Options{}, ^uint64(0))
	img := d.file()
	for _, tc := range cases {
		if r := d.do(tc.req); r.status != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, r.status, tc.want)
		}
	}
	if !bytes.Equal(d.file(), img) {
		t.Error("a refused request changed the image")
	}
	// The device still works.
	if r := d.do(req{typ: tIn, sector: 0, in: 512}); r.status != sOK {
		t.Fatalf("read after bad requests: %d", r.status)
	}
}

// TestMalformedRequests: chains too short for a header or a status byte.
func TestMalformedRequests(t *testing.T) {
	d := newDisk(t, blk.Options{}, ^uint64(0))
	q := d.q
	// Header of 8 bytes.
	st := q.Writable(1)
	q.Add(q.Readable(header(tIn, 0)[:8]), q.Writable(512), st)
	vt.Kick(d.tr, 0)
	if u := q.MustUsed(); q.Bytes(st.Addr, 1)[0] != sIOErr || u.Len != 0 {
		t.Fatalf("short header: status %d used %+v", q.Bytes(st.Addr, 1)[0], u)
	}
	// No writable byte for the status: returned untouched.
	q.Add(q.Readable(header(tFlush, 0)))
	vt.Kick(d.tr, 0)
	if u := q.MustUsed(); u.Len != 0 {
		t.Fatalf("no status byte: used %+v", u)
	}
	// Only a status byte.
	st = q.Writable(1)
	q.Add(st)
	vt.Kick(d.tr, 0)
	if u := q.MustUsed(); u.Len != 1 || q.Bytes(st.Addr, 1)[0] != sIOErr {
		t.Fatalf("status byte only: used %+v status %d", u, q.Bytes(st.Addr, 1)[0])
	}
	if vt.Read32(d.tr, vt.RegStatus)&vt.StatusNeedsReset != 0 {
		t.Fatal("a malformed request put the device in DEVICE_NEEDS_RESET")
	}
	// A chain breaking the ring rules does.
	q.SetDesc(0, vt.Desc{Addr: 0x300000, Len: 16, Flags: vt.DescNext, Next: 300})
	q.Publish(0)
	vt.Kick(d.tr, 0)
	if vt.Read32(d.tr, vt.RegStatus)&vt.StatusNeedsReset == 0 || d.tr.Failure() == nil {
		t.Fatal("an out-of-range next index did not set DEVICE_NEEDS_RESET")
	}
}

func TestReadOnly(t *testing.T) {
	d := newDisk(t, blk.Options{ReadOnly: true}, ^uint64(0))
	if d.feat&fRO == 0 || !d.blk.ReadOnly() {
		t.Fatalf("features %#x lack VIRTIO_BLK_F_RO", d.feat)
	}
	img := d.file()
	if r := d.do(req{typ: tOut, sector: 0, out: make([]byte, 512)}); r.status != sIOErr {
		t.Fatalf("write to a read-only disk: status %d, want IOERR", r.status)
	}
	if !bytes.Equal(d.file(), img) {
		t.Fatal("read-only image changed")
	}
	if r := d.do(req{typ: tIn, sector: 7, in: 512}); r.status != sOK || !bytes.Equal(r.data, sectorData(7)) {
		t.Fatalf("read from a read-only disk: status %d", r.status)
	}
	if r := d.do(req{typ: tFlush}); r.status != sOK {
		t.Fatalf("flush of a read-only disk: status %d", r.status)
	}

	// A file opened read-only is served read-only whatever the options say.
	f, err := os.Open(d.path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := blk.New(f, blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.ReadOnly() || b.Features()&fRO == 0 {
		t.Fatal("a disk on an O_RDONLY file is not read-only")
	}
}

func TestPartialSectorImage(t *testing.T) {
	path := newImage(t, 1000)
	b, err := blk.Open(path, blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Capacity() != 1 {
		t.Fatalf("capacity %d sectors for a 1000-byte image, want 1", b.Capacity())
	}
	if _, err := blk.Open(filepath.Join(t.TempDir(), "missing"), blk.Options{}); err == nil {
		t.Fatal("opening a missing image succeeded")
	}
}

// TestSnapshotRestore saves a running disk, restores it onto a new Block
// and transport, and keeps doing I/O.
func TestSnapshotRestore(t *testing.T) {
	d := newDisk(t, blk.Options{ID: "snap"}, ^uint64(0))
	if r := d.do(req{typ: tOut, sector: 9, out: bytes.Repeat([]byte{9}, 512)}); r.status != sOK {
		t.Fatal(r.status)
	}
	type snapshot struct {
		Transport virtio.TransportState
		Block     blk.State
	}
	raw, err := json.Marshal(snapshot{d.tr.Save(), d.blk.Save()})
	if err != nil {
		t.Fatal(err)
	}
	var snap snapshot
	if err := json.Unmarshal(raw, &snap); err != nil {
		t.Fatal(err)
	}

	b2, err := blk.Open(d.path, blk.Options{ID: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if err := b2.Restore(snap.Block); err != nil {
		t.Fatal(err)
	}
	tr2, err := virtio.NewTransport(d.mem, b2, &vt.Line{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr2.Restore(snap.Transport); err != nil {
		t.Fatal(err)
	}
	d.tr, d.blk = tr2, b2
	if r := d.do(req{typ: tIn, sector: 9, in: 512}); r.status != sOK || !bytes.Equal(r.data, bytes.Repeat([]byte{9}, 512)) {
		t.Fatalf("read after restore: status %d", r.status)
	}

	for name, st := range map[string]blk.State{
		"capacity":    {Capacity: sectors + 1, ID: "snap"},
		"read-only":   {Capacity: sectors, ReadOnly: true, ID: "snap"},
		"too-long ID": {Capacity: sectors, ID: strings.Repeat("x", blk.IDBytes+1)},
	} {
		if err := b2.Restore(st); err == nil {
			t.Errorf("Restore with a different %s succeeded", name)
		}
	}
	// A disk moved to another file (a restore-time override) keeps the
	// serial the guest already read.
	moved, err := blk.Open(d.path, blk.Options{ID: "moved"})
	if err != nil {
		t.Fatal(err)
	}
	defer moved.Close()
	if err := moved.Restore(snap.Block); err != nil || moved.Save().ID != "snap" {
		t.Errorf("restore onto a moved disk: %v, ID %q, want the snapshot's %q", err, moved.Save().ID, "snap")
	}
	// A read-only disk cannot stand in for the read-write one the guest saw.
	ro, err := blk.Open(d.path, blk.Options{ID: "snap", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Restore(snap.Block); err == nil {
		t.Error("read-only disk accepted a read-write snapshot")
	}
}

// FuzzRequest sends one request of arbitrary type, sector and layout to a
// small disk. The status must be a defined one and the image must not grow.
func FuzzRequest(f *testing.F) {
	f.Add(uint32(tIn), uint64(0), uint16(0), uint16(512), uint16(0), false)
	f.Add(uint32(tOut), uint64(3), uint16(1024), uint16(0), uint16(100), true)
	f.Add(uint32(tGetID), uint64(0), uint16(0), uint16(20), uint16(3), false)
	f.Add(uint32(tFlush), uint64(1<<63), uint16(7), uint16(0), uint16(0), true)
	f.Add(uint32(tOut), uint64(sectors-1), uint16(1024), uint16(1), uint16(0), false)
	d := newDisk(f, blk.Options{}, ^uint64(0))
	size := len(d.file())
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, out, in, segment uint16, indirect bool) {
		d.t = t
		d.q = vt.NewQueue(t, d.mem, 0x10000, blk.QueueSize, 4<<20)
		vt.Init(t, d.tr, ^uint64(0), d.q)
		out, in = out%4096, in%4096
		if segment != 0 && (int(out)+int(in))/int(segment) > blk.QueueSize-4 {
			segment = 0
		}
		r := d.do(req{typ: typ, sector: sector, out: make([]byte, out), in: uint32(in), segment: int(segment), indirect: indirect})
		if r.status > sUnsupp {
			t.Fatalf("status %d", r.status)
		}
		if r.used.Len > uint32(in)+1 {
			t.Fatalf("used length %d exceeds the %d writable bytes", r.used.Len, in+1)
		}
		if fi, err := os.Stat(d.path); err != nil || fi.Size() != int64(size) {
			t.Fatalf("image size changed: %v", err)
		}
	})
}
