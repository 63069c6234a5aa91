package rootfs

import (
	"bytes"
	"io/fs"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func TestInitramfsIsReproducibleAndComplete(t *testing.T) {
	files := []File{{Path: "init", Data: []byte("#!/bin/x\n"), Mode: 0o755}, {Path: "etc/app/conf", Data: []byte("k=v"), Mode: 0o644}}
	var a, b bytes.Buffer
	if err := WriteInitramfs(&a, files); err != nil {
		t.Fatal(err)
	}
	if err := WriteInitramfs(&b, []File{files[1], files[0]}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("same files in another order gave another archive")
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(a.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]cpio.Record{}
	for _, r := range recs {
		got[r.Name] = r
	}
	for _, want := range []string{"init", "etc", "etc/app", "etc/app/conf", "dev", "dev/console"} {
		if _, ok := got[want]; !ok {
			t.Errorf("archive lacks %s (has %v)", want, recs)
		}
	}
	if got["init"].Mode&0o777 != 0o755 || got["init"].MTime != 0 {
		t.Errorf("init record %+v", got["init"].Info)
	}
	if err := WriteInitramfs(&a, []File{{Path: "../escape"}}); err == nil {
		t.Fatal("a path outside the archive must be refused")
	}
}

func TestInitramfsDirectoriesAndLinks(t *testing.T) {
	var a bytes.Buffer
	files := []File{{Path: "opt", Mode: 0o700, Type: fs.ModeDir}, {Path: "opt/app/run", Data: []byte("x"), Mode: 0o755},
		{Path: "opt/current", Data: []byte("app"), Type: fs.ModeSymlink}}
	if err := WriteInitramfs(&a, files); err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(a.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, r := range recs {
		got[r.Name] = r.Mode
	}
	for name, mode := range map[string]uint64{"opt": cpio.S_IFDIR | 0o700, "opt/app": cpio.S_IFDIR | 0o755, "opt/current": cpio.S_IFLNK | 0o777} {
		if got[name] != mode {
			t.Errorf("%s: mode %o, want %o", name, got[name], mode)
		}
	}
	for _, c := range []struct {
		files []File
		want  string
	}{
		{[]File{{Path: "a"}, {Path: "a"}}, "a is packed twice"},
		{[]File{{Path: "dev/console"}}, "dev/console is packed twice"},
		{[]File{{Path: "a", Type: fs.ModeSymlink, Data: []byte("b")}, {Path: "a/x"}}, "a is both a directory and a file"},
		{[]File{{Path: "p", Type: fs.ModeNamedPipe}}, "cannot pack"},
	} {
		if err := WriteInitramfs(&a, c.files); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.files, err, c.want)
		}
	}
}
