// Package echoguest builds the echo guest: a freestanding PVH kernel of a
// few kilobytes that speaks the guest agent's framing over virtio-vsock,
// so the microVM backend can run end to end on hosts where a Linux guest's
// user space cannot (PVM hosts; HOST.md).
//
// The guest (guest/entry.S, guest/echo.c) switches to long mode and drops
// to CPL 3 at once, since kernel mode may be emulated (the only CPL 0 work
// afterwards is its #GP handler turning HLT into a sleep and doing OUT for
// COM1 logging, and the interrupt handler that wakes it); there it finds the
// virtio-vsock device on the virtio-mmio bus, connects to the host (CID 2)
// on port 1024 and answers frames: "hello" with "ready", "invoke" with a
// "response" of the same id echoing the body, and the body RandomOp with
// 16 hex digits drawn from the TSC and the hello's entropy seed. The
// bodies FloodLogsOp and FloodGarbageOp make it a bad guest, to test the
// host's defences. It connects again whenever its connection ends,
// including after the transport-reset event a restored VM gets (and a
// flood ends with its connection).
//
// It also models a task with SnapStart hooks, for warm snapshots: a
// "checkpoint" frame runs its before-snapshot hook (it answers with a
// "checkpoint" frame and an empty body, after which the host may cut the
// snapshot), and the next "hello", a restored VM's, runs its after-restore
// hook and is answered with "restored" instead of "ready". It keeps a log
// of its last MaxEvents events (EventInvokePrefix and the id of every
// invocation, EventBeforeSnapshot, EventAfterRestore), which the body
// EventsOp reads; the body HangCheckpointOp makes its before-snapshot hook
// hang, so checkpoints go unanswered and the host must give up at its
// deadline.
//
// It needs one vCPU, MinMemoryMiB of memory and no initrd; its command
// line only needs what the VMM appends (the virtio_mmio.device= entries);
// see the Arg constants for its own switches.
//
// Build compiles it with the system's gcc and ld every time it is called;
// this package is for tests, benchmarks and demos, never for the VMM.
package echoguest

import (
	"bytes"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/kindlingvm/kindling/rootfs"
)

//go:embed guest/entry.S guest/echo.c guest/link.ld
var sources embed.FS

// Port is the host vsock port the guest connects to by default: the guest
// agent's (agent/host microVMGuestCID, cmd/kindling-init DefaultPort).
const Port = 1024

// RandomOp is the invocation body the guest answers with 16 hex digits of
// fresh randomness instead of an echo.
const RandomOp = `{"op":"random"}`

// FloodLogsOp is the invocation body the guest never answers: it sends
// log frames instead (stream stdout, 1000 bytes of "flood " each, 60 to a
// packet) as fast as the host's credit allows, and drops what the host
// sends, until the connection ends.
const FloodLogsOp = `{"op":"flood-logs"}`

// FloodGarbageOp is the invocation body the guest never answers: it sends
// the head of a log frame declaring a body of 4 GiB less 16 bytes (above
// the protocol's limits, guest.MaxPayload and guest.MaxLogLine), then
// random bytes that are not frames, as fast as the host's credit allows,
// until the connection ends.
const FloodGarbageOp = `{"op":"flood-garbage"}`

// FloodDeclaredBytes is the body length FloodGarbageOp's frame declares.
const FloodDeclaredBytes = 0xfffffff0

// EventsOp is the invocation body the guest answers with its event log,
// oldest event first, one a line (joined by "\n"): at most MaxEvents
// events, the last of them this invocation's own.
const EventsOp = `{"op":"events"}`

// HangCheckpointOp is the invocation body the guest answers with "ok",
// and after which it consumes every checkpoint frame and never answers
// it (a before-snapshot hook that hangs), while still answering
// invocations, for the rest of its life (and its snapshots').
const HangCheckpointOp = `{"op":"hang-checkpoint"}`

