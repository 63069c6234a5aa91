package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/kindlingvm/kindling/vmm/memory"
)

// virtio-mmio identification (virtio 1.2, section 4.2.2).
const (
	// MagicValue is "virt" read as a little-endian 32-bit word.
	MagicValue uint32 = 0x74726976
	// mmioVersion 2 is the modern (virtio 1.x) register layout; 1 is legacy.
	mmioVersion uint32 = 2
	// VendorID identifies Kindling's devices to the guest (it shows up in
	// /sys/bus/virtio/devices/*/vendor). The spec leaves it free; the bytes
	// spell "KDLG" read most-significant first.
	VendorID uint32 = 0x4b444c47
)

// WindowSize is the MMIO window a transport occupies. The registers end at
// 0x100 and configuration space follows; Linux maps a 4 KiB page per device.
const WindowSize = 0x1000

// ConfigOffset is where device configuration space starts in the window.
const ConfigOffset = 0x100

// Register offsets (virtio 1.2, section 4.2.2, table "MMIO Device Register
// Layout"). All are 32 bits wide.
const (
	regMagicValue        = 0x000
	regVersion           = 0x004
	regDeviceID          = 0x008
	regVendorID          = 0x00c
	regDeviceFeatures    = 0x010
	regDeviceFeaturesSel = 0x014
	regDriverFeatures    = 0x020
	regDriverFeaturesSel = 0x024
	regQueueSel          = 0x030
	regQueueNumMax       = 0x034
	regQueueNum          = 0x038
	regQueueReady        = 0x044
	regQueueNotify       = 0x050
	regInterruptStatus   = 0x060
	regInterruptACK      = 0x064
	regStatus            = 0x070
	regQueueDescLow      = 0x080
	regQueueDescHigh     = 0x084
	regQueueDriverLow    = 0x090
	regQueueDriverHigh   = 0x094
	regQueueDeviceLow    = 0x0a0
	regQueueDeviceHigh   = 0x0a4
	regSHMSel            = 0x0ac
	regSHMLenLow         = 0x0b0
	regSHMLenHigh        = 0x0b4
	regSHMBaseLow        = 0x0b8
	regSHMBaseHigh       = 0x0bc
	regConfigGeneration  = 0x0fc
)

// statusDriverBits are the status bits a driver may set; DEVICE_NEEDS_RESET
// belongs to the device and the rest are reserved (2.1).
const statusDriverBits = StatusAcknowledge | StatusDriver | StatusFeaturesOK | StatusDriverOK | StatusFailed

// InterruptLine is the device's interrupt pin. The transport sets it high
// when InterruptStatus becomes non-zero and low when the driver acknowledges
// it back to zero, so on an edge-triggered pin each rise is one interrupt.
type InterruptLine interface {
	SetLevel(high bool) error
}

// Transport is a virtio-mmio (version 2) device: the register window in
// front of a Device. Its Read and Write never panic, whatever the offset,
// size or value, and are safe for concurrent use by several vCPUs.
//
// Locking: mu guards the register state and is held while calling the
// device's methods except Notify. sigMu guards the interrupt status, the
// line level and the configuration generation, which devices change from
// their own contexts through the SignalFunc and ConfigChanged. Order: mu,
// then the device's locks, then sigMu; a device never takes mu.
type Transport struct {
	mem     *memory.Memory
	dev     Device
	line    InterruptLine
	offered uint64

	mu         sync.Mutex
	status     uint32
	devFeatSel uint32
	drvFeatSel uint32
	acked      uint64
	queueSel   uint32
	queues     []*Queue
	active     bool  // the device accepted Activate and has not been reset since
	failure    error // why DEVICE_NEEDS_RESET is set
	// epoch counts resets (written under mu). A signal or failure from a
	// device activated in an earlier epoch is stale and dropped.
	epoch atomic.Uint64

	sigMu     sync.Mutex
	isr       uint32
	lineHigh  bool
	configGen uint32
}

// NewTransport puts dev behind a virtio-mmio register window. mem is guest
// memory, for the queues; line is the device's interrupt pin.
func NewTransport(mem *memory.Memory, dev Device, line InterruptLine) (*Transport, error) {
	if mem == nil || dev == nil || line == nil {
		return nil, errors.New("virtio-mmio transport needs guest memory, a device and an interrupt line")
	}
	sizes := append([]uint16(nil), dev.QueueMaxSizes()...)
	t := &Transport{mem: mem, dev: dev, line: line, offered: dev.Features() | TransportFeatures}
	for i, s := range sizes {
		if err := checkSize(s, MaxQueueSize); err != nil {
			return nil, fmt.Errorf("device type %d queue %d: maximum %w", dev.DeviceType(), i, err)
		}
		t.queues = append(t.queues, NewQueue(s))
	}
	return t, nil
}

