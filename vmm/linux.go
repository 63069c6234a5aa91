package vmm

import (
	"fmt"
	"strings"

	"github.com/kindlingvm/kindling/vmm/boot"
)

// kernelCmdline is the configured command line plus the arguments that
// announce the VM's virtio-mmio devices.
func (m *Machine) kernelCmdline() string {
	args := []string{strings.TrimSpace(m.cfg.Cmdline)}
	for _, d := range m.virtioSlots() {
		args = append(args, d.cmdlineArg())
	}
	return strings.TrimSpace(strings.Join(args, " "))
}

// loadKernel loads the kernel and initrd and points the boot vCPU at the
// entry. The other vCPUs wait for INIT/SIPI from the guest, through the
// in-kernel LAPIC.
func (m *Machine) loadKernel() error {
	e, err := boot.Load(m.mem, boot.Config{Kernel: m.cfg.Kernel, Initrd: m.cfg.Initrd,
		Cmdline: m.kernelCmdline(), VCPUs: m.cfg.VCPUs})
	if err != nil {
		return err
	}
	bsp := m.vcpus[0]
	s, err := bsp.GetSregs()
	if err != nil {
		return err
	}
	e.ApplySregs(&s)
	if err := bsp.SetSregs(s); err != nil {
		return fmt.Errorf("boot vcpu: %w", err)
	}
	if err := bsp.SetRegs(e.Regs); err != nil {
		return fmt.Errorf("boot vcpu: %w", err)
	}
	m.log.Info("kernel loaded", "protocol", e.Protocol, "kernel", m.cfg.Kernel, "initrd", m.cfg.Initrd)
	return nil
}

// Check validates a config and its files without creating a VM: the config
// ranges, then the kernel and initrd as the loader would see them. The CLI
// calls it so bad input is one line from one place.
func Check(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Kernel == "" {
		return fmt.Errorf("no kernel given")
	}
	return boot.Check(boot.Config{Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cfg.Cmdline, VCPUs: cfg.VCPUs},
		cfg.MemoryMiB<<20)
}
