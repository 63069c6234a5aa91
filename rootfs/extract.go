package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
)

// Extract unpacks the initramfs of the image in imageDir (described by m)
// into dest, a directory that must not exist yet, so that the image's /init
// and /task can run as host processes (the process sandbox backend).
//
// Only directories, regular files and symbolic links are written; device
// nodes, fifos and sockets are skipped, as are set-user-ID and set-group-ID
// bits. An entry whose path would leave dest is refused, and nothing is
// ever written through a symbolic link (a link's target is stored as it
// is: an absolute target is fine as a link's content). Afterwards init,
// task, the libraries, the task config and the trees are checked against
// the manifest.
//
// The archive is unpacked into a temporary directory beside dest that is
// renamed to dest at the end, so dest is either complete or absent. If
// dest appeared meanwhile (another extraction won), the error wraps
// fs.ErrExist and dest is the other extraction's, complete.
func Extract(imageDir string, m *Manifest, dest string) error {
	if m == nil {
		return errors.New("extract: no manifest")
	}
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("extract %s: %s: %w", imageDir, dest, fs.ErrExist)
	}
	parent := filepath.Dir(dest)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("extract %s: %w", imageDir, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dest)+".extract-")
	if err != nil {
		return fmt.Errorf("extract %s: %w", imageDir, err)
	}
	// Whatever happens, the scratch directory goes: on success only the
	// decompressed archive is left in it.
	defer os.RemoveAll(tmp)
	archive, err := openArchive(imageDir, m, tmp)
	if err != nil {
		return fmt.Errorf("extract %s: %w", imageDir, err)
	}
	defer archive.Close()
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("extract %s: %w", imageDir, err)
	}
	rr, err := cpio.Newc.NewFileReader(archive)
	if err != nil {
		return fmt.Errorf("extract %s: %s: %w", imageDir, m.Initramfs.Name, err)
	}
	if err := cpio.ForEachRecord(rr, func(r cpio.Record) error { return writeEntry(root, r) }); err != nil {
		return fmt.Errorf("extract %s: %s: %w", imageDir, m.Initramfs.Name, err)
	}
	for _, verify := range []func(string, *Manifest) error{verifyTree, verifyTaskConfig, verifyTrees} {
		if err := verify(root, m); err != nil {
			return fmt.Errorf("extract %s: %w", imageDir, err)
		}
	}
	archive.Close()
	if err := os.Rename(root, dest); err != nil {
		if _, statErr := os.Lstat(dest); statErr == nil {
			return fmt.Errorf("extract %s: %s: %w", imageDir, dest, fs.ErrExist)
		}
		return fmt.Errorf("extract %s: %w", imageDir, err)
	}
	return nil
}

// openArchive returns the image's uncompressed cpio archive: the file
// itself for CodecNone, else a decompressed copy in tmp (the cpio reader
// needs to seek).
func openArchive(imageDir string, m *Manifest, tmp string) (*os.File, error) {
	name := m.Initramfs.Name
	if name == "" {
		name = InitramfsName(m.Codec)
	}
	if filepath.Base(name) != name {
		return nil, fmt.Errorf("manifest names initramfs %q, not a file in the image directory", name)
	}
	src, err := os.Open(filepath.Join(imageDir, name))
	if err != nil {
		return nil, err
	}
	var dec io.Reader
	switch m.Codec {
	case CodecNone:
		return src, nil
	case CodecLZ4:
		// The reader recognises the legacy frame the kernel reads.
		dec = lz4.NewReader(src)
	case CodecZstd, "":
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1))
		if err != nil {
			src.Close()
			return nil, err
		}
		defer zr.Close()
		dec = zr
	default:
		src.Close()
		return nil, fmt.Errorf("codec %q: want zstd, lz4 or none", m.Codec)
	}
	defer src.Close()
	out, err := os.Create(filepath.Join(tmp, "initramfs.cpio"))
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(out, dec); err != nil {
		out.Close()
		return nil, fmt.Errorf("%s: %s: %w", name, m.Codec, err)
	}
	return out, nil
}

// entryPath checks an archive name and returns it relative to the root,
// "" for the root itself.
func entryPath(name string) (string, error) {
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == "." {
		return "", nil
	}
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("entry %q: path leaves the root", name)
	}
	return p, nil
}

