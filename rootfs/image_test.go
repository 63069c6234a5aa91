package rootfs_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/rootfs"
)

// unpack reads an image's initramfs into name -> record.
func unpack(t *testing.T, dir, codec string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, rootfs.InitramfsName(codec)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	switch codec {
	case rootfs.CodecZstd:
		dec, err := zstd.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		defer dec.Close()
		r = dec
	case rootfs.CodecLZ4:
		r = lz4.NewReader(f)
	}
	raw, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cpio.Record{}
	for _, r := range recs {
		out[r.Name] = r
	}
	return out
}

func TestImageTreeReproducibleAndChecked(t *testing.T) {
	dir := t.TempDir()
	init, err := testtasks.Build(dir, testtasks.GoHello) // stands in for kindling-init
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)
	for _, tc := range []struct{ name, codec string }{
		{testtasks.GoHello, rootfs.CodecZstd}, {testtasks.CSockets, rootfs.CodecZstd}, {testtasks.GoHello, rootfs.CodecLZ4}, {testtasks.GoHello, rootfs.CodecNone},
	} {
		name := tc.name
		t.Run(name+"-"+tc.codec, func(t *testing.T) {
			task, err := testtasks.Build(t.TempDir(), name)
			if err != nil {
				t.Skip(err) // no gcc
			}
			spec := rootfs.ImageSpec{Init: init, Task: task, Kernel: kernel, Cmdline: "console=ttyS0", Syscalls: []string{"write"}, Codec: tc.codec}
			a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
			m, err := rootfs.BuildImage(spec, a)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rootfs.BuildImage(spec, b); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"vmlinux", rootfs.InitramfsName(tc.codec), "manifest.json"} {
				x, _ := os.ReadFile(filepath.Join(a, f))
				y, _ := os.ReadFile(filepath.Join(b, f))
				if len(x) == 0 || !bytes.Equal(x, y) {
					t.Errorf("%s differs between two builds (or is empty)", f)
				}
			}
			recs := unpack(t, a, tc.codec)
			want := []string{"init", "task", "dev/console", "dev"}
			if name == testtasks.CSockets {
				want = append(want, "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6")
				if len(m.Libraries) != 2 {
					t.Errorf("libraries %+v", m.Libraries)
				}
			} else if len(m.Libraries) != 0 {
				t.Errorf("a static task has libraries %+v", m.Libraries)
			}
			for _, p := range want {
				r, ok := recs[p]
				if !ok {
					t.Errorf("initramfs lacks %s (has %d entries)", p, len(recs))
					continue
				}
				if p == "init" || p == "task" || strings.HasPrefix(p, "lib") {
					if r.Mode&0o777 != 0o755 || r.UID != 0 || r.MTime != 0 {
						t.Errorf("%s: mode %o uid %d mtime %d", p, r.Mode, r.UID, r.MTime)
					}
				}
			}
			if _, err := rootfs.ReadManifest(a); err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(filepath.Join(a, rootfs.InitramfsName(tc.codec)))
			if st.Size() != m.Initramfs.Size || (tc.codec != rootfs.CodecNone && m.Initramfs.Size >= m.Task.Size+m.Init.Size) {
				t.Errorf("initramfs %d bytes (manifest %d); task+init %d uncompressed", st.Size(), m.Initramfs.Size, m.Task.Size+m.Init.Size)
			}
			t.Logf("%s %s: initramfs %d bytes for %d bytes of binaries", name, tc.codec, m.Initramfs.Size, m.Task.Size+m.Init.Size)
			// A damaged image is refused, naming the file.
			os.WriteFile(filepath.Join(a, rootfs.InitramfsName(tc.codec)), []byte("x"), 0o644)
			if _, err := rootfs.ReadManifest(a); err == nil || !strings.Contains(err.Error(), "does not match") {
				t.Errorf("damaged image: %v", err)
			}
		})
	}
}

func TestImageBadInput(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "task")
	os.WriteFile(notExec, []byte("x"), 0o644)
	_, err := rootfs.BuildImage(rootfs.ImageSpec{Init: notExec, Task: notExec, Kernel: notExec}, filepath.Join(dir, "out"))
	if err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Errorf("non-executable: %v", err)
	}
	if _, err := rootfs.BuildImage(rootfs.ImageSpec{Init: os.Args[0], Task: os.Args[0], Kernel: os.Args[0], Codec: "xz"}, filepath.Join(dir, "out")); err == nil || !strings.Contains(err.Error(), "want zstd, lz4 or none") {
		t.Errorf("unknown codec: %v", err)
	}
	if _, err := rootfs.ReadManifest(dir); err == nil || !strings.Contains(err.Error(), "kindling image build") {
		t.Errorf("no manifest: %v", err)
	}
}

func TestBuildKernelImage(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "guest.elf")
	os.WriteFile(k, []byte("\x7fELF not really"), 0o644)
	img := filepath.Join(dir, "img")
	m, err := rootfs.BuildKernelImage(k, "console=none", img)
	if err != nil {
		t.Fatal(err)
	}
	got, err := rootfs.ReadManifest(img)
	if err != nil {
		t.Fatalf("the image does not read back: %v", err)
	}
	if got.Kernel != m.Kernel || got.Cmdline != "console=none" || got.Task.Name != "" {
		t.Fatalf("manifest: %+v", got)
	}
}
