package virtio

import "github.com/kindlingvm/kindling/vmm/memory"

// Device IDs (virtio 1.2, section 5 "Device Types").
const (
	DeviceTypeNet   uint32 = 1
	DeviceTypeBlock uint32 = 2
	DeviceTypeVsock uint32 = 19
)

// Device-independent feature bits (virtio 1.2, section 6 "Reserved Feature
// Bits"). The transport offers these on every device.
const (
	// FeatureIndirectDesc: the driver may use indirect descriptor tables
	// (VIRTIO_F_INDIRECT_DESC, 2.7.5.3).
	FeatureIndirectDesc uint64 = 1 << 28
	// FeatureEventIdx: used_event / avail_event notification suppression
	// (VIRTIO_F_EVENT_IDX, 2.7.7 and 2.7.10).
	FeatureEventIdx uint64 = 1 << 29
	// FeatureVersion1: compliance with virtio 1.x; a modern (version 2)
	// virtio-mmio device must offer it and the driver must accept it
	// (VIRTIO_F_VERSION_1).
	FeatureVersion1 uint64 = 1 << 32

	// TransportFeatures are the bits the transport adds to a device's own.
	TransportFeatures = FeatureIndirectDesc | FeatureEventIdx | FeatureVersion1
)

// Device status bits (virtio 1.2, section 2.1 "Device Status Field").
const (
	StatusAcknowledge uint32 = 1
	StatusDriver      uint32 = 2
	StatusDriverOK    uint32 = 4
	StatusFeaturesOK  uint32 = 8
	StatusNeedsReset  uint32 = 0x40
	StatusFailed      uint32 = 0x80
)

// InterruptStatus bits (virtio 1.2, section 4.2.2, register 0x060).
const (
	InterruptUsedBuffer   uint32 = 1
	InterruptConfigChange uint32 = 2
)

// SignalFunc tells the driver that a device has put buffers on the used ring
// of queue. The transport raises a used-buffer interrupt only if the driver
// wants one (used_event with VIRTIO_F_EVENT_IDX, VIRTQ_AVAIL_F_NO_INTERRUPT
// without), so a device calls it after every batch of Push calls, from the
// context that owns the queue.
type SignalFunc func(queue int) error

// Device is a virtio device model behind a Transport: virtio-blk,
// virtio-vsock and virtio-net. The transport calls these methods with
// its register lock held, except Notify; a device guards its own state. A
// device must never call back into the Transport from inside these methods
// other than through the SignalFunc it was given, which only takes the
// transport's interrupt lock.
type Device interface {
	// DeviceType is the virtio device ID (DeviceTypeBlock, ...).
	DeviceType() uint32
	// Features are the device-specific feature bits offered to the driver;
	// the transport adds TransportFeatures.
	Features() uint64
	// QueueMaxSizes gives, per queue, the largest size the device accepts
	// (a power of two, at most MaxQueueSize). Its length is the number of
	// queues and must not change.
	QueueMaxSizes() []uint16
	// ReadConfig fills data from the device configuration space at offset.
	// data arrives zeroed; bytes beyond the configuration space stay zero.
	// offset and len(data) are guest-controlled.
	ReadConfig(offset uint64, data []byte)
	// WriteConfig writes the device configuration space; the device ignores
	// what it does not support. offset and len(data) are guest-controlled.
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device when the driver sets DRIVER_OK. queues has
	// one entry per QueueMaxSizes element; every ready queue has passed
	// Queue.Check, and the device must refuse (return an error) if a queue it
	// needs is not ready. features are the negotiated feature bits. From now
	// until Reset the device owns the queues.
	Activate(mem *memory.Memory, queues []*Queue, features uint64, signal SignalFunc) error
	// Notify processes the driver's notification for queue (a QueueNotify
	// write); it runs on the vCPU thread that wrote the register, without
	// the transport's lock, possibly concurrently with other calls. An
	// error means the driver broke the virtqueue rules; the transport then
	// sets DEVICE_NEEDS_RESET and stops notifying.
	Notify(queue int) error
	// Reset returns the device to its pre-activation state. When it returns
	// the device must no longer touch the queues or call the SignalFunc.
	Reset()
}

// CopyConfig is for Device.ReadConfig: it copies the part of config at
// offset that data covers, leaving the rest of data untouched.
func CopyConfig(data, config []byte, offset uint64) {
	if offset >= uint64(len(config)) {
		return
	}
	copy(data, config[offset:])
}
