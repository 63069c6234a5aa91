package rootfs_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/kindlingvm/kindling/rootfs"
)

// smallImage builds an image from two small dynamic host programs (so the
// task has shared libraries), with any file as the kernel.
func smallImage(t *testing.T, codec string) (string, *rootfs.Manifest) {
	t.Helper()
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img")
	m, err := rootfs.BuildImage(rootfs.ImageSpec{Init: "/bin/true", Task: "/bin/echo", Kernel: kernel, Codec: codec}, img)
	if err != nil {
		t.Fatal(err)
	}
	return img, m
}

func TestExtractCodecs(t *testing.T) {
	for _, codec := range []string{rootfs.CodecLZ4, rootfs.CodecZstd, rootfs.CodecNone} {
		t.Run(codec, func(t *testing.T) {
			img, m := smallImage(t, codec)
			dest := filepath.Join(t.TempDir(), "cache", "rootfs")
			if err := rootfs.Extract(img, m, dest); err != nil {
				t.Fatal(err)
			}
			for name, host := range map[string]string{"init": "/bin/true", "task": "/bin/echo"} {
				got, err := os.ReadFile(filepath.Join(dest, name))
				want, _ := os.ReadFile(host)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("/%s: %v, %d bytes, want %d", name, err, len(got), len(want))
				}
				if st, err := os.Stat(filepath.Join(dest, name)); err != nil || st.Mode().Perm() != 0o755 {
					t.Errorf("/%s: mode %v %v", name, st.Mode(), err)
				}
			}
			if len(m.Libraries) == 0 {
				t.Fatal("/bin/echo has no shared libraries?")
			}
			for _, l := range m.Libraries {
				if _, err := os.Stat(filepath.Join(dest, l.Name)); err != nil {
					t.Errorf("library %s: %v", l.Name, err)
				}
			}
			if st, err := os.Stat(filepath.Join(dest, "dev")); err != nil || !st.IsDir() {
				t.Errorf("/dev: %v", err)
			}
			if _, err := os.Lstat(filepath.Join(dest, "dev", "console")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("/dev/console was created (%v); device nodes are skipped", err)
			}
			// Nothing is left beside dest.
			ents, _ := os.ReadDir(filepath.Dir(dest))
			if len(ents) != 1 {
				t.Errorf("beside dest: %v", ents)
			}
			// A second extraction to the same place says it exists.
			if err := rootfs.Extract(img, m, dest); !errors.Is(err, fs.ErrExist) {
				t.Errorf("second extraction: %v, want ErrExist", err)
			}
		})
	}
}

// writeArchive replaces img's (uncompressed) initramfs with recs.
func writeArchive(t *testing.T, img string, recs ...cpio.Record) {
	t.Helper()
	var b bytes.Buffer
	w := cpio.Newc.Writer(&b)
	if err := cpio.WriteRecords(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, rootfs.InitramfsName(rootfs.CodecNone)), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestExtractRefusesTamperedArchives(t *testing.T) {
	img, m := smallImage(t, rootfs.CodecNone)
	outside := t.TempDir()
	initData, _ := os.ReadFile("/bin/true")
	for _, c := range []struct {
		name string
		recs []cpio.Record
		want string
	}{
		{"dotdot", []cpio.Record{cpio.StaticFile("init", string(initData), 0o755), cpio.StaticFile("../../evil", "x", 0o644)}, `entry "../../evil": path leaves the root`},
		// The cpio reader cleans names, so the error names the cleaned one.
		{"dotdot-inside", []cpio.Record{cpio.StaticFile("lib/../../evil", "x", 0o644)}, `entry "../evil": path leaves the root`},
		{"through-a-link", []cpio.Record{cpio.Symlink("lib", outside), cpio.StaticFile("lib/evil", "x", 0o644)}, `entry "lib/evil": parent lib is not a directory`},
		{"link-then-dir", []cpio.Record{cpio.Symlink("lib", outside), cpio.Directory("lib/sub", 0o755)}, `entry "lib/sub": parent lib is not a directory`},
		{"wrong-task", []cpio.Record{cpio.StaticFile("init", string(initData), 0o755), cpio.StaticFile("task", "#!/bin/sh\n", 0o755)}, "/task does not match the manifest"},
		{"task-is-a-link", []cpio.Record{cpio.StaticFile("init", string(initData), 0o755), cpio.Symlink("task", "/bin/echo")}, "/task is not a regular file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			writeArchive(t, img, c.recs...)
			dest := filepath.Join(t.TempDir(), "rootfs")
			err := rootfs.Extract(img, m, dest)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if _, err := os.Lstat(dest); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("dest exists after a failed extraction: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Dir(dest)); len(ents) != 0 {
				t.Errorf("left behind: %v", ents)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("wrote outside: %v", ents)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(filepath.Dir(dest)), "evil")); err == nil {
				t.Error("wrote ../evil")
			}
		})
	}
}

