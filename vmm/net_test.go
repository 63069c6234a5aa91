package vmm

import (
	"bytes"
	"errors"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/testnet"
	"github.com/kindlingvm/kindling/vmm/devices"
	"github.com/kindlingvm/kindling/vmm/devices/virtio"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/netdev"
	vt "github.com/kindlingvm/kindling/vmm/devices/virtio/virtiotest"
	"github.com/kindlingvm/kindling/vmm/memory"
)

var (
	netHostIP  = netip.MustParseAddr("172.16.0.1")
	netGuestIP = netip.MustParseAddr("172.16.0.2")
)

// busWindow is one device's window on a VM's MMIO bus, as a vCPU's
// accesses reach it.
type busWindow struct {
	bus  *devices.Bus
	base uint64
}

func (w busWindow) Read(off uint64, data []byte)  { w.bus.Read(w.base+off, data) }
func (w busWindow) Write(off uint64, data []byte) { w.bus.Write(w.base+off, data) }

// netGuest is a simulated virtio-net driver in a VM, reaching its device
// through the VM's MMIO bus.
type netGuest struct {
	t      *testing.T
	mac    net.HardwareAddr
	win    busWindow
	rx, tx *vt.Queue
	posted map[uint32]vt.Buf
}

// clone is the same driver state over another VM's memory and bus: the
// driver as a restored guest has it.
func (g *netGuest) clone(mem *memory.Memory, win busWindow) *netGuest {
	rx, tx := *g.rx, *g.tx
	rx.Mem, tx.Mem = mem, mem
	return &netGuest{t: g.t, mac: g.mac, win: win, rx: &rx, tx: &tx, posted: maps.Clone(g.posted)}
}

func (g *netGuest) post(n int) {
	for range n {
		b := g.rx.Writable(netdev.HeaderSize + 1518)
		g.posted[uint32(g.rx.Add(b))] = b
	}
	vt.Kick(g.win, 0)
}

func (g *netGuest) send(frame []byte) {
	g.t.Helper()
	g.tx.Add(g.tx.Readable(append(make([]byte, netdev.HeaderSize), frame...)))
	vt.Kick(g.win, 1)
	g.tx.MustUsed()
}

// recv returns the first frame match accepts within 5 s, answering the
// host's ARP requests for the guest's address meanwhile.
func (g *netGuest) recv(what string, match func([]byte) bool) []byte {
	g.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		u, ok := g.rx.NextUsed()
		if !ok {
			time.Sleep(time.Millisecond)
			continue
		}
		b := g.posted[u.ID]
		f := g.rx.Bytes(b.Addr, u.Len)[netdev.HeaderSize:]
		g.rx.Add(b)
		vt.Kick(g.win, 0)
		if match(f) {
			return f
		}
		if a, ok := testnet.ParseARP(f); ok && a.Op == testnet.ARPRequestOp && a.TargetIP == netGuestIP {
			g.send(testnet.ARPReply(g.mac, netGuestIP, a.SenderMAC, a.SenderIP))
		}
	}
	g.t.Fatalf("no %s within 5 s", what)
	return nil
}

// arpAndPing resolves the host and pings it; it returns the host's MAC.
func (g *netGuest) arpAndPing(seq uint16) net.HardwareAddr {
	g.t.Helper()
	g.send(testnet.ARPRequest(g.mac, netGuestIP, netHostIP))
	var host net.HardwareAddr
	g.recv("ARP reply", func(f []byte) bool {
		a, ok := testnet.ParseARP(f)
		if ok && a.Op == testnet.ARPReplyOp && a.SenderIP == netHostIP && bytes.Equal(a.TargetMAC, g.mac) {
			host = append(net.HardwareAddr(nil), a.SenderMAC...)
			return true
		}
		return false
	})
	payload := []byte("kindling ping")
	g.send(testnet.EchoRequest(g.mac, host, netGuestIP, netHostIP, 7, seq, payload))
	g.recv("echo reply", func(f []byte) bool {
		e, ok := testnet.ParseEchoReply(f)
		return ok && e.Seq == seq && bytes.Equal(e.Payload, payload) && bytes.Equal(e.DstMAC, g.mac)
	})
	return host
}

