package legacy

import (
	"bytes"
	"testing"
)

type countIRQ struct{ n int }

func (c *countIRQ) Trigger() error { c.n++; return nil }

func rd(s *Serial, off uint64) uint8 {
	b := []byte{0}
	s.Read(off, b)
	return b[0]
}

func wr(s *Serial, off uint64, v uint8) { s.Write(off, []byte{v}) }

func TestSerialOutputAndTHREInterrupt(t *testing.T) {
	var out bytes.Buffer
	irq := &countIRQ{}
	s := NewSerial(&out, irq)
	for _, c := range []byte("hi") {
		wr(s, regData, c)
	}
	if out.String() != "hi" || irq.n != 0 {
		t.Fatalf("out %q irqs %d, want \"hi\" and no interrupt with IER clear", out.String(), irq.n)
	}
	wr(s, regIER, ierTHRE)
	if irq.n != 1 {
		t.Fatalf("enabling THRE interrupt gave %d interrupts, want 1", irq.n)
	}
	if got := rd(s, regIIR) & 0x0f; got != iirTHRE {
		t.Fatalf("IIR = %#x, want THRE", got)
	}
	if got := rd(s, regIIR) & 0x0f; got != iirNone {
		t.Fatalf("IIR after read = %#x, want none (reading IIR clears THRE)", got)
	}
	wr(s, regData, '!')
	if irq.n != 2 || rd(s, regIIR)&0x0f != iirTHRE {
		t.Fatalf("write with THRE enabled: irqs %d", irq.n)
	}
	if rd(s, regLSR)&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
		t.Fatal("LSR must always report an empty transmitter")
	}
	if b, _ := s.Stats(); b != 3 {
		t.Fatalf("bytes = %d, want 3", b)
	}
}

func TestSerialInputLoopbackAndDivisor(t *testing.T) {
	irq := &countIRQ{}
	s := NewSerial(nil, irq)
	wr(s, regIER, ierRDA)
	s.Enqueue([]byte("ab"))
	if irq.n != 1 || rd(s, regLSR)&lsrDR == 0 || rd(s, regIIR)&0x0f != iirRDA {
		t.Fatalf("input: irqs %d", irq.n)
	}
	if rd(s, regData) != 'a' || rd(s, regData) != 'b' || rd(s, regLSR)&lsrDR != 0 {
		t.Fatal("input bytes not delivered in order")
	}
	// Loopback: Linux's probe writes MCR with LOOP and reads MSR back.
	wr(s, regMCR, mcrLoop|mcrOUT2|mcrRTS)
	if got := rd(s, regMSR); got != msrDCD|msrCTS {
		t.Fatalf("loopback MSR = %#x, want %#x", got, msrDCD|msrCTS)
	}
	wr(s, regData, 'x')
	if rd(s, regData) != 'x' {
		t.Fatal("loopback byte not received")
	}
	wr(s, regLCR, lcrDLAB)
	wr(s, regData, 1)
	wr(s, regIER, 2)
	if rd(s, regData) != 1 || rd(s, regIER) != 2 {
		t.Fatal("divisor latch not readable")
	}
	wr(s, regLCR, 0)
	if rd(s, regIER) != ierRDA {
		t.Fatal("IER clobbered by divisor write")
	}
}

func TestSerialSaveRestoreAndHostileAccess(t *testing.T) {
	s := NewSerial(nil, nil)
	wr(s, regSCR, 0x5a)
	s.Enqueue([]byte("q"))
	st := s.Save()
	s2 := NewSerial(nil, nil)
	s2.Restore(st)
	if rd(s2, regSCR) != 0x5a || rd(s2, regData) != 'q' {
		t.Fatal("state not restored")
	}
	for off := uint64(0); off < 16; off++ {
		s.Read(off, nil)
		s.Write(off, nil)
		s.Read(off, make([]byte, 4))
		s.Write(off, []byte{0xff, 0xff, 0xff, 0xff})
	}
	s.Enqueue(make([]byte, 2*rxCapacity))
	if len(s.Save().RX) != rxCapacity {
		t.Fatal("input not bounded")
	}
}

func TestI8042Reset(t *testing.T) {
	n := 0
	c := NewI8042(func() { n++ })
	c.CommandPort().Write(0, []byte{0xfe})
	if n != 1 {
		t.Fatalf("reset called %d times, want 1", n)
	}
	c.CommandPort().Write(0, []byte{cmdWriteControl})
	c.DataPort().Write(0, []byte{0x47})
	c.CommandPort().Write(0, []byte{cmdReadControl})
	st := []byte{0}
	c.CommandPort().Read(0, st)
	d := []byte{0}
	c.DataPort().Read(0, d)
	if st[0]&statusOutFull == 0 || d[0] != 0x47 {
		t.Fatalf("control byte round trip: status %#x data %#x", st[0], d[0])
	}
	c.DataPort().Read(0, nil)
	if n != 1 {
		t.Fatal("spurious reset")
	}
}
