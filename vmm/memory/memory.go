// Package memory is guest physical memory: one host mapping split into
// regions around the 32-bit MMIO hole, and the only accessor device code may
// use to reach it. Every access is bounds-checked and returns an error; guest
// addresses are attacker-controlled, so nothing here panics on them.
package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Layout constants for x86-64 guests.
const (
	PageSize = 4096

	// MMIOHoleStart..4 GiB holds no RAM: the IOAPIC (0xfec00000), the LAPIC
	// (0xfee00000) and Kindling's virtio-mmio windows live there. 3 GiB is
	// where QEMU's microvm and Firecracker start their holes too.
	MMIOHoleStart uint64 = 0xc000_0000
	MMIOHoleEnd   uint64 = 1 << 32

	// MinSize is the smallest guest Kindling boots: below 1 MiB there is no
	// room for the kernel above the real-mode area.
	MinSize uint64 = 2 << 20
	// MaxSize bounds guest RAM at 1 TiB, far above any function's need but
	// well below x86-64's 48-bit guest physical limit.
	MaxSize uint64 = 1 << 40
)

// ErrOutOfRange is returned for any access outside guest RAM.
var ErrOutOfRange = errors.New("guest address out of range")

// Region is a run of guest RAM backed by a contiguous part of the mapping.
type Region struct {
	GPA    uint64 // guest physical start
	Size   uint64
	Offset uint64 // offset in the host mapping and backing file
}

// Memory is guest RAM. Its methods are safe for concurrent use; the bytes
// themselves are shared with the guest and change under the caller's feet.
type Memory struct {
	mem     []byte
	regions []Region
	file    *os.File // memfd or snapshot file; nil for anonymous memory
	fence   atomic.Uint32
	// hostDirty, when tracking is on, has a bit per page (mapping order)
	// the VMM may have written: KVM's dirty log sees only the guest's own
	// writes, not a device's.
	hostDirty []atomic.Uint64
	tracking  atomic.Bool
}

// Options selects the backing of new guest memory.
type Options struct {
	// Memfd backs memory with a memfd so a snapshot can read it without
	// copying and later VMs can map it; otherwise memory is anonymous.
	Memfd bool
}

// Layout splits size bytes of RAM around the MMIO hole.
func Layout(size uint64) []Region {
	if size <= MMIOHoleStart {
		return []Region{{GPA: 0, Size: size, Offset: 0}}
	}
	return []Region{
		{GPA: 0, Size: MMIOHoleStart, Offset: 0},
		{GPA: MMIOHoleEnd, Size: size - MMIOHoleStart, Offset: MMIOHoleStart},
	}
}

// CheckSize reports whether size is a usable guest RAM size.
func CheckSize(size uint64) error {
	switch {
	case size < MinSize:
		return fmt.Errorf("guest memory %d MiB is below the minimum of %d MiB", size>>20, MinSize>>20)
	case size > MaxSize:
		return fmt.Errorf("guest memory %d GiB is above the maximum of %d GiB", size>>30, MaxSize>>30)
	case size%PageSize != 0:
		return fmt.Errorf("guest memory %d bytes is not a multiple of the %d-byte page", size, PageSize)
	}
	return nil
}

// New allocates size bytes of zeroed guest RAM.
func New(size uint64, opt Options) (*Memory, error) {
	if err := CheckSize(size); err != nil {
		return nil, err
	}
	m := &Memory{regions: Layout(size)}
	var err error
	if opt.Memfd {
		fd, err := unix.MemfdCreate("kindling-guest-ram", unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("memfd_create for guest memory: %w", err)
		}
		m.file = os.NewFile(uintptr(fd), "kindling-guest-ram")
		if err := m.file.Truncate(int64(size)); err != nil {
			m.file.Close()
			return nil, fmt.Errorf("size guest memory memfd to %d bytes: %w", size, err)
		}
		m.mem, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		if err != nil {
			m.file.Close()
			return nil, fmt.Errorf("mmap %d bytes of guest memory: %w", size, err)
		}
	} else {
		m.mem, err = unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return nil, fmt.Errorf("mmap %d bytes of guest memory: %w", size, err)
		}
	}
	// Guest RAM is not worth a core dump and must not be inherited.
	_ = unix.Madvise(m.mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(m.mem, unix.MADV_DONTFORK)
	return m, nil
}

// MapFile maps an existing memory image of size bytes from f. With private
// set the mapping is copy-on-write: pages load on first touch and guest
// writes never reach the file. Memory takes ownership of f.
func MapFile(f *os.File, size uint64, private bool) (*Memory, error) {
	if err := CheckSize(size); err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat memory file %s: %w", f.Name(), err)
	}
	if uint64(st.Size()) != size {
		return nil, fmt.Errorf("memory file %s has %d bytes, want %d", f.Name(), st.Size(), size)
	}
	flags := unix.MAP_SHARED
	if private {
		flags = unix.MAP_PRIVATE
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, flags|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap memory file %s: %w", f.Name(), err)
	}
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(mem, unix.MADV_DONTFORK)
	return &Memory{mem: mem, regions: Layout(size), file: f}, nil
}

