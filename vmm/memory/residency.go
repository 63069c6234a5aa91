package memory

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Run is a range of the mapping, in bytes from its start.
type Run struct {
	Offset, Length uint64
}

// Resident returns the runs of pages this process has mapped in the guest
// memory mapping: the pages the guest (or a device) touched since it was
// mapped. It reads the present bits of /proc/self/pagemap.
func (m *Memory) Resident() ([]Run, error) {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return nil, fmt.Errorf("resident guest pages: %w", err)
	}
	defer f.Close()
	base := uint64(uintptr(unsafe.Pointer(&m.mem[0])))
	pages := uint64(len(m.mem)) / PageSize
	const batch = 64 << 10 // pages per read: 512 KiB of pagemap
	buf := make([]byte, 8*batch)
	var runs []Run
	for first := uint64(0); first < pages; first += batch {
		n := min(batch, pages-first)
		if _, err := f.ReadAt(buf[:8*n], int64((base/PageSize+first)*8)); err != nil {
			return nil, fmt.Errorf("resident guest pages: %w", err)
		}
		for i := uint64(0); i < n; i++ {
			if binary.LittleEndian.Uint64(buf[8*i:])&(1<<63) == 0 {
				continue
			}
			off := (first + i) * PageSize
			if k := len(runs) - 1; k >= 0 && runs[k].Offset+runs[k].Length == off {
				runs[k].Length += PageSize
			} else {
				runs = append(runs, Run{Offset: off, Length: PageSize})
			}
		}
	}
	return runs, nil
}

// Populate maps the given runs in now, so the guest's first touches do not
// fault to the file. MADV_POPULATE_READ (Linux 5.14) maps pages without
// dirtying them; older kernels get MADV_WILLNEED's read-ahead instead.
func (m *Memory) Populate(runs []Run) error {
	for _, r := range runs {
		if r.Offset > uint64(len(m.mem)) || r.Length > uint64(len(m.mem))-r.Offset {
			return fmt.Errorf("populate %#x+%#x: %w", r.Offset, r.Length, ErrOutOfRange)
		}
		b := m.mem[r.Offset : r.Offset+r.Length]
		if err := unix.Madvise(b, unix.MADV_POPULATE_READ); err != nil {
			if err := unix.Madvise(b, unix.MADV_WILLNEED); err != nil {
				return fmt.Errorf("populate %#x+%#x: %w", r.Offset, r.Length, err)
			}
		}
	}
	return nil
}
