package vsock

import (
	"encoding/binary"
	"fmt"
)

// HostCID is the host's context ID (VMADDR_CID_HOST).
const HostCID = 2

// headerSize is struct virtio_vsock_hdr (virtio 1.2, 5.10.6).
const headerSize = 44

// Packet types and operations (5.10.6).
const (
	typeStream = 1

	opRequest       = 1
	opResponse      = 2
	opRst           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7

	shutdownRcv  = 1 // VIRTIO_VSOCK_SHUTDOWN_RCV: the sender will receive no more
	shutdownSend = 2 // VIRTIO_VSOCK_SHUTDOWN_SEND: the sender will send no more
)

// header is one packet's header, little-endian on the wire.
type header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32
}

func (h header) marshal() []byte {
	b := make([]byte, headerSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
	return b
}

// parseHeader reads a header from the guest; b is the guest's and may say
// anything.
func parseHeader(b []byte) (header, error) {
	if len(b) < headerSize {
		return header{}, fmt.Errorf("vsock packet of %d bytes, shorter than its %d-byte header", len(b), headerSize)
	}
	le := binary.LittleEndian
	return header{
		SrcCID: le.Uint64(b[0:]), DstCID: le.Uint64(b[8:]),
		SrcPort: le.Uint32(b[16:]), DstPort: le.Uint32(b[20:]),
		Len: le.Uint32(b[24:]), Type: le.Uint16(b[28:]), Op: le.Uint16(b[30:]),
		Flags: le.Uint32(b[32:]), BufAlloc: le.Uint32(b[36:]), FwdCnt: le.Uint32(b[40:]),
	}, nil
}
