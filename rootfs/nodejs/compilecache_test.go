package nodejs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type tarEntry struct {
	name string
	typ  byte
	data string
	link string
}

func writeTar(t *testing.T, gz bool, entries ...tarEntry) string {
	t.Helper()
	var b bytes.Buffer
	var zw *gzip.Writer
	tw := tar.NewWriter(&b)
	if gz {
		zw = gzip.NewWriter(&b)
		tw = tar.NewWriter(zw)
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.data)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.data))
	}
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	p := filepath.Join(t.TempDir(), "cache.tar")
	os.WriteFile(p, b.Bytes(), 0o644)
	return p
}

func TestUnpackCompileCache(t *testing.T) {
	for _, gz := range []bool{false, true} {
		p := writeTar(t, gz,
			tarEntry{name: "./", typ: tar.TypeDir},
			tarEntry{name: "v22.23.3-x64-9ac5647c-0/", typ: tar.TypeDir},
			tarEntry{name: "v22.23.3-x64-9ac5647c-0/87f06276", typ: tar.TypeReg, data: "entry"},
			tarEntry{name: "v22.22.0-x64-12345678-0/abcdef01", typ: tar.TypeReg, data: "another node's"},
			tarEntry{name: "kindling-index.json", typ: tar.TypeReg, data: "{}"},
		)
		dir := filepath.Join(t.TempDir(), "cache")
		got, err := UnpackCompileCache(p, dir, "22.23.3")
		if err != nil {
			t.Fatal(err)
		}
		if got.Files != 2 || got.Bytes != 7 || len(got.Dropped) != 1 || got.Dropped[0] != "v22.22.0-x64-12345678-0" {
			t.Errorf("gz %v: %+v", gz, got)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "v22.23.3-x64-9ac5647c-0/87f06276")); err != nil || string(b) != "entry" {
			t.Errorf("entry: %q %v", b, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "v22.22.0-x64-12345678-0")); err == nil {
			t.Error("another version's cache was unpacked")
		}
		// Into a directory that is not empty: refused.
		if _, err := UnpackCompileCache(p, dir, ""); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Errorf("non-empty dir: %v", err)
		}
	}
}

func TestUnpackCompileCacheRefuses(t *testing.T) {
	outside := t.TempDir()
	big := strings.Repeat("x", 1<<20)
	var many []tarEntry
	for i := 0; i <= MaxCompileCache>>20; i++ {
		many = append(many, tarEntry{name: "v/" + strings.Repeat("a", i+1), typ: tar.TypeReg, data: big})
	}
	for _, c := range []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"dotdot", []tarEntry{{name: "../evil", typ: tar.TypeReg, data: "x"}}, "leaves the cache"},
		{"dotdot-inside", []tarEntry{{name: "a/../../evil", typ: tar.TypeReg, data: "x"}}, "leaves the cache"},
		{"absolute", []tarEntry{{name: filepath.Join(outside, "evil"), typ: tar.TypeReg, data: "x"}}, "absolute"},
		{"symlink", []tarEntry{{name: "link", typ: tar.TypeSymlink, link: outside}}, "only directories and files"},
		{"hardlink", []tarEntry{{name: "link", typ: tar.TypeLink, link: "/etc/passwd"}}, "only directories and files"},
		{"twice", []tarEntry{{name: "a", typ: tar.TypeReg}, {name: "a", typ: tar.TypeReg}}, "file exists"},
		{"too-big", many, "over 64 MiB"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			if _, err := UnpackCompileCache(writeTar(t, false, c.entries...), dir, ""); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("wrote outside: %v", ents)
			}
		})
	}
	os.WriteFile(filepath.Join(outside, "junk"), []byte("not a tar at all, not at all"), 0o644)
	if _, err := UnpackCompileCache(filepath.Join(outside, "junk"), filepath.Join(t.TempDir(), "c"), ""); err == nil {
		t.Error("junk unpacked")
	}
}
