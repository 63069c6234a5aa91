package virtio

import "fmt"

// CmdlineArg renders the kernel command-line parameter that announces a
// virtio-mmio device to Linux (drivers/virtio/virtio_mmio.c, "device="
// parameter): <size>@<base>:<irq>, size in the memparse format with a
// K/M/G suffix when it divides evenly, for example
// "virtio_mmio.device=4K@0xd0000000:5".
func CmdlineArg(base, size uint64, irq uint32) string {
	return fmt.Sprintf("virtio_mmio.device=%s@%#x:%d", memparseSize(size), base, irq)
}

func memparseSize(n uint64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"G", 30}, {"M", 20}, {"K", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.suffix)
		}
	}
	return fmt.Sprintf("%d", n)
}
