package snapshot

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrChanged means a snapshot's files are not the ones it was sealed with.
var ErrChanged = errors.New("snapshot changed after it was cut")

// Seal records a snapshot directory as it was cut: every file's digest,
// and its identity (inode, size, times) so that a restore can tell in a
// few stat calls that nothing was touched, and pay for digests only when
// something was (or once, when the caller has not watched the files).
type Seal struct {
	Files []SealedFile `json:"files"`
}

// SealedFile is one file of a sealed snapshot.
type SealedFile struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Digest is PageDigest of the file.
	Digest string `json:"digest"`
	Ino    uint64 `json:"ino"`
	Dev    uint64 `json:"dev"`
	// MtimeNs and CtimeNs change with any write (ctime also with chmod,
	// chown and link changes, which a writer cannot set back).
	MtimeNs int64 `json:"mtime_ns"`
	CtimeNs int64 `json:"ctime_ns"`
}

// SealDir digests every regular file in dir. Anything else in it (a
// directory, a symlink, a device) is refused: a snapshot holds only files.
func SealDir(dir string) (*Seal, error) {
	names, err := listFiles(dir)
	if err != nil {
		return nil, err
	}
	s := &Seal{}
	for _, name := range names {
		f, err := sealFile(dir, name)
		if err != nil {
			return nil, err
		}
		s.Files = append(s.Files, f)
	}
	return s, nil
}

// Unchanged checks, with a stat per file, that dir holds exactly the sealed
// files with their sealed identities. It is cheap enough for every restore;
// an error (wrapping ErrChanged) names the first difference, which may be
// harmless (a copy, a chown): Verify decides.
func (s *Seal) Unchanged(dir string) error {
	names, err := listFiles(dir)
	if err != nil {
		return err
	}
	if err := s.sameNames(dir, names); err != nil {
		return err
	}
	for _, want := range s.Files {
		if err := want.unchanged(dir); err != nil {
			return err
		}
	}
	return nil
}

// unchanged compares the file's identity with the sealed one.
func (want SealedFile) unchanged(dir string) error {
	got, err := identity(dir, want.Name)
	if err != nil {
		return err
	}
	if got.Ino != want.Ino || got.Dev != want.Dev || got.Size != want.Size || got.MtimeNs != want.MtimeNs || got.CtimeNs != want.CtimeNs {
		return fmt.Errorf("%s: %w: its inode, size or times differ from the seal's", filepath.Join(dir, want.Name), ErrChanged)
	}
	return nil
}

// Verify digests dir's files and compares them with the seal. It returns
// the seal of the files as they are now (same digests, new identities),
// for the caller to keep so later Unchanged calls pass.
func (s *Seal) Verify(dir string) (*Seal, error) {
	names, err := listFiles(dir)
	if err != nil {
		return nil, err
	}
	if err := s.sameNames(dir, names); err != nil {
		return nil, err
	}
	now := &Seal{}
	for _, want := range s.Files {
		got, err := sealFile(dir, want.Name)
		if err != nil {
			return nil, err
		}
		if got.Digest != want.Digest || got.Size != want.Size {
			return nil, fmt.Errorf("%s: %w: its digest is %s, the seal's %s", filepath.Join(dir, want.Name), ErrChanged, got.Digest, want.Digest)
		}
		now.Files = append(now.Files, got)
	}
	return now, nil
}

// Add seals one more file of dir, name, after checking that every file
// already sealed is unchanged: it never vouches for a change it did not
// make. It returns the new seal.
func (s *Seal) Add(dir, name string) (*Seal, error) {
	out := &Seal{}
	for _, want := range s.Files {
		if want.Name == name {
			continue
		}
		if err := want.unchanged(dir); err != nil {
			return nil, err
		}
		out.Files = append(out.Files, want)
	}
	f, err := sealFile(dir, name)
	if err != nil {
		return nil, err
	}
	out.Files = append(out.Files, f)
	return out, nil
}

// Has reports whether the seal lists a file of that name; a nil seal
// lists none.
func (s *Seal) Has(name string) bool {
	if s == nil {
		return false
	}
	for _, f := range s.Files {
		if f.Name == name {
			return true
		}
	}
	return false
}

func (s *Seal) sameNames(dir string, names []string) error {
	want := make([]string, len(s.Files))
	for i, f := range s.Files {
		want[i] = f.Name
	}
	for _, n := range names {
		if !slices.Contains(want, n) {
			return fmt.Errorf("%s: %w: a file the seal does not list", filepath.Join(dir, n), ErrChanged)
		}
	}
	for _, n := range want {
		if !slices.Contains(names, n) {
			return fmt.Errorf("%s: %w: a sealed file is missing", filepath.Join(dir, n), ErrChanged)
		}
	}
	return nil
}

func listFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	var names []string
	for _, e := range ents {
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("snapshot %s: %s is a %v, not a file", dir, e.Name(), e.Type())
		}
		names = append(names, e.Name())
	}
	return names, nil
}

func identity(dir, name string) (SealedFile, error) {
	path := filepath.Join(dir, name)
	fi, err := os.Lstat(path)
	if err != nil {
		return SealedFile{}, fmt.Errorf("snapshot file %s: %w", path, err)
	}
	return identityOf(name, fi)
}

func identityOf(name string, fi os.FileInfo) (SealedFile, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return SealedFile{}, fmt.Errorf("snapshot file %s is not a regular file", name)
	}
	return SealedFile{Name: name, Size: fi.Size(), Ino: st.Ino, Dev: st.Dev,
		MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano()}, nil
}

func sealFile(dir, name string) (SealedFile, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return SealedFile{}, fmt.Errorf("snapshot file %s: %w", path, err)
	}
	defer f.Close()
	// Identity before the digest: a write during digesting then shows as
	// a changed ctime at the next check rather than going unnoticed.
	fi, err := f.Stat()
	if err != nil {
		return SealedFile{}, fmt.Errorf("snapshot file %s: %w", path, err)
	}
	sf, err := identityOf(name, fi)
	if err != nil {
		return SealedFile{}, fmt.Errorf("%s: %w", dir, err)
	}
	if sf.Digest, err = PageDigest(f, fi.Size()); err != nil {
		return SealedFile{}, fmt.Errorf("snapshot file %s: %w", path, err)
	}
	return sf, nil
}

// PageDigest is SHA-256 over the file's size and each 4 KiB page that is
// not all zeros, with its index. Holes (the memory file is written
// sparse) are skipped without being read, and zero pages do not count, so
// the digest costs what the guest used rather than its memory size, and a
// copy that fills or punches holes keeps its digest.
func PageDigest(f *os.File, size int64) (string, error) {
	h := sha256.New()
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(size))
	h.Write(hdr[:])
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole from here to the end
		}
		if err != nil {
			// No SEEK_DATA here: read everything.
			data = off
		}
		end, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			end = size
		}
		data &^= pageSize - 1
		for data < end {
			n := min(int64(len(buf)), end-data)
			if m, err := f.ReadAt(buf[:n], data); int64(m) < n {
				if errors.Is(err, io.EOF) {
					return "", fmt.Errorf("%w: shorter than its size while reading", ErrChanged)
				}
				return "", err
			}
			for p := int64(0); p < n; p += pageSize {
				page := buf[p:min(p+pageSize, n)]
				if isZero(page) {
					continue
				}
				binary.LittleEndian.PutUint64(hdr[:], uint64((data+p)/pageSize))
				h.Write(hdr[:])
				h.Write(page)
			}
			data += n
		}
		off = end
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
