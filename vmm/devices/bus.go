// Package devices routes guest port I/O and MMIO accesses to device models.
// A Bus is built once, before the first vCPU runs, and is read-only
// afterwards, so lookups take no lock; devices guard their own state.
package devices

import (
	"fmt"
	"sort"
)

// Device is a device model's I/O window. offset is relative to the base the
// device was inserted at; len(data) is the access size (1, 2, 4 or 8).
// Neither method may panic, whatever the guest does.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

type busEntry struct {
	base, size uint64
	name       string
	dev        Device
}

// Bus maps address ranges to devices.
type Bus struct {
	entries []busEntry
}

// Insert adds dev at [base, base+size). Overlaps are refused.
func (b *Bus) Insert(name string, base, size uint64, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("device %s: bad window %#x+%#x", name, base, size)
	}
	for _, e := range b.entries {
		if base < e.base+e.size && e.base < base+size {
			return fmt.Errorf("device %s at %#x+%#x overlaps %s at %#x+%#x", name, base, size, e.name, e.base, e.size)
		}
	}
	b.entries = append(b.entries, busEntry{base: base, size: size, name: name, dev: dev})
	sort.Slice(b.entries, func(i, j int) bool { return b.entries[i].base < b.entries[j].base })
	return nil
}

func (b *Bus) find(addr uint64, n int) (*busEntry, bool) {
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base+b.entries[i].size > addr })
	if i == len(b.entries) {
		return nil, false
	}
	e := &b.entries[i]
	if addr < e.base || addr+uint64(n) > e.base+e.size {
		return nil, false
	}
	return e, true
}

// Read dispatches a read; it reports false when no device claims the range.
func (b *Bus) Read(addr uint64, data []byte) bool {
	e, ok := b.find(addr, len(data))
	if !ok {
		return false
	}
	e.dev.Read(addr-e.base, data)
	return true
}

// Write dispatches a write; it reports false when no device claims the range.
func (b *Bus) Write(addr uint64, data []byte) bool {
	e, ok := b.find(addr, len(data))
	if !ok {
		return false
	}
	e.dev.Write(addr-e.base, data)
	return true
}