// A VM's network interface sits after its disk and vsock device (their
// windows and IRQs do not move), carries frames between a guest driver
// and the tap, holds still while the VM is paused, and restores from a
// snapshot onto another tap named by an override, with the guest's MAC and
// rings as they were.
func TestNetDeviceWiringAndRestore(t *testing.T) {
	requireKVM(t)
	ns := testnet.New(t)
	ns.AddTap(t, "tap0", "172.16.0.1/30")
	dir := t.TempDir()
	cfg := Config{MemoryMiB: 8, VCPUs: 1, Disks: []Disk{{Path: emptyDisk(t, dir)}},
		Vsock: &Vsock{GuestCID: 3, Path: filepath.Join(dir, "v.sock")}, Net: []NetIface{{Tap: "tap0"}}}
	var m *Machine
	if err := ns.Do(func() (err error) { m, err = New(cfg, Options{Console: &syncBuffer{}}); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(); m.Close() })
	for _, want := range []string{"virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0001000:6", "virtio_mmio.device=4K@0xd0002000:7"} {
		if got := m.kernelCmdline(); !strings.Contains(got, want) {
			t.Fatalf("command line %q lacks %q", got, want)
		}
	}
	win := busWindow{&m.mmio, VirtioMMIOBase + 2*virtio.WindowSize}
	if id := vt.Read32(win, vt.RegDeviceID); id != virtio.DeviceTypeNet {
		t.Fatalf("device ID %d in the third window, want virtio-net", id)
	}
	g := &netGuest{t: t, mac: netdev.DefaultMAC(0), win: win, posted: map[uint32]vt.Buf{}}
	g.rx = vt.NewQueue(t, m.Memory(), 4<<20, 64, 512<<10)
	g.tx = vt.NewQueue(t, m.Memory(), g.rx.End(), 64, 512<<10)
	vt.Init(t, win, vt.FeatureVersion1|1<<5, g.rx, g.tx)
	var mac [6]byte
	win.Read(vt.RegConfig, mac[:])
	if !bytes.Equal(mac[:], g.mac) {
		t.Fatalf("config MAC % x, want the default %v", mac, g.mac)
	}
	g.post(8)
	ns.WaitUp(t, "tap0") // the host drops replies until the attached tap is up
	g.arpAndPing(1)

	// Paused, the device leaves the guest's rings alone: a datagram from
	// the host waits, and arrives once the VM resumes.
	snap := runAndSnapshot(t, m, dir)
	restoredDriver := g.clone(nil, busWindow{})
	used := g.rx.UsedIdx()
	ns.SendUDP(t, netGuestIP, 9, []byte("while paused"))
	time.Sleep(100 * time.Millisecond)
	if g.rx.UsedIdx() != used {
		t.Fatal("the net device filled a receive buffer while the VM was paused")
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	g.recv("the datagram held over the pause", func(f []byte) bool { return bytes.HasSuffix(f, []byte("while paused")) })
	m.Stop()

	// Restore in another namespace, where tap0 does not exist.
	ns2 := testnet.New(t)
	ns2.AddTap(t, "tap9", "172.16.0.1/30")
	restore := func(ov RestoreOverrides) (r *Machine, err error) {
		ov.VsockPath = filepath.Join(dir, "v2.sock") // the original VM still holds its own
		err = ns2.Do(func() error { r, err = Restore(snap, ov, Options{Console: &syncBuffer{}}); return err })
		return r, err
	}
	if _, err := restore(RestoreOverrides{}); !errors.Is(err, netdev.ErrNoTap) ||
		!strings.Contains(err.Error(), "tap tap0: no such device in this network namespace: create it first") {
		t.Fatalf("restore onto a missing tap: %v", err)
	}
	for _, tc := range []struct {
		net  []NetIface
		want string
	}{
		{[]NetIface{{Tap: "tap9"}, {Tap: "tap8"}}, "2 network interface overrides for a VM with 1 network interfaces"},
		{[]NetIface{{Tap: "tap9", GuestMAC: "06:00:ac:10:00:03"}}, "guest MAC 06:00:ac:10:00:03 is not the snapshot's 06:00:ac:10:00:02"},
	} {
		if _, err := restore(RestoreOverrides{Net: tc.net}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("restore with %+v: %v, want %q", tc.net, err, tc.want)
		}
	}
	r, err := restore(RestoreOverrides{Net: []NetIface{{Tap: "tap9", GuestMAC: "06:00:AC:10:00:02"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(); r.Close() })
	if got := r.Config().Net; len(got) != 1 || got[0].Tap != "tap9" {
		t.Fatalf("restored network interfaces %+v", got)
	}
	rg := restoredDriver.clone(r.Memory(), busWindow{&r.mmio, win.base})
	if st := vt.Read32(rg.win, vt.RegStatus); st&vt.StatusDriverOK == 0 {
		t.Fatalf("restored device status %#x: not running", st)
	}
	rg.win.Read(vt.RegConfig, mac[:])
	if !bytes.Equal(mac[:], g.mac) {
		t.Fatalf("restored config MAC % x", mac)
	}
	ns2.WaitUp(t, "tap9")
	rg.arpAndPing(2)
}
