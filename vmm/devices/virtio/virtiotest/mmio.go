package virtiotest

import (
	"encoding/binary"
	"testing"
)

// virtio-mmio version 2 registers (virtio 1.2, 4.2.2).
const (
	RegMagicValue        = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00c
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0
	RegQueueDeviceHigh   = 0x0a4
	RegConfigGeneration  = 0x0fc
	RegConfig            = 0x100

	// Device status bits (2.1).
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80

	FeatureVersion1 uint64 = 1 << 32
)

// MMIO is a register window: virtio.Transport.
type MMIO interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Read32 reads a 32-bit register.
func Read32(m MMIO, off uint64) uint32 {
	var b [4]byte
	m.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// Write32 writes a 32-bit register.
func Write32(m MMIO, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	m.Write(off, b[:])
}

// Init runs Linux's virtio_mmio probe and virtio core initialisation (3.1.1)
// against m: check magic and version, reset, ACKNOWLEDGE, DRIVER, read the
// device features, accept those also in want, FEATURES_OK (failing the test
// if the device refuses), set up queues[i] as queue i through the
// Low/High address registers, and DRIVER_OK. It returns the accepted
// features.
func Init(tb testing.TB, m MMIO, want uint64, queues ...*Queue) uint64 {
	tb.Helper()
	features := Negotiate(tb, m, want)
	if got := Read32(m, RegStatus); got&StatusFeaturesOK == 0 {
		tb.Fatalf("virtiotest: device refused features %#x (status %#x)", features, got)
	}
	for i, q := range queues {
		SetupQueue(tb, m, i, q)
	}
	Write32(m, RegStatus, Read32(m, RegStatus)|StatusDriverOK)
	return features
}

// Negotiate runs Init up to and including the FEATURES_OK write and returns
// the features written; the caller checks whether FEATURES_OK stuck.
func Negotiate(tb testing.TB, m MMIO, want uint64) uint64 {
	tb.Helper()
	if v := Read32(m, RegMagicValue); v != 0x74726976 {
		tb.Fatalf("virtiotest: magic %#x", v)
	}
	if v := Read32(m, RegVersion); v != 2 {
		tb.Fatalf("virtiotest: version %d, want 2", v)
	}
	if Read32(m, RegDeviceID) == 0 {
		tb.Fatal("virtiotest: device ID 0 (no device)")
	}
	Write32(m, RegStatus, 0)
	Write32(m, RegStatus, StatusAcknowledge)
	Write32(m, RegStatus, Read32(m, RegStatus)|StatusDriver)
	offered := DeviceFeatures(m)
	features := offered & want
	WriteFeatures(m, features)
	Write32(m, RegStatus, Read32(m, RegStatus)|StatusFeaturesOK)
	return features
}

// DeviceFeatures reads the 64 offered feature bits.
func DeviceFeatures(m MMIO) uint64 {
	Write32(m, RegDeviceFeaturesSel, 1)
	hi := Read32(m, RegDeviceFeatures)
	Write32(m, RegDeviceFeaturesSel, 0)
	return uint64(hi)<<32 | uint64(Read32(m, RegDeviceFeatures))
}

// WriteFeatures writes the 64 accepted feature bits, high half first as
// Linux does.
func WriteFeatures(m MMIO, f uint64) {
	Write32(m, RegDriverFeaturesSel, 1)
	Write32(m, RegDriverFeatures, uint32(f>>32))
	Write32(m, RegDriverFeaturesSel, 0)
	Write32(m, RegDriverFeatures, uint32(f))
}

// SetupQueue configures queue i from q the way Linux's vm_setup_vq does.
func SetupQueue(tb testing.TB, m MMIO, i int, q *Queue) {
	tb.Helper()
	Write32(m, RegQueueSel, uint32(i))
	if Read32(m, RegQueueReady) != 0 {
		tb.Fatalf("virtiotest: queue %d already ready", i)
	}
	if max := Read32(m, RegQueueNumMax); max < uint32(q.Size) {
		tb.Fatalf("virtiotest: queue %d maximum size %d < %d", i, max, q.Size)
	}
	Write32(m, RegQueueNum, uint32(q.Size))
	for _, r := range []struct {
		lo   uint64
		addr uint64
	}{{RegQueueDescLow, q.Desc}, {RegQueueDriverLow, q.Avail}, {RegQueueDeviceLow, q.Used}} {
		Write32(m, r.lo, uint32(r.addr))
		Write32(m, r.lo+4, uint32(r.addr>>32))
	}
	Write32(m, RegQueueReady, 1)
}

// Kick notifies the device that queue i has new buffers.
func Kick(m MMIO, i int) { Write32(m, RegQueueNotify, uint32(i)) }

// AckInterrupt reads InterruptStatus and acknowledges what it read, as
// Linux's vm_interrupt does; it returns the status read.
func AckInterrupt(m MMIO) uint32 {
	v := Read32(m, RegInterruptStatus)
	Write32(m, RegInterruptACK, v)
	return v
}
