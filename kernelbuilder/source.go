package kernelbuilder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// SourceGlob is where Debian's linux-source packages put their tarball.
const SourceGlob = "/usr/src/linux-source-*.tar.xz"

// ErrNoSource means no kernel source tarball is installed.
var ErrNoSource = errors.New("kernel source not found")

// FindSource returns the newest installed kernel source tarball.
func FindSource() (string, error) {
	m, _ := filepath.Glob(SourceGlob)
	if len(m) == 0 {
		return "", fmt.Errorf("%w: no %s; install it with `apt-get install linux-source-6.12` (make setup does)", ErrNoSource, SourceGlob)
	}
	sort.Strings(m)
	return m[len(m)-1], nil
}

// DefaultCacheDir is $XDG_CACHE_HOME/kindling, or ~/.cache/kindling.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "kindling"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: set XDG_CACHE_HOME or HOME: %w", err)
	}
	return filepath.Join(home, ".cache", "kindling"), nil
}

// requiredTools are what a kernel build runs, with the Debian package that
// provides each.
var requiredTools = [][2]string{
	{"make", "make"}, {"gcc", "gcc"}, {"flex", "flex"}, {"bison", "bison"}, {"bc", "bc"},
	{"tar", "tar"}, {"xz", "xz-utils"}, {"patch", "patch"}, {"perl", "perl"},
}

func checkTools() error {
	var missing, pkgs []string
	for _, t := range requiredTools {
		if _, err := exec.LookPath(t[0]); err != nil {
			missing = append(missing, t[0])
			pkgs = append(pkgs, t[1])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kernel build needs %s: install with `apt-get install %s` (make setup does)",
			strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
	return nil
}

// sourceHash is the SHA-256 of the tarball, remembered beside the cache by
// path, size and modification time so it is computed once.
func sourceHash(cache, tarball string) (string, error) {
	st, err := os.Stat(tarball)
	if err != nil {
		return "", fmt.Errorf("kernel source %s: %w", tarball, err)
	}
	type memo struct {
		Path  string `json:"path"`
		Size  int64  `json:"size"`
		MTime int64  `json:"mtime"`
		Hash  string `json:"sha256"`
	}
	id := sha256.Sum256([]byte(tarball))
	memoPath := filepath.Join(cache, "sources", hex.EncodeToString(id[:8])+".json")
	var m memo
	if b, err := os.ReadFile(memoPath); err == nil && json.Unmarshal(b, &m) == nil &&
		m.Path == tarball && m.Size == st.Size() && m.MTime == st.ModTime().UnixNano() && m.Hash != "" {
		return m.Hash, nil
	}
	f, err := os.Open(tarball)
	if err != nil {
		return "", fmt.Errorf("kernel source %s: %w", tarball, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("kernel source %s: %w", tarball, err)
	}
	m = memo{Path: tarball, Size: st.Size(), MTime: st.ModTime().UnixNano(), Hash: hex.EncodeToString(h.Sum(nil))}
	if err := os.MkdirAll(filepath.Dir(memoPath), 0o755); err == nil {
		b, _ := json.Marshal(m)
		_ = writeFileAtomic(memoPath, b)
	}
	return m.Hash, nil
}

// unpackSource returns a patched source tree for the tarball, unpacking it
// into the cache once.
func unpackSource(ctx context.Context, cache, tarball, srcHash string, patches []Patch, progress io.Writer) (string, error) {
	dir := filepath.Join(cache, "src", patchesKey(srcHash, patches))
	if tree, ok := sourceTree(dir); ok {
		return tree, nil
	}
	unlock, err := lockFile(dir + ".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if tree, ok := sourceTree(dir); ok {
		return tree, nil
	}
	fmt.Fprintf(progress, "kernel: unpacking %s (once; cached in %s)\n", filepath.Base(tarball), dir)
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.CommandContext(ctx, "tar", "-xJf", tarball, "-C", tmp).CombinedOutput(); err != nil {
		return "", fmt.Errorf("unpack %s: %v\n%s", tarball, err, out)
	}
	tree, ok := sourceTree(tmp)
	if !ok {
		return "", fmt.Errorf("unpack %s: no kernel source tree (Makefile and Kconfig) inside", tarball)
	}
	for _, p := range patches {
		cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch")
		cmd.Dir = tree
		cmd.Stdin = strings.NewReader(string(p.Data))
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("apply patch %s to %s: %v\n%s", p.Name, filepath.Base(tarball), err, out)
		}
		fmt.Fprintf(progress, "kernel: applied patch %s\n", p.Name)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	tree, _ = sourceTree(dir)
	return tree, nil
}

// sourceTree finds the single top-level source directory under dir.
func sourceTree(dir string) (string, bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", false
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(p, "Kconfig")); err == nil {
			return p, true
		}
	}
	return "", false
}

// lockFile takes an exclusive flock on path, creating it.
func lockFile(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// writeFileAtomic writes through a uniquely named temp file, so concurrent
// writers (two test binaries on a cold cache) never interleave.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), path)
}
