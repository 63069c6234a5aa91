// Package legacy holds the PC devices a Linux guest expects at fixed ports:
// the 8250/16550A UART used as the console, and the i8042 controller whose
// reset line is how a guest asks to stop. They are models of the registers
// only; they never block the vCPU thread that calls them.
package legacy

import (
	"io"
	"sync"
)

// Standard COM1 placement.
const (
	COM1Port = 0x3f8
	COM1IRQ  = 4
	// SerialPorts is the size of the UART's register window.
	SerialPorts = 8
	// rxCapacity bounds host-to-guest input held for a guest that does not
	// read it: 64 KiB is ample for an interactive console.
	rxCapacity = 64 << 10
)

// UART register offsets and bits (PC16550D data sheet).
const (
	regData = 0 // RBR on read, THR on write; DLL with DLAB
	regIER  = 1 // DLM with DLAB
	regIIR  = 2 // IIR on read, FCR on write
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7

	ierRDA  = 0x01 // received data available
	ierTHRE = 0x02 // transmitter holding register empty

	iirNone  = 0x01
	iirTHRE  = 0x02
	iirRDA   = 0x04
	iirFIFOs = 0xc0 // FIFOs enabled: reads as a 16550A

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80
)

// IRQ raises an edge on an interrupt line.
type IRQ interface {
	Trigger() error
}

// SerialState is the UART's register state, for snapshots.
type SerialState struct {
	DLL, DLM, IER, LCR, MCR, SCR, FCR uint8
	THREPending                       bool
	RX                                []byte
}

// Serial is a 16550A UART. Output goes to an io.Writer; input is fed with
// Enqueue.
type Serial struct {
	mu    sync.Mutex
	out   io.Writer
	irq   IRQ
	st    SerialState
	bytes uint64
	errs  uint64
}

// NewSerial returns a UART writing the guest's output to out (nil discards).
func NewSerial(out io.Writer, irq IRQ) *Serial {
	if out == nil {
		out = io.Discard
	}
	// DLAB divisor 12 = 9600 baud; Linux reprograms it anyway.
	return &Serial{out: out, irq: irq, st: SerialState{DLL: 12, MCR: mcrOUT2}}
}

// Enqueue feeds bytes to the guest, as if typed on the line. Bytes beyond
// rxCapacity are dropped, as a real UART overruns.
func (s *Serial) Enqueue(p []byte) {
	s.mu.Lock()
	room := rxCapacity - len(s.st.RX)
	if room < len(p) {
		p = p[:room]
	}
	wasEmpty := len(s.st.RX) == 0
	s.st.RX = append(s.st.RX, p...)
	fire := wasEmpty && len(p) > 0 && s.st.IER&ierRDA != 0
	s.mu.Unlock()
	if fire {
		s.trigger()
	}
}

// Stats returns the bytes the guest wrote and how many writes to the host
// side failed.
func (s *Serial) Stats() (bytes, errors uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes, s.errs
}

func (s *Serial) trigger() {
	if s.irq != nil {
		_ = s.irq.Trigger()
	}
}

// Read implements devices.Device.
func (s *Serial) Read(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	for i := range data {
		data[i] = 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st
	dlab := st.LCR&lcrDLAB != 0
	var v uint8
	switch offset {
	case regData:
		if dlab {
			v = st.DLL
		} else if len(st.RX) > 0 {
			v = st.RX[0]
			st.RX = st.RX[1:]
		}
	case regIER:
		if dlab {
			v = st.DLM
		} else {
			v = st.IER
		}
	case regIIR:
		v = s.iirLocked() | iirFIFOs
		// Reading IIR while it reports THRE clears that interrupt.
		if v&0x0f == iirTHRE {
			st.THREPending = false
		}
	case regLCR:
		v = st.LCR
	case regMCR:
		v = st.MCR
	case regLSR:
		v = lsrTHRE | lsrTEMT
		if len(st.RX) > 0 {
			v |= lsrDR
		}
	case regMSR:
		if st.MCR&mcrLoop != 0 {
			// Loopback wires the modem outputs to the inputs; Linux's
			// 8250 probe checks this.
			if st.MCR&mcrRTS != 0 {
				v |= msrCTS
			}
			if st.MCR&mcrDTR != 0 {
				v |= msrDSR
			}
			if st.MCR&mcrOUT1 != 0 {
				v |= msrRI
			}
			if st.MCR&mcrOUT2 != 0 {
				v |= msrDCD
			}
		} else {
			v = msrDCD | msrDSR | msrCTS
		}
	case regSCR:
		v = st.SCR
	}
	data[0] = v
}

func (s *Serial) iirLocked() uint8 {
	switch {
	case s.st.IER&ierRDA != 0 && len(s.st.RX) > 0:
		return iirRDA
	case s.st.IER&ierTHRE != 0 && s.st.THREPending:
		return iirTHRE
	}
	return iirNone
}

// Write implements devices.Device.
func (s *Serial) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	s.mu.Lock()
	st := &s.st
	dlab := st.LCR&lcrDLAB != 0
	fire := false
	var out []byte
	switch offset {
	case regData:
		if dlab {
			st.DLL = v
			break
		}
		if st.MCR&mcrLoop != 0 {
			if len(st.RX) < rxCapacity {
				st.RX = append(st.RX, v)
			}
			fire = st.IER&ierRDA != 0
			break
		}
		out = []byte{v}
		// The byte leaves at once, so the holding register is empty again.
		if st.IER&ierTHRE != 0 {
			st.THREPending = true
			fire = true
		}
	case regIER:
		if dlab {
			st.DLM = v
			break
		}
		old := st.IER
		st.IER = v & 0x0f
		if old&ierTHRE == 0 && st.IER&ierTHRE != 0 {
			st.THREPending = true
			fire = true
		}
		if old&ierRDA == 0 && st.IER&ierRDA != 0 && len(st.RX) > 0 {
			fire = true
		}
	case regIIR:
		st.FCR = v
		if v&0x02 != 0 { // clear receive FIFO
			st.RX = nil
		}
	case regLCR:
		st.LCR = v
	case regMCR:
		st.MCR = v & 0x1f
	case regSCR:
		st.SCR = v
	}
	if out != nil {
		s.bytes++
		if _, err := s.out.Write(out); err != nil {
			s.errs++
		}
	}
	s.mu.Unlock()
	if fire {
		s.trigger()
	}
}

// Save returns the UART's state.
func (s *Serial) Save() SerialState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.RX = append([]byte(nil), s.st.RX...)
	return st
}

// Restore replaces the UART's state.
func (s *Serial) Restore(st SerialState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(st.RX) > rxCapacity {
		st.RX = st.RX[:rxCapacity]
	}
	s.st = st
	s.st.RX = append([]byte(nil), st.RX...)
}
