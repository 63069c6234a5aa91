package rootfs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/ldd"
)

// ManifestFormat is the version of manifest.json.
const ManifestFormat = 1

// InitramfsName is the compressed initramfs in an image directory.
const InitramfsName = "initramfs.cpio.zst"

// ImageSpec is what goes into a task image.
type ImageSpec struct {
	Init   string // the kindling-init binary, packed as /init
	Task   string // the task binary, packed as /task
	Kernel string // the task's vmlinux, copied beside the initramfs
	// Cmdline is the kernel command line the image boots with.
	Cmdline string
	// Recorded in the manifest: what the kernel builder found and chose.
	Syscalls      []string
	KernelOptions []string
	CPUNeeds      []string
}

// Artifact is one file of an image, by digest.
type Artifact struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Manifest describes a built image (manifest.json).
type Manifest struct {
	Format        int        `json:"format"`
	Kernel        Artifact   `json:"kernel"`
	Initramfs     Artifact   `json:"initramfs"`
	Codec         string     `json:"codec"`
	Task          Artifact   `json:"task"`
	Init          Artifact   `json:"init"`
	Libraries     []Artifact `json:"libraries,omitempty"`
	Cmdline       string     `json:"cmdline"`
	Syscalls      []string   `json:"syscalls"`
	KernelOptions []string   `json:"kernel_options"`
	CPUNeeds      []string   `json:"cpu_needs"`
}

func digest(name string, data []byte) Artifact {
	sum := sha256.Sum256(data)
	return Artifact{Name: name, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

// BuildImage writes dir/vmlinux, dir/initramfs.cpio.zst (/init, /task and
// the task's shared libraries at their paths) and dir/manifest.json. The
// same inputs give the same bytes.
func BuildImage(spec ImageSpec, dir string) (*Manifest, error) {
	for _, p := range []struct{ what, path string }{{"init", spec.Init}, {"task", spec.Task}} {
		st, err := os.Stat(p.path)
		if err != nil {
			return nil, fmt.Errorf("image: %s: %w", p.what, err)
		}
		if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("image: %s %s is not an executable file (mode %v); chmod +x it", p.what, p.path, st.Mode())
		}
	}
	kernel, err := os.ReadFile(spec.Kernel)
	if err != nil {
		return nil, fmt.Errorf("image: kernel: %w", err)
	}
	m := &Manifest{Format: ManifestFormat, Codec: "zstd", Cmdline: spec.Cmdline, Kernel: digest("vmlinux", kernel),
		Syscalls: nonNil(spec.Syscalls), KernelOptions: nonNil(spec.KernelOptions), CPUNeeds: nonNil(spec.CPUNeeds)}
	initF, err := FileFromHost("init", spec.Init)
	if err != nil {
		return nil, err
	}
	taskF, err := FileFromHost("task", spec.Task)
	if err != nil {
		return nil, err
	}
	initF.Mode, taskF.Mode = 0o755, 0o755
	m.Init, m.Task = digest("init", initF.Data), digest("task", taskF.Data)
	files := []File{initF, taskF}
	abs, err := filepath.Abs(spec.Task)
	if err != nil {
		return nil, err
	}
	libs, err := ldd.List(abs)
	if err != nil {
		return nil, fmt.Errorf("image: shared libraries of %s: %w", spec.Task, err)
	}
	sort.Strings(libs)
	for _, lib := range libs {
		f, err := FileFromHost(strings.TrimPrefix(lib, "/"), lib)
		if err != nil {
			return nil, err
		}
		f.Mode = 0o755
		files = append(files, f)
		m.Libraries = append(m.Libraries, digest(lib, f.Data))
	}
	var cpio bytes.Buffer
	if err := WriteInitramfs(&cpio, files); err != nil {
		return nil, err
	}
	var zst bytes.Buffer
	enc, err := zstd.NewWriter(&zst, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(8<<20), zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, err
	}
	if _, err := enc.Write(cpio.Bytes()); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	m.Initramfs = digest(InitramfsName, zst.Bytes())
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	for name, data := range map[string][]byte{"vmlinux": kernel, InitramfsName: zst.Bytes(), "manifest.json": append(manifest, '\n')} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	return m, nil
}

// ReadManifest reads dir/manifest.json and checks the image's files
// against it.
func ReadManifest(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w (build one with kindling image build)", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("image %s: manifest.json: %w", dir, err)
	}
	if m.Format != ManifestFormat {
		return nil, fmt.Errorf("image %s: manifest format %d, this kindling reads %d", dir, m.Format, ManifestFormat)
	}
	for _, a := range []Artifact{m.Kernel, m.Initramfs} {
		b, err := os.ReadFile(filepath.Join(dir, a.Name))
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", dir, err)
		}
		if got := digest(a.Name, b); got != a {
			return nil, fmt.Errorf("image %s: %s does not match the manifest (sha256 %s, want %s)", dir, a.Name, got.SHA256, a.SHA256)
		}
	}
	return &m, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