// writeEntry writes one archive record under root, never following a
// symbolic link: every directory on the way must be a real directory.
func writeEntry(root string, r cpio.Record) error {
	rel, err := entryPath(r.Name)
	if err != nil {
		return err
	}
	perm := os.FileMode(r.Mode & 0o777)
	kind := r.Mode & cpio.S_IFMT
	if rel == "" {
		if kind != cpio.S_IFDIR {
			return fmt.Errorf("entry %q: the root is not a directory", r.Name)
		}
		return nil
	}
	dir, err := mkdirsBeneath(root, path.Dir(rel))
	if err != nil {
		return fmt.Errorf("entry %q: %w", r.Name, err)
	}
	target := filepath.Join(dir, path.Base(rel))
	st, statErr := os.Lstat(target)
	switch kind {
	case cpio.S_IFDIR:
		if statErr == nil && st.IsDir() {
			return os.Chmod(target, perm)
		}
		if statErr == nil {
			if err := os.Remove(target); err != nil {
				return fmt.Errorf("entry %q: %w", r.Name, err)
			}
		}
		if err := os.Mkdir(target, perm); err != nil {
			return fmt.Errorf("entry %q: %w", r.Name, err)
		}
		return os.Chmod(target, perm) // past the umask
	case cpio.S_IFREG, cpio.S_IFLNK:
	default:
		return nil // device nodes, fifos and sockets are the guest kernel's business
	}
	// A later record for the same path replaces the earlier one, as the
	// kernel's unpacker does; removing never follows a link.
	if statErr == nil {
		if st.IsDir() {
			err = os.RemoveAll(target)
		} else {
			err = os.Remove(target)
		}
		if err != nil {
			return fmt.Errorf("entry %q: %w", r.Name, err)
		}
	}
	if r.FileSize > 1<<40 {
		return fmt.Errorf("entry %q: size %d is not believable", r.Name, r.FileSize)
	}
	content := io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize))
	if kind == cpio.S_IFLNK {
		if r.FileSize > 4096 {
			return fmt.Errorf("entry %q: link target of %d bytes", r.Name, r.FileSize)
		}
		b, err := io.ReadAll(content)
		if err != nil {
			return fmt.Errorf("entry %q: %w", r.Name, err)
		}
		if err := os.Symlink(string(b), target); err != nil {
			return fmt.Errorf("entry %q: %w", r.Name, err)
		}
		return nil
	}
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return fmt.Errorf("entry %q: %w", r.Name, err)
	}
	if _, err := io.Copy(f, content); err != nil {
		f.Close()
		return fmt.Errorf("entry %q: %w", r.Name, err)
	}
	if err := f.Chmod(perm); err != nil { // past the umask
		f.Close()
		return fmt.Errorf("entry %q: %w", r.Name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("entry %q: %w", r.Name, err)
	}
	return nil
}

// mkdirsBeneath makes root/rel's directories as needed and returns the
// path, refusing any component that exists as something other than a
// directory (a symbolic link above all).
func mkdirsBeneath(root, rel string) (string, error) {
	dir := root
	if rel == "." {
		return dir, nil
	}
	for _, c := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, c)
		st, err := os.Lstat(dir)
		switch {
		case err == nil && st.IsDir():
		case err == nil:
			return "", fmt.Errorf("parent %s is not a directory (%v); refusing to write through it", strings.TrimPrefix(dir, root+"/"), st.Mode().Type())
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(dir, 0o755); err != nil {
				return "", err
			}
		default:
			return "", err
		}
	}
	return dir, nil
}

// verifyTree checks the extracted init, task and libraries against m.
func verifyTree(root string, m *Manifest) error {
	want := []Artifact{{Name: "init", SHA256: m.Init.SHA256, Size: m.Init.Size}, {Name: "task", SHA256: m.Task.SHA256, Size: m.Task.Size}}
	for _, l := range m.Libraries {
		want = append(want, Artifact{Name: strings.TrimLeft(l.Name, "/"), SHA256: l.SHA256, Size: l.Size})
	}
	for _, a := range want {
		rel, err := entryPath(a.Name)
		if err != nil || rel == "" {
			return fmt.Errorf("manifest names %q, not a file in the image", a.Name)
		}
		p := filepath.Join(root, rel)
		st, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("/%s is not a regular file (%v)", rel, st.Mode().Type())
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != a.SHA256 {
			return fmt.Errorf("/%s does not match the manifest (sha256 %s, want %s)", rel, got, a.SHA256)
		}
	}
	return nil
}
