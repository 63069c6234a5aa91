package vmm

import (
	"encoding/hex"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// ExitKind says why a VM stopped.
type ExitKind string

const (
	// ExitGuestReset: the guest pulsed the i8042 reset line (Linux
	// `reboot`, with reboot=k) or KVM reported a reset system event.
	ExitGuestReset ExitKind = "guest-reset"
	// ExitGuestShutdown: the guest powered off (KVM shutdown system event).
	ExitGuestShutdown ExitKind = "guest-shutdown"
	// ExitTripleFault: the guest faulted while delivering a double fault.
	ExitTripleFault ExitKind = "triple-fault"
	// ExitGuestCrash: the guest reported a crash (KVM crash system event).
	ExitGuestCrash ExitKind = "guest-crash"
	// ExitInternalError: KVM could not run the guest (most often an
	// instruction its emulator does not implement).
	ExitInternalError ExitKind = "internal-error"
	// ExitFailEntry: the hardware refused to enter the guest.
	ExitFailEntry ExitKind = "fail-entry"
	// ExitVCPUError: a KVM call failed, or the guest exited in a way the
	// VMM does not handle.
	ExitVCPUError ExitKind = "vcpu-error"
	// ExitHostStop: the host asked the VM to stop (API or signal).
	ExitHostStop ExitKind = "host-stop"
)

// ExitReason is the typed reason a VM stopped.
type ExitReason struct {
	Kind    ExitKind `json:"kind"`
	Message string   `json:"message"`
	VCPU    int      `json:"vcpu"`
	// For internal errors and triple faults: where the guest was.
	RIP      uint64 `json:"rip,omitempty"`
	Suberror uint32 `json:"suberror,omitempty"`
	// Instruction holds the bytes at RIP in hex, and Disassembly their
	// decoding, when they could be read from guest memory.
	Instruction string `json:"instruction,omitempty"`
	Disassembly string `json:"disassembly,omitempty"`
}

// Clean reports whether the guest or the host ended the VM on purpose.
func (r ExitReason) Clean() bool {
	switch r.Kind {
	case ExitGuestReset, ExitGuestShutdown, ExitHostStop:
		return true
	}
	return false
}

func (r ExitReason) String() string {
	s := fmt.Sprintf("%s (vcpu %d): %s", r.Kind, r.VCPU, r.Message)
	if r.Instruction != "" {
		s += fmt.Sprintf("; at rip %#x: %s", r.RIP, r.Instruction)
		if r.Disassembly != "" {
			s += " = " + r.Disassembly
		}
	}
	return s
}

// internalErrorText names KVM's internal error suberrors.
func internalErrorText(sub uint32) string {
	switch sub {
	case 1:
		return "instruction emulation failed"
	case 2:
		return "exception while delivering another exception"
	case 3:
		return "exception during event delivery"
	case 4:
		return "unexpected exit reason from hardware"
	}
	return fmt.Sprintf("suberror %d", sub)
}

// describeInstruction fills the instruction fields from code read at RIP.
// mode is the CPU mode in bits (16, 32 or 64).
func (r *ExitReason) describeInstruction(code []byte, mode int) {
	if len(code) == 0 {
		return
	}
	r.Instruction = hex.EncodeToString(code)
	if inst, err := x86asm.Decode(code, mode); err == nil {
		r.Instruction = hex.EncodeToString(code[:inst.Len])
		r.Disassembly = x86asm.GNUSyntax(inst, r.RIP, nil)
	}
}
