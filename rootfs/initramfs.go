// Package rootfs builds the root filesystems Kindling boots tasks from:
// reproducible newc cpio initramfs archives (through u-root's cpio package).
// It never reads the host's files except those it is asked to pack.
package rootfs

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// File is one regular file to pack.
type File struct {
	// Path inside the archive, e.g. "init" or "bin/task".
	Path string
	Data []byte
	Mode uint64 // permission bits
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
// timestamps, owners or inode numbers from the host.
func WriteInitramfs(w io.Writer, files []File) error {
	var recs []cpio.Record
	dirs := map[string]bool{}
	for _, f := range files {
		p := cpio.Normalize(f.Path)
		if p == "" || p == "." || strings.HasPrefix(p, "..") {
			return fmt.Errorf("initramfs: bad path %q", f.Path)
		}
		for d := path.Dir(p); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
		recs = append(recs, cpio.StaticRecord(f.Data, cpio.Info{Name: p, Mode: cpio.S_IFREG | f.Mode}))
	}
	// The kernel opens /dev/console for init's stdio before devtmpfs is
	// mounted, so the node must be in the archive.
	dirs["dev"] = true
	recs = append(recs, cpio.CharDev("dev/console", 0o600, 5, 1))
	for d := range dirs {
		recs = append(recs, cpio.Directory(d, 0o755))
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
