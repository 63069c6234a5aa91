package snapshot

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"
)

// pageSize is the granularity of holes in the memory file.
const pageSize = 4096

// WriteMemory writes guest memory (the whole mapping, in backing-file
// order) to dir's memory file. Zero pages are left as holes, so the file
// costs disk only for the pages the guest used.
func WriteMemory(dir string, mem []byte) (written int64, err error) {
	f, err := os.CreateTemp(dir, MemoryFile+".tmp-")
	if err != nil {
		return 0, fmt.Errorf("write snapshot memory: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Truncate(int64(len(mem))); err != nil {
		return 0, fmt.Errorf("write snapshot memory: %w", err)
	}
	// Coalesce runs of non-zero pages into one write each.
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		n, err := f.WriteAt(mem[start:end], int64(start))
		written += int64(n)
		start = -1
		return err
	}
	for off := 0; off < len(mem); off += pageSize {
		end := min(off+pageSize, len(mem))
		if isZero(mem[off:end]) {
			if err := flush(off); err != nil {
				return written, fmt.Errorf("write snapshot memory: %w", err)
			}
			continue
		}
		if start < 0 {
			start = off
		}
	}
	if err := flush(len(mem)); err != nil {
		return written, fmt.Errorf("write snapshot memory: %w", err)
	}
	if err := f.Close(); err != nil {
		return written, fmt.Errorf("write snapshot memory: %w", err)
	}
	return written, os.Rename(f.Name(), filepath.Join(dir, MemoryFile))
}

// isZero reports whether b is all zero bytes, eight at a time.
func isZero(b []byte) bool {
	n := len(b) / 8
	if n > 0 {
		words := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n)
		for _, w := range words {
			if w != 0 {
				return false
			}
		}
	}
	for _, c := range b[n*8:] {
		if c != 0 {
			return false
		}
	}
	return true
}

// OpenMemory opens dir's memory file for a restore and checks its size.
func OpenMemory(dir string, size uint64) (*os.File, error) {
	path := filepath.Join(dir, MemoryFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if uint64(st.Size()) != size {
		f.Close()
		return nil, fmt.Errorf("%s: %w: %d bytes, the state says %d", path, ErrTruncated, st.Size(), size)
	}
	return f, nil
}
