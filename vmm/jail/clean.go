package jail

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Clean removes a jail directory after its program has exited, or one a
// crash left: it detaches every mount at or under dir in the caller's
// mount namespace (lazily, so a busy one goes too), removes the cgroup the
// jailer made, then the directory. It never removes anything while a
// mount is left under dir, so it cannot delete through a bind mount into
// the host's files. A dir that does not exist is clean.
//
// The jail's own mounts live in its mount namespace and vanish with its
// last process; Clean run while the program is alive would pull the files
// from under it (and fail to remove its cgroup, which still holds it).
func Clean(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if abs == "/" {
		return errors.New("jail: refusing to clean /")
	}
	if _, err := os.Lstat(abs); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// A symlinked dir would have the mount table name its target.
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	mounts, err := mountsUnder(abs)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("jail: clean %s: unmount %s: %w", abs, m, err)
		}
	}
	if left, err := mountsUnder(abs); err != nil {
		return err
	} else if len(left) > 0 {
		return fmt.Errorf("jail: clean %s: still mounted after unmounting: %s", abs, strings.Join(left, ", "))
	}
	if err := removeCgroup(abs); err != nil {
		return fmt.Errorf("jail: clean %s: %w", abs, err)
	}
	if err := os.RemoveAll(abs); err != nil {
		return fmt.Errorf("jail: clean: %w", err)
	}
	return nil
}

// mountsUnder lists the mount points at or below dir in this process's
// mount namespace, deepest first (so each unmount finds its parent still
// there), from /proc/self/mountinfo.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... (proc(5))
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("jail: read mountinfo: %w", err)
	}
	// Deepest first; a path mounted twice appears twice and is
	// unmounted twice.
	sort.SliceStable(out, func(i, k int) bool { return strings.Count(out[i], "/") > strings.Count(out[k], "/") })
	return out, nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space,
// \011, \012, \134).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
