package virtio_test

import (
	"testing"

	"github.com/kindlingvm/kindling/vmm/devices/virtio"
)

func TestCmdlineArg(t *testing.T) {
	cases := []struct {
		base, size uint64
		irq        uint32
		want       string
	}{
		{0xd0000000, 0x1000, 5, "virtio_mmio.device=4K@0xd0000000:5"},
		{0xd0001000, virtio.WindowSize, 6, "virtio_mmio.device=4K@0xd0001000:6"},
		{0xc0000000, 2 << 20, 12, "virtio_mmio.device=2M@0xc0000000:12"},
		{0x100000000, 1 << 30, 23, "virtio_mmio.device=1G@0x100000000:23"},
		{0xd0000000, 0x200, 5, "virtio_mmio.device=512@0xd0000000:5"},
	}
	for _, c := range cases {
		if got := virtio.CmdlineArg(c.base, c.size, c.irq); got != c.want {
			t.Errorf("CmdlineArg(%#x, %#x, %d) = %q, want %q", c.base, c.size, c.irq, got, c.want)
		}
	}
}
