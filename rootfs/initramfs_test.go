package rootfs

import (
	"bytes"
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