// The events in the guest's log (EventsOp), each at most MaxEventBytes.
const (
	// EventInvokePrefix and an invocation's id are logged for every
	// invoke frame the guest reads (not those a flood drops): the id
	// unescaped, truncated at a whole character to fit MaxEventBytes,
	// control characters turned to '?'.
	EventInvokePrefix = "invoke:"
	// EventBeforeSnapshot is logged when the guest answers a checkpoint
	// frame (not when HangCheckpointOp makes it hang).
	EventBeforeSnapshot = "before-snapshot"
	// EventAfterRestore is logged when the guest answers the first hello
	// after a checkpoint with "restored": the hello of a VM restored from
	// a snapshot cut after the checkpoint (or, if the host cut none, of
	// the original VM's next connection). Later hellos get "ready".
	EventAfterRestore = "after-restore"
)

// MaxEvents is how many events the guest's log keeps (a ring: older
// ones are forgotten), and MaxEventBytes the longest event.
const (
	MaxEvents     = 32
	MaxEventBytes = 48
)

// Command-line switches the guest reads.
const (
	// DebugArg logs connection events (connected, hello, reset) on COM1.
	// Each byte is a VM exit, so leave it off where latency matters.
	DebugArg = "echoguest.debug"
	// PollArg keeps the guest polling when idle instead of sleeping until
	// an interrupt: lower latency, one host CPU busy per VM.
	PollArg = "echoguest.poll"
	// PortArg sets the host port, as PortArg + "=N".
	PortArg = "echoguest.port"
)

// MinMemoryMiB is the least guest memory the echo guest runs in: it loads
// at 1 MiB and its buffers (an 8 MiB receive buffer, the largest frame
// and then some) take it to about 10 MiB.
const MinMemoryMiB = 16

// ELFName is the file Build writes in its directory.
const ELFName = "echoguest.elf"

// cflags build code that runs with no libc, no SSE state set up, no
// stack protector and no CET, linked at a fixed address.
var cflags = []string{"-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-fno-pie", "-mno-red-zone",
	"-mgeneral-regs-only", "-fno-stack-protector", "-fcf-protection=none", "-fno-asynchronous-unwind-tables",
	"-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"}

// Available reports whether the tools Build needs are installed, and why
// not.
func Available() error {
	for _, tool := range []string{"gcc", "ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("echo guest: %s not found: install build-essential (`make setup` does)", tool)
		}
	}
	return nil
}

// Build compiles the echo guest in dir (its sources and objects stay
// there) and returns the path of the PVH ELF kernel.
func Build(dir string) (kernelPath string, err error) {
	if err := Available(); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("echo guest: %w", err)
	}
	for _, name := range []string{"entry.S", "echo.c", "link.ld"} {
		b, err := sources.ReadFile("guest/" + name)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return "", fmt.Errorf("echo guest: %w", err)
		}
	}
	out := filepath.Join(dir, ELFName)
	steps := [][]string{
		append(append([]string{"gcc"}, cflags...), "-c", "-o", "echo.o", "echo.c"),
		{"gcc", "-c", "-o", "entry.o", "entry.S"},
		{"ld", "-m", "elf_x86_64", "-nostdlib", "-static", "--build-id=none", "-z", "noexecstack",
			"-z", "max-page-size=4096", "-T", "link.ld", "-o", ELFName, "entry.o", "echo.o"},
	}
	for _, s := range steps {
		var msg bytes.Buffer
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = &msg, &msg
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("echo guest: %s: %v\n%s", s[0], err, msg.String())
		}
	}
	return out, nil
}

// BuildImage builds the guest and packs it as a kernel-only task image in
// dir/echo-image, as kindlingd's microVM backend runs it, and returns
// the image and its manifest's digest (what RegisterFunction wants).
func BuildImage(dir string) (image, manifestSHA string, err error) {
	kernel, err := Build(dir)
	if err != nil {
		return "", "", err
	}
	image = filepath.Join(dir, "echo-image")
	if _, err := rootfs.BuildKernelImage(kernel, "", image); err != nil {
		return "", "", fmt.Errorf("echo guest image: %w", err)
	}
	if manifestSHA, err = rootfs.ManifestDigest(image); err != nil {
		return "", "", fmt.Errorf("echo guest image: %w", err)
	}
	return image, manifestSHA, nil
}
