package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/snapshot"
	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// SnapshotInfo describes a snapshot just written.
type SnapshotInfo struct {
	Dir          string        `json:"dir"`
	MemoryBytes  uint64        `json:"memory_bytes"`
	WrittenBytes int64         `json:"written_bytes"` // non-zero pages
	Took         time.Duration `json:"took_ns"`
}

// Snapshot writes the paused VM to dir: the state file and the guest
// memory file (sparse). The VM stays paused.
func (m *Machine) Snapshot(dir string) (SnapshotInfo, error) {
	start := time.Now()
	st, err := m.CaptureState()
	if err != nil {
		return SnapshotInfo{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot: %w", err)
	}
	written, err := snapshot.WriteMemory(dir, m.mem.Bytes())
	if err != nil {
		return SnapshotInfo{}, err
	}
	// The state goes last: a directory with a state file is complete.
	if err := snapshot.WriteState(dir, st); err != nil {
		return SnapshotInfo{}, err
	}
	if err := m.startDirtyLog(dir); err != nil {
		return SnapshotInfo{}, err
	}
	info := SnapshotInfo{Dir: dir, MemoryBytes: m.mem.Size(), WrittenBytes: written, Took: time.Since(start)}
	m.log.Info("snapshot written", "dir", dir, "written_bytes", written, "took", info.Took)
	return info, nil
}

// startDirtyLog makes dir the base of the next diff snapshot: KVM logs the
// guest's writes to every slot from now on, and the memory accessor the
// VMM's own.
func (m *Machine) startDirtyLog(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if m.lastSnapshot == "" {
		for i, r := range m.mem.Regions() {
			if err := m.vm.SetUserMemoryRegion(uint32(i), kvm.MemLogDirtyPages, r.GPA, r.Size, m.mem.HostAddr(r)); err != nil {
				return fmt.Errorf("enable dirty logging: %w", err)
			}
		}
		m.mem.TrackHostWrites()
	}
	if _, err := m.takeDirty(); err != nil {
		return err
	}
	m.lastSnapshot = abs
	return nil
}

// takeDirty returns, and clears, the runs of memory (mapping order) the
// guest or the VMM wrote since the last call.
func (m *Machine) takeDirty() ([]snapshot.Run, error) {
	bits := m.mem.TakeHostDirty()
	for i, r := range m.mem.Regions() {
		pages := r.Size / memory.PageSize
		log := make([]uint64, (pages+63)/64)
		if err := m.vm.GetDirtyLog(uint32(i), log); err != nil {
			return nil, err
		}
		first := r.Offset / memory.PageSize
		for p := uint64(0); p < pages; p++ {
			if log[p/64]&(1<<(p%64)) != 0 {
				q := first + p
				bits[q/64] |= 1 << (q % 64)
			}
		}
	}
	var runs []snapshot.Run
	for q := uint64(0); q < m.mem.Size()/memory.PageSize; q++ {
		if bits[q/64]&(1<<(q%64)) == 0 {
			continue
		}
		off := q * memory.PageSize
		if k := len(runs) - 1; k >= 0 && runs[k].Offset+runs[k].Length == off {
			runs[k].Length += memory.PageSize
		} else {
			runs = append(runs, snapshot.Run{Offset: off, Length: memory.PageSize})
		}
	}
	return runs, nil
}

// ErrNoBase means a diff snapshot was asked for before any full one.
var ErrNoBase = errors.New("no base snapshot: take a full snapshot of this VM first")

// SnapshotDiff writes the paused VM to dir as a diff on top of the last
// snapshot it wrote: the full state, but only the memory pages written
// since (and their list). Restoring it needs the base directory too.
func (m *Machine) SnapshotDiff(dir string) (SnapshotInfo, error) {
	start := time.Now()
	if m.lastSnapshot == "" {
		return SnapshotInfo{}, ErrNoBase
	}
	st, err := m.CaptureState()
	if err != nil {
		return SnapshotInfo{}, err
	}
	st.Base = m.lastSnapshot
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot: %w", err)
	}
	runs, err := m.takeDirty()
	if err != nil {
		return SnapshotInfo{}, err
	}
	written, err := writeRuns(filepath.Join(dir, snapshot.MemoryFile), m.mem.Bytes(), runs)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if err := snapshot.WriteDirty(dir, runs); err != nil {
		return SnapshotInfo{}, err
	}
	if err := snapshot.WriteState(dir, st); err != nil {
		return SnapshotInfo{}, err
	}
	if m.lastSnapshot, err = filepath.Abs(dir); err != nil {
		return SnapshotInfo{}, err
	}
	info := SnapshotInfo{Dir: dir, MemoryBytes: m.mem.Size(), WrittenBytes: written, Took: time.Since(start)}
	m.log.Info("diff snapshot written", "dir", dir, "base", st.Base, "written_bytes", written, "took", info.Took)
	return info, nil
}

