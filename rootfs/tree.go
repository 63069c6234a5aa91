package rootfs

// Trees: host directories packed into an image beside the task (a Node
// task's code, its runtime client, a carried compile cache). A tree is
// packed with normalised modes and zeroed times, so the same contents
// give the same bytes, and is recorded in the manifest by a digest of its
// paths, types, modes and contents that Extract checks again.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// maxLinkHops bounds the symbolic links followed while checking that a
// link stays inside its tree: Linux's own limit (MAXSYMLINKS, 40).
const maxLinkHops = 40

// packRunAndTrees adds spec's TaskConfig (unless it says nothing) and
// trees to files and records them in m.
func packRunAndTrees(spec ImageSpec, m *Manifest, files *[]File) error {
	if !isZeroTaskConfig(spec.Run) {
		m.Run = normalTaskConfig(spec.Run)
		b, err := encodeTaskConfig(m.Run)
		if err != nil {
			return err
		}
		*files = append(*files, File{Path: TaskConfigPath, Data: b, Mode: 0o644})
	}
	others := []string{TaskConfigPath, "dev/console"}
	for _, f := range *files {
		others = append(others, f.Path)
	}
	var trees []File
	for _, t := range spec.Trees {
		tf, a, err := treeFiles(t)
		if err != nil {
			return err
		}
		trees = append(trees, tf...)
		m.Trees = append(m.Trees, a)
	}
	if err := checkOverlap(m.Trees, others); err != nil {
		return err
	}
	*files = append(*files, trees...)
	return nil
}

// treeEntry is one entry of a tree.
type treeEntry struct {
	rel  string      // slash-separated, relative to the tree; "." is its root
	typ  fs.FileMode // 0 (a regular file), fs.ModeDir or fs.ModeSymlink
	perm uint64      // normalised: see normalPerm
	data []byte      // a file's contents or a link's target
}

// normalPerm is the mode an entry is packed with, whatever the host's
// umask made of it: directories 0755, files 0755 if anyone may execute
// them and 0644 otherwise, links 0777 (as Linux reports them).
func normalPerm(typ, mode fs.FileMode) uint64 {
	switch {
	case typ == fs.ModeDir:
		return 0o755
	case typ == fs.ModeSymlink:
		return 0o777
	case mode&0o111 != 0:
		return 0o755
	}
	return 0o644
}

// checkTreePath checks a tree's place in the image: relative, clean, not
// the root.
func checkTreePath(p string) (string, error) {
	c := path.Clean(p)
	if p == "" || path.IsAbs(p) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("tree path %q: want a directory relative to the image root, such as var/task", p)
	}
	return c, nil
}

// scanTree reads the tree at dir: its root, then every directory, regular
// file and symbolic link under it in lexical order. It refuses other
// files (devices, fifos, sockets) and links that leave the tree, whether
// absolute or through "..", following the tree's own links.
func scanTree(dir string) ([]treeEntry, error) {
	st, err := os.Lstat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory (%v)", dir, st.Mode().Type())
	}
	var entries []treeEntry
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{rel: rel, typ: info.Mode().Type()}
		switch e.typ {
		case fs.ModeDir:
		case 0:
			if e.data, err = os.ReadFile(p); err != nil {
				return err
			}
		case fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := linkInside(dir, rel, target); err != nil {
				return err
			}
			e.data = []byte(target)
		default:
			return fmt.Errorf("%s: a %v cannot be packed (only directories, regular files and symbolic links)", rel, e.typ)
		}
		e.perm = normalPerm(e.typ, info.Mode())
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return entries, nil
}

// linkInside checks that the link at rel in the tree at dir, whose target
// is target, resolves inside the tree. It walks the target a component at
// a time from the link's directory, following the tree's links (so a link
// to "." followed by ".." is caught); past a component that does not
// exist the rest is resolved lexically.
func linkInside(dir, rel, target string) error {
	refuse := func(why string) error {
		return fmt.Errorf("symbolic link %s -> %s points outside the tree (%s); the image would not hold what it names", rel, target, why)
	}
	if path.IsAbs(target) {
		return refuse("absolute")
	}
	var at []string // where the walk is, as components below the tree's root
	if d := path.Dir(rel); d != "." {
		at = strings.Split(d, "/")
	}
	todo := strings.Split(target, "/")
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(at) == 0 {
				return refuse("above its root")
			}
			at = at[:len(at)-1]
			continue
		}
		at = append(at, c)
		p := filepath.Join(append([]string{dir}, at...)...)
		st, err := os.Lstat(p)
		if err != nil || st.Mode().Type() != fs.ModeSymlink {
			continue
		}
		if hops++; hops > maxLinkHops {
			return fmt.Errorf("symbolic link %s -> %s: more than %d links to follow", rel, target, maxLinkHops)
		}
		next, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if path.IsAbs(next) {
			return refuse("through the absolute link " + strings.Join(at, "/"))
		}
		at = at[:len(at)-1]
		todo = append(strings.Split(next, "/"), todo...)
	}
	return nil
}

