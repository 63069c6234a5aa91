package boot

import (
	"fmt"
	"io"
	"os"

	"github.com/kindlingvm/kindling/vmm/memory"
)

// E820 memory types.
const (
	E820RAM      = 1
	E820Reserved = 2
)

// E820Entry is one range of the guest's memory map.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// E820Map is the memory map of a guest with size bytes of RAM: low RAM up
// to the EBDA, the EBDA and BIOS area reserved (the MP table is there),
// then RAM from 1 MiB around the MMIO hole.
func E820Map(size uint64) []E820Entry {
	m := []E820Entry{
		{Addr: 0, Size: ebdaStart, Type: E820RAM},
		{Addr: ebdaStart, Size: biosEnd - ebdaStart, Type: E820Reserved},
	}
	for _, r := range memory.Layout(size) {
		start := max(r.GPA, biosEnd)
		if end := r.GPA + r.Size; end > start {
			m = append(m, E820Entry{Addr: start, Size: end - start, Type: E820RAM})
		}
	}
	return m
}

// placeInitrd puts the initrd as high as it can go below the kernel's
// limit, page-aligned, above the kernel.
func placeInitrd(p *plan, img kernelImage) error {
	path := p.cfg.Initrd
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("initrd %s: %w", path, unwrapPath(err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("initrd %s: %w", path, err)
	}
	size := uint64(st.Size())
	if st.IsDir() || size == 0 {
		f.Close()
		return fmt.Errorf("initrd %s: empty or not a file", path)
	}
	top := img.initrdMax() &^ (memory.PageSize - 1)
	bottom := (img.end() + memory.PageSize - 1) &^ (memory.PageSize - 1)
	if top < bottom || size > top-bottom {
		f.Close()
		free := uint64(0)
		if top > bottom {
			free = top - bottom
		}
		return fmt.Errorf("initrd %s: %w: %d MiB does not fit in %d MiB of guest memory (%d MiB free above the kernel)",
			path, ErrTooBig, (size+(1<<20)-1)>>20, p.memSize>>20, free>>20)
	}
	p.initrd, p.initrdSize = f, size
	p.initrdAddr = (top - size) &^ (memory.PageSize - 1)
	return nil
}

// loadInitrd copies the initrd straight into guest memory.
func loadInitrd(mem *memory.Memory, p *plan) error {
	dst, err := mem.Slice(p.initrdAddr, p.initrdSize)
	if err != nil {
		return fmt.Errorf("initrd %s: %w", p.cfg.Initrd, err)
	}
	if _, err := io.ReadFull(p.initrd, dst); err != nil {
		return fmt.Errorf("initrd %s: %w", p.cfg.Initrd, err)
	}
	return nil
}

// writeCmdline writes the NUL-terminated command line.
func writeCmdline(mem *memory.Memory, cmdline string) error {
	return mem.WriteAt(append([]byte(cmdline), 0), cmdlineAddr)
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
