package snapshot

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// WorkingSetFile holds the guest pages a restored VM touched in its first
// run, as runs of pages: later restores populate them up front (REAP,
// ASPLOS'21) instead of taking a fault for each.
const WorkingSetFile = "workingset"

// DirtyFile, in a diff snapshot, lists the runs of the memory file that
// hold changed pages; every other page comes from the base snapshot. (A
// changed page may be all zeros, so holes cannot say which changed.)
const DirtyFile = "dirty"

// Run files open with a magic; the layout is magic (8), run count (8),
// CRC-32C of the runs (4), padding (4), then (offset, length) byte pairs.
const (
	workingSetMagic = "KDLGWSET"
	dirtyMagic      = "KDLGDIRT"
)

// Run is a range of the memory file, in bytes, page-aligned.
type Run struct {
	Offset, Length uint64
}

// WriteWorkingSet stores runs beside the snapshot in dir.
func WriteWorkingSet(dir string, runs []Run) error {
	return writeRuns(dir, WorkingSetFile, workingSetMagic, runs)
}

// ReadWorkingSet loads dir's working set and checks every run lies inside a
// memory file of memSize bytes. A missing file is (nil, nil).
func ReadWorkingSet(dir string, memSize uint64) ([]Run, error) {
	return readRuns(dir, WorkingSetFile, workingSetMagic, memSize)
}

// WriteDirty stores a diff snapshot's changed runs.
func WriteDirty(dir string, runs []Run) error {
	return writeRuns(dir, DirtyFile, dirtyMagic, runs)
}

// ReadDirty loads a diff snapshot's changed runs; a diff snapshot without
// the file is an error.
func ReadDirty(dir string, memSize uint64) ([]Run, error) {
	runs, err := readRuns(dir, DirtyFile, dirtyMagic, memSize)
	if err == nil && runs == nil {
		if _, serr := os.Stat(filepath.Join(dir, DirtyFile)); serr != nil {
			return nil, fmt.Errorf("diff snapshot %s: %w: no %s file", dir, ErrTruncated, DirtyFile)
		}
	}
	return runs, err
}

func writeRuns(dir, name, magic string, runs []Run) error {
	body := make([]byte, 16*len(runs))
	for i, r := range runs {
		binary.LittleEndian.PutUint64(body[16*i:], r.Offset)
		binary.LittleEndian.PutUint64(body[16*i+8:], r.Length)
	}
	h := make([]byte, 24)
	copy(h, magic)
	binary.LittleEndian.PutUint64(h[8:], uint64(len(runs)))
	binary.LittleEndian.PutUint32(h[16:], crc32.Checksum(body, castagnoli))
	f, err := os.CreateTemp(dir, name+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(h, body...)); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, name))
}

func readRuns(dir, name, magic string, memSize uint64) ([]Run, error) {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) < 24 || string(b[:8]) != magic {
		return nil, fmt.Errorf("%s: %w (bad header)", path, ErrCorrupt)
	}
	n := binary.LittleEndian.Uint64(b[8:])
	body := b[24:]
	if n > uint64(len(body))/16 || uint64(len(body)) != 16*n {
		return nil, fmt.Errorf("%s: %w: %d runs in %d bytes", path, ErrTruncated, n, len(body))
	}
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[16:]) {
		return nil, fmt.Errorf("%s: %w: checksum", path, ErrCorrupt)
	}
	runs := make([]Run, n)
	for i := range runs {
		r := Run{Offset: binary.LittleEndian.Uint64(body[16*i:]), Length: binary.LittleEndian.Uint64(body[16*i+8:])}
		if r.Offset%pageSize != 0 || r.Length%pageSize != 0 || r.Offset > memSize || r.Length > memSize-r.Offset {
			return nil, fmt.Errorf("%s: %w: run %#x+%#x outside a %d-byte memory file", path, ErrCorrupt, r.Offset, r.Length, memSize)
		}
		runs[i] = r
	}
	return runs, nil
}
