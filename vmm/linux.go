package vmm

import "errors"

func (m *Machine) loadKernel() error {
	return errors.New("booting a kernel is not wired into the machine yet")
}
