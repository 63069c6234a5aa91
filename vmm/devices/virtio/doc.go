// Package virtio is the device side of virtio 1.x (the OASIS "Virtual I/O
// Device" specification, version 1.2): split virtqueues (queue.go,
// chain.go), the virtio-mmio version 2 register transport (mmio.go), and the
// contract a concrete device such as virtio-blk implements to sit behind the
// transport (device.go).
//
// Everything a guest driver hands this package is hostile. Ring indices,
// descriptor addresses, lengths, flags and register values are never
// trusted: each is checked against the negotiated queue size, the spec's
// rules and guest memory before use, and every guest-memory access goes
// through memory.Memory, which bounds-checks it. A malformed request is
// reported as an error (the transport then sets DEVICE_NEEDS_RESET); this
// package never panics on guest input, never touches memory outside guest
// RAM, never loops for longer than a bound derived from the queue size, and
// never logs on the guest's behalf.
//
// The transport holds no goroutines of its own: register accesses run on the
// calling vCPU thread, and a queue notification is processed synchronously
// by the device's Notify on that thread.
package virtio
