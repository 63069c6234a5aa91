package vmm

type virtioSlot struct{}

func (d *virtioSlot) close() {}

func (m *Machine) setupVirtio() error { return nil }