// treeDigest names a tree by its entries: the SHA-256 of one line per
// entry (type, mode, the SHA-256 of its contents or link target, quoted
// path), in scanTree's order; Size is the total size of its regular
// files.
func treeDigest(name string, entries []treeEntry) Artifact {
	h := sha256.New()
	var size int64
	for _, e := range entries {
		kind := "f"
		switch e.typ {
		case fs.ModeDir:
			kind = "d"
		case fs.ModeSymlink:
			kind = "l"
		default:
			size += int64(len(e.data))
		}
		sum := sha256.Sum256(e.data)
		fmt.Fprintf(h, "%s %04o %s %q\n", kind, e.perm, hex.EncodeToString(sum[:]), e.rel)
	}
	return Artifact{Name: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: size}
}

// treeFiles reads tree t for packing: its entries as Files under t.Path,
// and its manifest artifact.
func treeFiles(t Tree) ([]File, Artifact, error) {
	at, err := checkTreePath(t.Path)
	if err != nil {
		return nil, Artifact{}, err
	}
	// The host directory may be reached through a link; what is inside
	// it may not leave it.
	host, err := filepath.EvalSymlinks(t.Host)
	if err != nil {
		return nil, Artifact{}, fmt.Errorf("tree %s: %w", t.Host, err)
	}
	entries, err := scanTree(host)
	if err != nil {
		return nil, Artifact{}, fmt.Errorf("tree %s: %w", t.Host, err)
	}
	files := make([]File, 0, len(entries))
	for _, e := range entries {
		files = append(files, File{Path: path.Join(at, e.rel), Data: e.data, Mode: e.perm, Type: e.typ})
	}
	return files, treeDigest(at, entries), nil
}

// checkOverlap refuses trees that hold, or lie inside, another packed
// path: each tree must own its directory in the image alone.
func checkOverlap(trees []Artifact, others []string) error {
	inside := func(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	for i, t := range trees {
		for _, o := range others {
			if inside(o, t.Name) || inside(t.Name, o) {
				return fmt.Errorf("tree at %s overlaps /%s", t.Name, o)
			}
		}
		for _, u := range trees[:i] {
			if inside(u.Name, t.Name) || inside(t.Name, u.Name) {
				return fmt.Errorf("trees at %s and %s overlap", u.Name, t.Name)
			}
		}
	}
	return nil
}

// verifyTrees checks the trees extracted under root against m.
func verifyTrees(root string, m *Manifest) error {
	for _, a := range m.Trees {
		rel, err := checkTreePath(a.Name)
		if err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
		// Every directory on the way must be a real one: a link would
		// make the check read something other than what the task reads.
		if err := realDirs(root, rel); err != nil {
			return fmt.Errorf("tree /%s: %w", rel, err)
		}
		entries, err := scanTree(filepath.Join(root, rel))
		if err != nil {
			return fmt.Errorf("tree /%s: %w", rel, err)
		}
		if got := treeDigest(a.Name, entries); got.SHA256 != a.SHA256 || got.Size != a.Size {
			return fmt.Errorf("tree /%s does not match the manifest (digest %s, %d bytes; want %s, %d bytes)", rel, got.SHA256, got.Size, a.SHA256, a.Size)
		}
	}
	return nil
}

// realDirs checks that every component of rel under root is a real
// directory, not a link to one.
func realDirs(root, rel string) error {
	dir := root
	for _, c := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, c)
		st, err := os.Lstat(dir)
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("/%s is not a directory (%v)", strings.TrimPrefix(dir, root+"/"), st.Mode().Type())
		}
	}
	return nil
}
