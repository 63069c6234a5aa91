package legacy

import "sync"

// i8042 placement and the one command Kindling acts on.
const (
	I8042DataPort    = 0x60
	I8042CommandPort = 0x64
	// cmdResetCPU pulses the CPU reset line; Linux's `reboot=k` path and
	// most hand-written guests use it to stop the machine.
	cmdResetCPU = 0xfe
	// cmdReadControl / cmdWriteControl access the controller's command byte.
	cmdReadControl  = 0x20
	cmdWriteControl = 0x60
	statusOutFull   = 0x01
)

// I8042 is the keyboard controller, reduced to what a keyboard-less microVM
// needs: a command byte and the reset line. Reset is called (once per
// command) from the vCPU thread that wrote the command.
type I8042 struct {
	mu      sync.Mutex
	reset   func()
	control uint8
	pending int // command awaiting a data byte (cmdWriteControl) or -1
	out     []uint8
}

// NewI8042 returns a controller that calls reset when the guest asks for a
// CPU reset.
func NewI8042(reset func()) *I8042 { return &I8042{reset: reset, pending: -1} }

// Port reports which of the controller's two ports an offset from
// I8042DataPort addresses; the VMM inserts the device at both ports.
type I8042Port struct {
	c    *I8042
	port uint16
}

// DataPort and CommandPort are the bus-facing windows.
func (c *I8042) DataPort() *I8042Port    { return &I8042Port{c: c, port: I8042DataPort} }
func (c *I8042) CommandPort() *I8042Port { return &I8042Port{c: c, port: I8042CommandPort} }

// Read implements devices.Device.
func (p *I8042Port) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 {
		return
	}
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.port == I8042CommandPort {
		if len(c.out) > 0 {
			data[0] = statusOutFull
		}
		return
	}
	if len(c.out) > 0 {
		data[0] = c.out[0]
		c.out = c.out[1:]
	}
}

// Write implements devices.Device.
func (p *I8042Port) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	c := p.c
	v := data[0]
	c.mu.Lock()
	doReset := false
	if p.port == I8042CommandPort {
		c.pending = -1
		switch v {
		case cmdResetCPU:
			doReset = true
		case cmdReadControl:
			c.out = append(c.out[:0], c.control)
		case cmdWriteControl:
			c.pending = int(v)
		}
	} else if c.pending == cmdWriteControl {
		c.control = v
		c.pending = -1
	}
	c.mu.Unlock()
	if doReset && c.reset != nil {
		c.reset()
	}
}
