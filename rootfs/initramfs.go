// Package rootfs builds the root filesystems Kindling boots tasks from:
// reproducible newc cpio initramfs archives (through u-root's cpio package).
// It never reads the host's files except those it is asked to pack.
package rootfs

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// File is one file to pack: a regular file, a directory or a symbolic
// link.
type File struct {
	// Path inside the archive, e.g. "init" or "bin/task".
	Path string
	// Data is a regular file's contents or a symbolic link's target.
	Data []byte
	Mode uint64 // permission bits
	// Type is 0 for a regular file, fs.ModeDir or fs.ModeSymlink.
	Type fs.FileMode
}

// FileFromHost reads a host file for packing at archivePath.
func FileFromHost(archivePath, hostPath string) (File, error) {
	data, err := os.ReadFile(hostPath)
	if err != nil {
		return File{}, fmt.Errorf("pack %s: %w", hostPath, err)
	}
	st, err := os.Stat(hostPath)
	if err != nil {
		return File{}, fmt.Errorf("pack %s: %w", hostPath, err)
	}
	return File{Path: archivePath, Data: data, Mode: uint64(st.Mode().Perm())}, nil
}

// WriteInitramfs writes files, their parent directories and /dev/console as
// an uncompressed newc archive. The output depends only on the inputs: no
// timestamps, owners or inode numbers from the host. A parent directory
// not among files is 0755. A path given twice, or used both as a
// directory and as something else, is an error.
func WriteInitramfs(w io.Writer, files []File) error {
	var recs []cpio.Record
	// The kernel opens /dev/console for init's stdio before devtmpfs is
	// mounted, so the node must be in the archive.
	kinds := map[string]fs.FileMode{"dev/console": fs.ModeCharDevice}
	recs = append(recs, cpio.CharDev("dev/console", 0o600, 5, 1))
	dirs := map[string]bool{"dev": true}
	for _, f := range files {
		p := cpio.Normalize(f.Path)
		if p == "" || p == "." || p == ".." || strings.HasPrefix(p, "../") {
			return fmt.Errorf("initramfs: bad path %q", f.Path)
		}
		if _, dup := kinds[p]; dup {
			return fmt.Errorf("initramfs: %s is packed twice", p)
		}
		kinds[p] = f.Type
		for d := path.Dir(p); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
		switch f.Type {
		case 0:
			recs = append(recs, cpio.StaticRecord(f.Data, cpio.Info{Name: p, Mode: cpio.S_IFREG | f.Mode}))
		case fs.ModeDir:
			recs = append(recs, cpio.Directory(p, f.Mode))
		case fs.ModeSymlink:
			recs = append(recs, cpio.Symlink(p, string(f.Data)))
		default:
			return fmt.Errorf("initramfs: %s: cannot pack a file of type %v", p, f.Type)
		}
	}
	for d := range dirs {
		switch kind, ok := kinds[d]; {
		case !ok:
			recs = append(recs, cpio.Directory(d, 0o755))
		case kind != fs.ModeDir:
			return fmt.Errorf("initramfs: %s is both a directory and a file (%v)", d, kind)
		}
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
	cpio.MakeAllReproducible(recs)
	rw := cpio.Newc.Writer(w)
	if err := cpio.WriteRecordsAndDirs(rw, recs); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}