// Failure is the error that made the transport set DEVICE_NEEDS_RESET, or
// nil. It is for the VMM's diagnostics; the guest only sees the status bit.
func (t *Transport) Failure() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failure
}

// Read handles a guest read of len(data) bytes at offset in the window.
func (t *Transport) Read(offset uint64, data []byte) {
	clear(data)
	if offset >= ConfigOffset {
		if offset < WindowSize && uint64(len(data)) <= WindowSize-offset {
			t.mu.Lock()
			t.dev.ReadConfig(offset-ConfigOffset, data)
			t.mu.Unlock()
		}
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		return // registers are 32-bit (4.2.2); other accesses read as zero
	}
	binary.LittleEndian.PutUint32(data, t.readReg(offset))
}

func (t *Transport) readReg(offset uint64) uint32 {
	switch offset {
	case regMagicValue:
		return MagicValue
	case regVersion:
		return mmioVersion
	case regDeviceID:
		return t.dev.DeviceType()
	case regVendorID:
		return VendorID
	case regInterruptStatus:
		t.sigMu.Lock()
		defer t.sigMu.Unlock()
		return t.isr
	case regConfigGeneration:
		t.sigMu.Lock()
		defer t.sigMu.Unlock()
		return t.configGen
	case regSHMLenLow, regSHMLenHigh, regSHMBaseLow, regSHMBaseHigh:
		// No shared memory regions: a selected region that does not exist
		// reads back a length of all ones (4.2.2), which is what Linux's
		// vm_get_shm_region tests for.
		return 0xffff_ffff
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch offset {
	case regDeviceFeatures:
		if t.devFeatSel < 2 {
			return uint32(t.offered >> (32 * t.devFeatSel))
		}
	case regQueueNumMax:
		if q := t.selected(); q != nil {
			return uint32(q.MaxSize)
		}
	case regQueueReady:
		if q := t.selected(); q != nil && q.Ready {
			return 1
		}
	case regStatus:
		return t.status
	}
	return 0
}

// Write handles a guest write of len(data) bytes at offset in the window.
func (t *Transport) Write(offset uint64, data []byte) {
	if offset >= ConfigOffset {
		if offset < WindowSize && uint64(len(data)) <= WindowSize-offset {
			t.mu.Lock()
			t.dev.WriteConfig(offset-ConfigOffset, data)
			t.mu.Unlock()
		}
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	switch offset {
	case regQueueNotify:
		t.notify(v)
		return
	case regInterruptACK:
		t.ack(v)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch offset {
	case regDeviceFeaturesSel:
		t.devFeatSel = v
	case regDriverFeatures:
		// Features are fixed once FEATURES_OK is set (3.1.1 step 5). A
		// selector past 1 names bits the device never offers; ignoring the
		// write leaves them unaccepted.
		if t.status&(StatusFeaturesOK|StatusDriverOK) == 0 && t.drvFeatSel < 2 {
			shift := 32 * t.drvFeatSel
			t.acked = t.acked&^(0xffff_ffff<<shift) | uint64(v)<<shift
		}
	case regDriverFeaturesSel:
		t.drvFeatSel = v
	case regQueueSel:
		t.queueSel = v
	case regQueueNum:
		if q := t.configurable(); q != nil {
			if v > uint32(q.MaxSize) {
				v = 0 // invalid; Check refuses it at DRIVER_OK
			}
			q.Size = uint16(v)
		}
	case regQueueDescLow, regQueueDescHigh:
		if q := t.configurable(); q != nil {
			q.DescTable = setHalf(q.DescTable, offset == regQueueDescHigh, v)
		}
	case regQueueDriverLow, regQueueDriverHigh:
		if q := t.configurable(); q != nil {
			q.AvailRing = setHalf(q.AvailRing, offset == regQueueDriverHigh, v)
		}
	case regQueueDeviceLow, regQueueDeviceHigh:
		if q := t.configurable(); q != nil {
			q.UsedRing = setHalf(q.UsedRing, offset == regQueueDeviceHigh, v)
		}
	case regQueueReady:
		if q := t.selected(); q != nil && t.status&StatusDriverOK == 0 && v <= 1 {
			q.Ready = v == 1
		}
	case regStatus:
		t.setStatus(v)
	}
	// Everything else (read-only registers, SHMSel) ignores writes.
}

func setHalf(addr uint64, high bool, v uint32) uint64 {
	if high {
		return addr&0xffff_ffff | uint64(v)<<32
	}
	return addr&^0xffff_ffff | uint64(v)
}

// selected is the queue QueueSel names, or nil. Called with mu held.
func (t *Transport) selected() *Queue {
	if t.queueSel >= uint32(len(t.queues)) {
		return nil
	}
	return t.queues[t.queueSel]
}

// configurable is the selected queue if its registers may still be written:
// not yet ready and the device not yet started (4.2.3.2). Called with mu held.
func (t *Transport) configurable() *Queue {
	q := t.selected()
	if q == nil || q.Ready || t.status&StatusDriverOK != 0 {
		return nil
	}
	return q
}

// setStatus applies a driver write to Status (2.1, 3.1.1). Called with mu
// held.
func (t *Transport) setStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	old := t.status
	next := v&statusDriverBits | old&StatusNeedsReset
	if old&^next != 0 {
		return // the driver may only add bits; clearing is done by writing 0
	}
	added := next &^ old
	// Each step of 3.1.1 needs the one before it.
	if (next&StatusDriver != 0 && next&StatusAcknowledge == 0) ||
		(next&StatusFeaturesOK != 0 && next&StatusDriver == 0) ||
		(next&StatusDriverOK != 0 && next&StatusFeaturesOK == 0) {
		return
	}
	if added&StatusFeaturesOK != 0 {
		if err := t.checkFeatures(); err != nil {
			// Refuse: FEATURES_OK reads back clear (2.2.2), so DRIVER_OK
			// cannot follow.
			next &^= StatusFeaturesOK | StatusDriverOK
			added &^= StatusFeaturesOK | StatusDriverOK
		}
	}
	t.status = next
	if added&StatusDriverOK != 0 && next&StatusNeedsReset == 0 {
		if err := t.activate(); err != nil {
			t.needsReset(err)
		}
	}
}

func (t *Transport) checkFeatures() error {
	if extra := t.acked &^ t.offered; extra != 0 {
		return fmt.Errorf("driver accepted features %#x that were not offered", extra)
	}
	if t.acked&FeatureVersion1 == 0 {
		return errors.New("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")
	}
	return nil
}

// activate checks the ready queues and starts the device. Called with mu held.
func (t *Transport) activate() error {
	for i, q := range t.queues {
		q.EventIdx = t.acked&FeatureEventIdx != 0
		q.IndirectDesc = t.acked&FeatureIndirectDesc != 0
		if q.Ready {
			if err := q.Check(t.mem); err != nil {
				return fmt.Errorf("queue %d: %w", i, err)
			}
		}
	}
	if err := t.dev.Activate(t.mem, t.queues, t.acked, t.signaller(t.epoch.Load())); err != nil {
		return fmt.Errorf("activate device type %d: %w", t.dev.DeviceType(), err)
	}
	t.active = true
	return nil
}

// needsReset puts the device in DEVICE_NEEDS_RESET and tells the driver with
// a configuration change interrupt (2.1.2). Called with mu held.
func (t *Transport) needsReset(err error) {
	if t.active {
		// Stop the device: it must not touch the queues again until the
		// driver resets it.
		t.dev.Reset()
		t.epoch.Add(1)
		t.active = false
	}
	t.status |= StatusNeedsReset
	t.failure = err
	t.sigMu.Lock()
	_ = t.raiseLocked(InterruptConfigChange) // a failing line cannot be reported to the guest
	t.sigMu.Unlock()
}

// reset is the driver writing 0 to Status: device and transport go back to
// their initial state (2.4). Called with mu held.
func (t *Transport) reset() {
	t.dev.Reset()
	t.resetRegisters()
}

// resetRegisters returns the transport's own state to its initial values.
// Called with mu held, after the device was reset or before it was started.
func (t *Transport) resetRegisters() {
	t.epoch.Add(1)
	for _, q := range t.queues {
		q.Reset()
	}
	t.status, t.devFeatSel, t.drvFeatSel, t.acked, t.queueSel = 0, 0, 0, 0, 0
	t.active, t.failure = false, nil
	t.sigMu.Lock()
	t.isr = 0
	_ = t.setLineLocked(false)
	t.sigMu.Unlock()
}

// notify hands a QueueNotify write to the device, outside mu so that slow
// device work does not stall other vCPUs' register accesses.
func (t *Transport) notify(queue uint32) {
	t.mu.Lock()
	ok := t.active && t.status&StatusNeedsReset == 0 && queue < uint32(len(t.queues))
	epoch := t.epoch.Load()
	t.mu.Unlock()
	if !ok {
		return
	}
	if err := t.dev.Notify(int(queue)); err != nil {
		t.mu.Lock()
		if t.epoch.Load() == epoch && t.active {
			t.needsReset(fmt.Errorf("queue %d: %w", queue, err))
		}
		t.mu.Unlock()
	}
}

func (t *Transport) ack(v uint32) {
	t.sigMu.Lock()
	defer t.sigMu.Unlock()
	t.isr &^= v
	if t.isr == 0 {
		_ = t.setLineLocked(false) // a failing line cannot be reported to the guest
	}
}

// signaller is the SignalFunc handed to a device activated in epoch.
func (t *Transport) signaller(epoch uint64) SignalFunc {
	queues := t.queues
	return func(queue int) error {
		if queue < 0 || queue >= len(queues) {
			return fmt.Errorf("signal for queue %d of %d", queue, len(queues))
		}
		need, err := queues[queue].NeedsInterrupt(t.mem)
		if err != nil || !need {
			return err
		}
		t.sigMu.Lock()
		defer t.sigMu.Unlock()
		if t.epoch.Load() != epoch {
			return nil // the device was reset meanwhile
		}
		return t.raiseLocked(InterruptUsedBuffer)
	}
}

// ConfigChanged tells the driver the device configuration changed (for
// example a resized disk): it bumps ConfigGeneration and raises a
// configuration change interrupt (4.2.2). Devices may call it from any
// context that does not hold the transport's register lock.
func (t *Transport) ConfigChanged() error {
	t.sigMu.Lock()
	defer t.sigMu.Unlock()
	t.configGen++
	return t.raiseLocked(InterruptConfigChange)
}

// raiseLocked sets bits in InterruptStatus and raises the line if it was
// low. Called with sigMu held.
func (t *Transport) raiseLocked(bits uint32) error {
	t.isr |= bits
	return t.setLineLocked(true)
}

func (t *Transport) setLineLocked(high bool) error {
	if t.lineHigh == high {
		return nil
	}
	if err := t.line.SetLevel(high); err != nil {
		return fmt.Errorf("set virtio-mmio interrupt line %v: %w", high, err)
	}
	t.lineHigh = high
	return nil
}

// TransportState is the transport's register state, for snapshots. The
// device's own state is saved separately, by the device.
type TransportState struct {
	Status            uint32
	DeviceFeaturesSel uint32
	DriverFeaturesSel uint32
	AckedFeatures     uint64
	QueueSel          uint32
	Queues            []QueueState
	InterruptStatus   uint32
	ConfigGeneration  uint32
}

// Save captures the transport. The device must be quiescent (the VM paused
// and no backend I/O in flight), since an active device owns its queues.
func (t *Transport) Save() TransportState {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := TransportState{
		Status:            t.status,
		DeviceFeaturesSel: t.devFeatSel,
		DriverFeaturesSel: t.drvFeatSel,
		AckedFeatures:     t.acked,
		QueueSel:          t.queueSel,
	}
	for _, q := range t.queues {
		st.Queues = append(st.Queues, q.State())
	}
	t.sigMu.Lock()
	st.InterruptStatus, st.ConfigGeneration = t.isr, t.configGen
	t.sigMu.Unlock()
	return st
}

// Restore loads a state captured by Save into a transport the guest has not
// started (a new one, for a restored VM). Restore the device's own state
// first: if the driver had started the device, Restore activates it again
// with the saved queues. On error the transport and device are left reset.
func (t *Transport) Restore(st TransportState) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.active {
		return fmt.Errorf("restore virtio-mmio transport for device type %d: the device is running", t.dev.DeviceType())
	}
	t.resetRegisters()
	if err := t.restore(st); err != nil {
		t.reset()
		return fmt.Errorf("restore virtio-mmio transport for device type %d: %w", t.dev.DeviceType(), err)
	}
	return nil
}

func (t *Transport) restore(st TransportState) error {
	if len(st.Queues) != len(t.queues) {
		return fmt.Errorf("saved %d queues, the device has %d", len(st.Queues), len(t.queues))
	}
	if st.Status&StatusFeaturesOK != 0 && st.AckedFeatures&^t.offered != 0 {
		return fmt.Errorf("saved features %#x include %#x this device does not offer",
			st.AckedFeatures, st.AckedFeatures&^t.offered)
	}
	for i, q := range t.queues {
		if err := q.SetState(st.Queues[i]); err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
	}
	t.status = st.Status
	t.devFeatSel, t.drvFeatSel = st.DeviceFeaturesSel, st.DriverFeaturesSel
	t.acked, t.queueSel = st.AckedFeatures, st.QueueSel
	if t.status&StatusDriverOK != 0 && t.status&StatusNeedsReset == 0 {
		if err := t.activate(); err != nil {
			return err
		}
	}
	t.sigMu.Lock()
	defer t.sigMu.Unlock()
	t.configGen = st.ConfigGeneration
	if st.InterruptStatus != 0 {
		// Keep the line level in step with InterruptStatus so the driver's
		// ACK lowers it and the next interrupt is a fresh edge. At worst the
		// driver sees one spurious interrupt, which it tolerates.
		return t.raiseLocked(st.InterruptStatus)
	}
	return nil
}
