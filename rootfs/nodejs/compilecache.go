package nodejs

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

const (
	// MaxCompileCache bounds a carried compile cache's contents: the
	// guest agent ships it in one artifact frame, at most
	// guest.MaxArtifact (64 MiB) of tar.
	MaxCompileCache = 64 << 20
	// maxCacheEntries bounds its files and directories: node writes one
	// file per module, and a large application loads a few thousand.
	maxCacheEntries = 100_000
)

// CacheContents is what UnpackCompileCache wrote and left out.
type CacheContents struct {
	Files int
	Bytes int64
	// Dropped are the top-level directories left out: caches of other
	// node versions (node keeps one directory per version and never
	// reads another's).
	Dropped []string
}

// UnpackCompileCache unpacks a carried compile cache into dir (created if
// need be; it must be empty): a tar, plain or gzipped, of a
// NODE_COMPILE_CACHE directory's contents, as the guest agent ships it
// (guest.ArtifactNodeCompileCache). Only directories and regular files
// are accepted, none outside dir, within MaxCompileCache. When
// nodeVersion is set ("22.23.3"), the directories of other versions'
// caches (v<version>-<arch>-...) are dropped.
func UnpackCompileCache(tarPath, dir, nodeVersion string) (CacheContents, error) {
	var got CacheContents
	fail := func(err error) (CacheContents, error) {
		return got, fmt.Errorf("compile cache %s: %w", tarPath, err)
	}
	src, err := os.Open(tarPath)
	if err != nil {
		return fail(err)
	}
	defer src.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		if err == nil {
			err = fmt.Errorf("%s is not empty", dir)
		}
		return fail(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fail(err)
	}
	defer root.Close()
	br := bufio.NewReader(src)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fail(err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	dropped := map[string]bool{}
	for entries := 0; ; entries++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail(err)
		}
		if entries >= maxCacheEntries {
			return fail(fmt.Errorf("more than %d entries", maxCacheEntries))
		}
		name, err := cacheEntryName(hdr.Name)
		if err != nil {
			return fail(err)
		}
		if name == "" {
			continue // the directory itself
		}
		top, _, _ := strings.Cut(name, "/")
		if nodeVersion != "" && strings.HasPrefix(top, "v") && strings.Contains(top, "-") && !strings.HasPrefix(top, "v"+nodeVersion+"-") {
			dropped[top] = true
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fail(err)
			}
		case tar.TypeReg:
			if hdr.Size < 0 || got.Bytes+hdr.Size > MaxCompileCache {
				return fail(fmt.Errorf("over %d MiB", MaxCompileCache>>20))
			}
			if d := path.Dir(name); d != "." {
				if err := root.MkdirAll(d, 0o755); err != nil {
					return fail(err)
				}
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return fail(err)
			}
			n, err := io.Copy(f, io.LimitReader(tr, hdr.Size))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fail(fmt.Errorf("%s: %w", name, err))
			}
			got.Files++
			got.Bytes += n
		default:
			return fail(fmt.Errorf("%s: a compile cache holds only directories and files, not type %q", name, hdr.Typeflag))
		}
	}
	for d := range dropped {
		got.Dropped = append(got.Dropped, d)
	}
	return got, nil
}

// cacheEntryName checks a tar entry's name: relative, inside the cache,
// and returns it cleaned ("" for the cache directory itself).
func cacheEntryName(name string) (string, error) {
	if len(name) > 4096 || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("entry %.64q...: not a file name", name)
	}
	if path.IsAbs(name) {
		return "", fmt.Errorf("entry %q: absolute", name)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("entry %q: leaves the cache", name)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}