// writeRuns writes only runs of mem to a sparse file of mem's size.
func writeRuns(path string, mem []byte, runs []snapshot.Run) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	if err := f.Truncate(int64(len(mem))); err != nil {
		f.Close()
		return 0, err
	}
	var n int64
	for _, r := range runs {
		w, err := f.WriteAt(mem[r.Offset:r.Offset+r.Length], int64(r.Offset))
		n += int64(w)
		if err != nil {
			f.Close()
			return n, err
		}
	}
	return n, f.Close()
}

// maxDiffChain bounds how many diff snapshots a restore follows to their
// full base, against a directory that names itself.
const maxDiffChain = 64

// openMemoryChain maps the full snapshot at the root of dir's chain
// copy-on-write and lays every diff's changed pages over it, oldest first.
func openMemoryChain(dir string, st *MachineState, size uint64, depth int) (*memory.Memory, error) {
	if depth > maxDiffChain {
		return nil, fmt.Errorf("restore %s: diff snapshots chain for more than %d levels", dir, maxDiffChain)
	}
	if st.Base == "" {
		f, err := snapshot.OpenMemory(dir, size)
		if err != nil {
			return nil, err
		}
		mem, err := memory.MapFile(f, size, true)
		if err != nil {
			f.Close()
			return nil, err
		}
		return mem, nil
	}
	var base MachineState
	if err := snapshot.ReadState(st.Base, &base); err != nil {
		return nil, fmt.Errorf("diff snapshot %s: base: %w", dir, err)
	}
	if base.Config.MemoryMiB != st.Config.MemoryMiB {
		return nil, fmt.Errorf("diff snapshot %s: base %s has %d MiB of memory, the diff %d", dir, st.Base, base.Config.MemoryMiB, st.Config.MemoryMiB)
	}
	mem, err := openMemoryChain(st.Base, &base, size, depth+1)
	if err != nil {
		return nil, err
	}
	runs, err := snapshot.ReadDirty(dir, size)
	if err != nil {
		mem.Close()
		return nil, err
	}
	f, err := snapshot.OpenMemory(dir, size)
	if err != nil {
		mem.Close()
		return nil, err
	}
	defer f.Close()
	for _, r := range runs {
		if _, err := f.ReadAt(mem.Bytes()[r.Offset:r.Offset+r.Length], int64(r.Offset)); err != nil {
			mem.Close()
			return nil, fmt.Errorf("diff snapshot %s: %w", dir, err)
		}
	}
	return mem, nil
}

// RestoreOverrides replace a snapshot's host-specific settings.
type RestoreOverrides struct {
	// Disks, when set, replaces the disk paths (same count and order).
	Disks []Disk
	// Console, when set, replaces the console setting.
	Console string
	// VsockPath, when set, replaces the vsock device's Unix socket path
	// (the snapshotted VM may still hold the old one).
	VsockPath string
	// Net, when set, moves the network interfaces to other taps (same
	// count and order): a VM restored beside the original needs taps of
	// its own. A GuestMAC, if given, must be the snapshot's: the guest
	// keeps the address it has.
	Net []NetIface
	// Prefetch populates the snapshot's recorded working set (if it has
	// one) before the VM runs, instead of faulting each page in.
	Prefetch bool
}