// Absolute symbolic link targets are kept as the links' contents, and
// never followed while writing.
func TestExtractKeepsLinks(t *testing.T) {
	img, m := smallImage(t, rootfs.CodecNone)
	initData, _ := os.ReadFile("/bin/true")
	taskData, _ := os.ReadFile("/bin/echo")
	recs := []cpio.Record{cpio.StaticFile("init", string(initData), 0o4755), cpio.StaticFile("task", string(taskData), 0o755),
		cpio.Directory("bin", 0o700), cpio.Symlink("bin/sh", "/bin/busybox"), cpio.CharDev("dev/null", 0o666, 1, 3)}
	for _, l := range m.Libraries {
		data, _ := os.ReadFile(l.Name)
		recs = append(recs, cpio.StaticFile(l.Name, string(data), 0o755))
	}
	writeArchive(t, img, recs...)
	dest := filepath.Join(t.TempDir(), "rootfs")
	if err := rootfs.Extract(img, m, dest); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(dest, "bin/sh")); err != nil || target != "/bin/busybox" {
		t.Errorf("bin/sh -> %q %v", target, err)
	}
	if st, _ := os.Stat(filepath.Join(dest, "init")); st.Mode()&os.ModeSetuid != 0 || st.Mode().Perm() != 0o755 {
		t.Errorf("init mode %v: set-user-ID must be dropped", st.Mode())
	}
	if st, _ := os.Stat(filepath.Join(dest, "bin")); st.Mode().Perm() != 0o700 {
		t.Errorf("bin mode %v", st.Mode())
	}
	if _, err := os.Lstat(filepath.Join(dest, "dev/null")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dev/null: %v", err)
	}
}

func TestExtractBadInput(t *testing.T) {
	img, m := smallImage(t, rootfs.CodecZstd)
	bad := *m
	bad.Codec = "xz"
	if err := rootfs.Extract(img, &bad, filepath.Join(t.TempDir(), "r")); err == nil || !strings.Contains(err.Error(), `codec "xz"`) {
		t.Errorf("codec xz: %v", err)
	}
	bad = *m
	bad.Initramfs.Name = "../../etc/passwd"
	if err := rootfs.Extract(img, &bad, filepath.Join(t.TempDir(), "r")); err == nil || !strings.Contains(err.Error(), "not a file in the image directory") {
		t.Errorf("initramfs outside the image: %v", err)
	}
	// A truncated archive is an error, not a partial tree.
	p := filepath.Join(img, m.Initramfs.Name)
	data, _ := os.ReadFile(p)
	os.WriteFile(p, data[:len(data)/2], 0o644)
	dest := filepath.Join(t.TempDir(), "r")
	if err := rootfs.Extract(img, m, dest); err == nil {
		t.Error("truncated archive extracted")
	}
	if _, err := os.Lstat(dest); err == nil {
		t.Error("dest exists after a failed extraction")
	}
	if err := rootfs.Extract(img, nil, dest); err == nil {
		t.Error("nil manifest")
	}
}
