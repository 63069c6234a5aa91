package vmm

import (
	"fmt"
	"os"
	"time"

	"github.com/kindlingvm/kindling/snapshot"
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
	info := SnapshotInfo{Dir: dir, MemoryBytes: m.mem.Size(), WrittenBytes: written, Took: time.Since(start)}
	m.log.Info("snapshot written", "dir", dir, "written_bytes", written, "took", info.Took)
	return info, nil
}

// RestoreOverrides replace a snapshot's host-specific settings.
type RestoreOverrides struct {
	// Disks, when set, replaces the disk paths (same count and order).
	Disks []Disk
	// Console, when set, replaces the console setting.
	Console string
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
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("restore %s: %w", dir, err)
	}
	f, err := snapshot.OpenMemory(dir, cfg.MemoryMiB<<20)
	if err != nil {
		return nil, err
	}
	mem, err := memory.MapFile(f, cfg.MemoryMiB<<20, true)
	if err != nil {
		f.Close()
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
		return nil, err
	}
	if err := m.applyState(&st); err != nil {
		m.Close()
		return nil, fmt.Errorf("restore %s: %w", dir, err)
	}
	return m, nil
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
