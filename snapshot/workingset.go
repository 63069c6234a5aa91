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

// workingSetMagic opens the file; the layout is magic (8), run count (8),
// CRC-32C of the runs (4), padding (4), then (offset, length) byte pairs.
const workingSetMagic = "KDLGWSET"

// Run is a range of the memory file, in bytes, page-aligned.
type Run struct {
	Offset, Length uint64
}

// WriteWorkingSet stores runs beside the snapshot in dir.
func WriteWorkingSet(dir string, runs []Run) error {
	body := make([]byte, 16*len(runs))
	for i, r := range runs {
		binary.LittleEndian.PutUint64(body[16*i:], r.Offset)
		binary.LittleEndian.PutUint64(body[16*i+8:], r.Length)
	}
	h := make([]byte, 24)
	copy(h, workingSetMagic)
	binary.LittleEndian.PutUint64(h[8:], uint64(len(runs)))
	binary.LittleEndian.PutUint32(h[16:], crc32.Checksum(body, castagnoli))
	f, err := os.CreateTemp(dir, WorkingSetFile+".tmp-")
	if err != nil {
		return fmt.Errorf("write working set: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(h, body...)); err != nil {
		f.Close()
		return fmt.Errorf("write working set: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, WorkingSetFile))
}

// ReadWorkingSet loads dir's working set and checks every run lies inside a
// memory file of memSize bytes. A missing file is (nil, nil).
func ReadWorkingSet(dir string, memSize uint64) ([]Run, error) {
	path := filepath.Join(dir, WorkingSetFile)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) < 24 || string(b[:8]) != workingSetMagic {
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
