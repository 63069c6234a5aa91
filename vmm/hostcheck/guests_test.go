package hostcheck

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/kindlingvm/kindling/internal/asm"
)

// The probe guests are stored as bytes; this keeps them equal to their
// source.
func TestProbeGuestsMatchSource(t *testing.T) {
	if err := asm.Available(); err != nil {
		t.Fatalf("checking probe guests needs binutils: %v", err)
	}
	for _, g := range []struct {
		name   string
		src    string
		origin uint64
		code   []byte
	}{
		{"loopGuest", loopGuestSrc, probeCode, loopGuest},
		{"syscallGuest", syscallGuestSrc, probeCode, syscallGuest},
		{"syscallHandler", syscallHandlerSrc, probeHandler, syscallHandler},
		{"cpuidGuest", cpuidGuestSrc, probeCode, cpuidGuest},
	} {
		got, err := asm.Assemble(g.src, g.origin)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, g.code) {
			t.Errorf("%s: stored bytes differ from its source; assembled: %#v", g.name, fmt.Sprintf("% x", got))
		}
	}
}
