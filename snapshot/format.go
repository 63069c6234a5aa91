// Package snapshot is Kindling's snapshot format: a state file (magic,
// format version, CRC-32C and length around a JSON payload the VMM fills)
// and a guest memory file written sparse, zero pages left as holes. It
// validates everything it reads before a caller can use it and never
// trusts a snapshot directory: a wrong magic, version, size or checksum is
// an error that names what is wrong.
package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// Files in a snapshot directory.
const (
	StateFile  = "state"
	MemoryFile = "memory"
)

// Magic opens every state file.
const Magic = "KDLGSNAP"

// Version is the state file format this build writes and reads. Bump it on
// any change to the payload's meaning.
const Version = 1

// headerLen is magic (8), version (4), flags (4), payload length (8) and
// CRC-32C of the payload (4), padded to 32.
const headerLen = 32

// MaxStateBytes bounds the payload: 254 vCPUs with AMX-sized XSAVE areas
// (11 KiB) and their MSRs stay far below it.
const MaxStateBytes = 64 << 20

// Errors a caller can tell apart.
var (
	ErrNotSnapshot = errors.New("not a Kindling snapshot")
	ErrVersion     = errors.New("snapshot format version differs")
	ErrCorrupt     = errors.New("snapshot is corrupt")
	ErrTruncated   = errors.New("snapshot is truncated")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// WriteState writes v as the state file of dir, atomically.
func WriteState(dir string, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode snapshot state: %w", err)
	}
	if len(payload) > MaxStateBytes {
		return fmt.Errorf("snapshot state of %d bytes exceeds %d", len(payload), MaxStateBytes)
	}
	h := make([]byte, headerLen)
	copy(h, Magic)
	binary.LittleEndian.PutUint32(h[8:], Version)
	binary.LittleEndian.PutUint64(h[16:], uint64(len(payload)))
	binary.LittleEndian.PutUint32(h[24:], crc32.Checksum(payload, castagnoli))
	f, err := os.CreateTemp(dir, StateFile+".tmp-")
	if err != nil {
		return fmt.Errorf("write snapshot state: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(h, payload...)); err != nil {
		f.Close()
		return fmt.Errorf("write snapshot state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write snapshot state: %w", err)
	}
	return os.Rename(f.Name(), filepath.Join(dir, StateFile))
}

// ReadState validates dir's state file and decodes its payload into v.
func ReadState(dir string, v any) error {
	path := filepath.Join(dir, StateFile)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", dir, err)
	}
	defer f.Close()
	h := make([]byte, headerLen)
	if n, err := io.ReadFull(f, h); err != nil {
		if n >= len(Magic) && string(h[:len(Magic)]) != Magic {
			return fmt.Errorf("%s: %w (bad magic)", path, ErrNotSnapshot)
		}
		return fmt.Errorf("%s: %w: %d-byte file, the header alone is %d", path, ErrTruncated, n, headerLen)
	}
	if string(h[:len(Magic)]) != Magic {
		return fmt.Errorf("%s: %w (bad magic %q)", path, ErrNotSnapshot, h[:len(Magic)])
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != Version {
		return fmt.Errorf("%s: %w: the file is format %d, this Kindling reads format %d", path, ErrVersion, v, Version)
	}
	n := binary.LittleEndian.Uint64(h[16:])
	if n > MaxStateBytes {
		return fmt.Errorf("%s: %w: header claims a %d-byte payload, the limit is %d", path, ErrCorrupt, n, MaxStateBytes)
	}
	payload := make([]byte, n)
	if got, err := io.ReadFull(f, payload); err != nil {
		return fmt.Errorf("%s: %w: header claims %d payload bytes, the file has %d", path, ErrTruncated, n, got)
	}
	if extra, _ := f.Read(make([]byte, 1)); extra != 0 {
		return fmt.Errorf("%s: %w: bytes after the %d-byte payload", path, ErrCorrupt, n)
	}
	if sum := crc32.Checksum(payload, castagnoli); sum != binary.LittleEndian.Uint32(h[24:]) {
		return fmt.Errorf("%s: %w: CRC-32C %#08x, header says %#08x", path, ErrCorrupt, sum, binary.LittleEndian.Uint32(h[24:]))
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w: %v", path, ErrCorrupt, err)
	}
	return nil
}