// Close unmaps guest memory. No accessor may be used afterwards.
func (m *Memory) Close() error {
	var err error
	if m.mem != nil {
		err = unix.Munmap(m.mem)
		m.mem = nil
	}
	if m.file != nil {
		if cerr := m.file.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// Size is the amount of guest RAM in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.mem)) }

// Regions lists the RAM regions in guest physical order.
func (m *Memory) Regions() []Region { return append([]Region(nil), m.regions...) }

// HostAddr is the host virtual address of region r, for KVM registration.
func (m *Memory) HostAddr(r Region) uintptr {
	return uintptr(unsafe.Pointer(&m.mem[r.Offset]))
}

// Bytes is the whole host mapping, in backing-file order (region offsets).
// Only snapshot code uses it, to write the memory file.
func (m *Memory) Bytes() []byte { return m.mem }

// File is the backing memfd or file, or nil for anonymous memory.
func (m *Memory) File() *os.File { return m.file }

// offset translates [gpa, gpa+n) to an offset in the mapping. The whole
// range must lie in one region.
func (m *Memory) offset(gpa, n uint64) (uint64, error) {
	for _, r := range m.regions {
		if gpa >= r.GPA && gpa-r.GPA < r.Size {
			if n > r.Size-(gpa-r.GPA) {
				break
			}
			return r.Offset + (gpa - r.GPA), nil
		}
	}
	return 0, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, gpa, n)
}

// Slice returns the n bytes at gpa, aliasing guest memory. The caller may
// write them, so with dirty tracking on they count as written.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	off, err := m.offset(gpa, n)
	if err != nil {
		return nil, err
	}
	if m.tracking.Load() && n > 0 {
		for p := off / PageSize; p <= (off+n-1)/PageSize; p++ {
			m.hostDirty[p/64].Or(1 << (p % 64))
		}
	}
	return m.mem[off : off+n : off+n], nil
}

// view is Slice for reads: it never marks pages dirty.
func (m *Memory) view(gpa, n uint64) ([]byte, error) {
	off, err := m.offset(gpa, n)
	if err != nil {
		return nil, err
	}
	return m.mem[off : off+n : off+n], nil
}

// TrackHostWrites starts (or restarts) recording the pages the VMM writes
// through Slice and the Write methods, for diff snapshots.
func (m *Memory) TrackHostWrites() {
	if m.hostDirty == nil {
		m.hostDirty = make([]atomic.Uint64, (uint64(len(m.mem))/PageSize+63)/64)
	}
	for i := range m.hostDirty {
		m.hostDirty[i].Store(0)
	}
	m.tracking.Store(true)
}

// TakeHostDirty returns the bitmap of pages written since tracking began
// or the last call (a bit per page in mapping order), and clears it.
func (m *Memory) TakeHostDirty() []uint64 {
	out := make([]uint64, len(m.hostDirty))
	for i := range m.hostDirty {
		out[i] = m.hostDirty[i].Swap(0)
	}
	return out
}

// Check reports whether [gpa, gpa+n) is guest RAM.
func (m *Memory) Check(gpa, n uint64) error {
	_, err := m.offset(gpa, n)
	return err
}

// ReadAt copies len(p) bytes at gpa into p.
func (m *Memory) ReadAt(p []byte, gpa uint64) error {
	s, err := m.view(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WriteAt copies p into guest memory at gpa.
func (m *Memory) WriteAt(p []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

// Fence orders the guest-memory accesses before it against those after it,
// both for the compiler and the CPU (an atomic read-modify-write is a full
// barrier on x86-64). Virtqueue code uses it where the virtio spec asks for
// a memory barrier.
func (m *Memory) Fence() { m.fence.Add(1) }

// ReadU16 reads a little-endian uint16; an aligned one in a single access,
// as the virtio spec needs for ring indices the guest updates concurrently.
func (m *Memory) ReadU16(gpa uint64) (uint16, error) {
	s, err := m.view(gpa, 2)
	if err != nil {
		return 0, err
	}
	if gpa%2 == 0 {
		return *(*uint16)(unsafe.Pointer(&s[0])), nil
	}
	return binary.LittleEndian.Uint16(s), nil
}

// WriteU16 writes a little-endian uint16, aligned ones in a single access.
func (m *Memory) WriteU16(gpa uint64, v uint16) error {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return err
	}
	if gpa%2 == 0 {
		*(*uint16)(unsafe.Pointer(&s[0])) = v
		return nil
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

// ReadU32 reads a little-endian uint32.
func (m *Memory) ReadU32(gpa uint64) (uint32, error) {
	s, err := m.view(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// WriteU32 writes a little-endian uint32.
func (m *Memory) WriteU32(gpa uint64, v uint32) error {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

// ReadU64 reads a little-endian uint64.
func (m *Memory) ReadU64(gpa uint64) (uint64, error) {
	s, err := m.view(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// WriteU64 writes a little-endian uint64.
func (m *Memory) WriteU64(gpa uint64, v uint64) error {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}