// Restore creates a paused-equivalent VM (state created, ready to Start)
// from the snapshot in dir. Guest memory maps the memory file privately:
// pages load on first touch and writes never reach the file, so many VMs
// can restore from one snapshot.
func Restore(dir string, ov RestoreOverrides, opt Options) (*Machine, error) {
	var st MachineState
	if err := snapshot.ReadState(dir, &st); err != nil {
		return nil, err
	}
	cfg := st.Config
	if ov.Disks != nil {
		if len(ov.Disks) != len(cfg.Disks) {
			return nil, fmt.Errorf("restore %s: %d disk overrides for a VM with %d disks", dir, len(ov.Disks), len(cfg.Disks))
		}
		cfg.Disks = ov.Disks
	}
	if ov.Console != "" {
		cfg.Console = ov.Console
	}
	if ov.VsockPath != "" {
		if cfg.Vsock == nil {
			return nil, fmt.Errorf("restore %s: a vsock path override for a VM without vsock", dir)
		}
		v := *cfg.Vsock
		v.Path = ov.VsockPath
		cfg.Vsock = &v
	}
	if ov.Net != nil {
		nets, err := overrideNet(cfg.Net, ov.Net)
		if err != nil {
			return nil, fmt.Errorf("restore %s: %w", dir, err)
		}
		cfg.Net = nets
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("restore %s: %w", dir, err)
	}
	mem, err := openMemoryChain(dir, &st, cfg.MemoryMiB<<20, 0)
	if err != nil {
		return nil, err
	}
	if ov.Prefetch {
		runs, err := snapshot.ReadWorkingSet(dir, mem.Size())
		if err != nil {
			mem.Close()
			return nil, err
		}
		if err := mem.Populate(toMemoryRuns(runs)); err != nil {
			mem.Close()
			return nil, fmt.Errorf("restore %s: prefetch: %w", dir, err)
		}
	}
	m, err := create(cfg, opt, mem, false)
	if err != nil {
		var ue *cpuid.UnavailableError
		if errors.As(err, &ue) {
			return nil, fmt.Errorf("restore %s: %w: the snapshot's %v", dir, ErrIncompatible, err)
		}
		return nil, err
	}
	if err := m.applyState(&st); err != nil {
		m.Close()
		return nil, fmt.Errorf("restore %s: %w", dir, err)
	}
	return m, nil
}

// overrideNet puts the overrides' taps on the snapshot's interfaces.
func overrideNet(snap, ov []NetIface) ([]NetIface, error) {
	if len(ov) != len(snap) {
		return nil, fmt.Errorf("%d network interface overrides for a VM with %d network interfaces", len(ov), len(snap))
	}
	out := make([]NetIface, len(snap))
	for i, o := range ov {
		out[i] = snap[i]
		out[i].Tap = o.Tap
		if o.GuestMAC == "" {
			continue
		}
		want, err := snap[i].MAC(i)
		if err != nil {
			return nil, fmt.Errorf("network interface %d: snapshot's %w", i, err)
		}
		got, err := o.MAC(i)
		if err != nil {
			return nil, fmt.Errorf("network interface %d: %w", i, err)
		}
		if !bytes.Equal(got, want) {
			return nil, fmt.Errorf("network interface %d: guest MAC %v is not the snapshot's %v: the guest keeps the address it has", i, got, want)
		}
	}
	return out, nil
}

// RecordWorkingSet stores, beside the snapshot in dir that this VM was
// restored from, the guest pages it has touched so far; later restores
// with Prefetch populate them up front (REAP). It returns the page count.
func (m *Machine) RecordWorkingSet(dir string) (int, error) {
	res, err := m.mem.Resident()
	if err != nil {
		return 0, err
	}
	runs := make([]snapshot.Run, len(res))
	pages := 0
	for i, r := range res {
		runs[i] = snapshot.Run{Offset: r.Offset, Length: r.Length}
		pages += int(r.Length / memory.PageSize)
	}
	if err := snapshot.WriteWorkingSet(dir, runs); err != nil {
		return 0, err
	}
	m.log.Info("working set recorded", "dir", dir, "pages", pages, "runs", len(runs))
	return pages, nil
}

func toMemoryRuns(runs []snapshot.Run) []memory.Run {
	out := make([]memory.Run, len(runs))
	for i, r := range runs {
		out[i] = memory.Run{Offset: r.Offset, Length: r.Length}
	}
	return out
}
