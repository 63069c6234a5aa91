package rootfs

import (
	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/internal/buildid"
	"github.com/kindlingvm/kindling/rootfs/taskconfig"

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
	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/ldd"
)

// ManifestFormat is the version of manifest.json.
const ManifestFormat = 1

// Initramfs codecs. The kernel needs CONFIG_RD_ZSTD or CONFIG_RD_LZ4
// (both are among the kernel builder's VM essentials).
const (
	CodecZstd = "zstd"
	// CodecLZ4 is the legacy LZ4 frame the kernel's unlz4 reads. Hosts
	// that emulate guest kernel mode need it: the kernel's zstd picks BMI2
	// code from the (unvirtualised) host CPUID, and KVM's emulator lacks
	// shlx.
	CodecLZ4  = "lz4"
	CodecNone = "none"
)

// InitramfsName is the initramfs file of an image compressed with codec.
func InitramfsName(codec string) string {
	switch codec {
	case CodecLZ4:
		return "initramfs.cpio.lz4"
	case CodecNone:
		return "initramfs.cpio"
	}
	return "initramfs.cpio.zst"
}

// ImageSpec is what goes into a task image.
type ImageSpec struct {
	Init   string // the kindling-init binary, packed as /init
	Task   string // the task binary, packed as /task
	Kernel string // the task's vmlinux, copied beside the initramfs
	// Cmdline is the kernel command line the image boots with.
	Cmdline string
	// Codec compresses the initramfs: CodecZstd (the default), CodecLZ4
	// or CodecNone.
	Codec string
	// Recorded in the manifest: what the kernel builder found and chose.
	Syscalls      []string
	KernelOptions []string
	// CPUNeeds and CPUOptional are the task's required and optional
	// instruction-set extensions; CPUTemplate is the CPU the image runs on.
	CPUNeeds    []string
	CPUOptional []string
	CPUTemplate *cpuid.Template
	// Run is how the task is run (TaskConfigPath in the initramfs); its
	// zero value runs /task with no arguments, unprofiled.
	Run TaskConfig
	// Trees are directories packed into the initramfs beside the task
	// (a Node task's code and runtime client, a baked compile cache).
	Trees []Tree
}

// Tree is a host directory packed into an image at Path (relative to the
// image root, e.g. "var/task").
type Tree struct {
	Host string
	Path string
}

// TaskConfig is how kindling-init runs an image's task (package
// taskconfig, small enough for kindling-init to import).
type TaskConfig = taskconfig.Config

// TaskConfigPath is where an image keeps its TaskConfig, relative to the
// image root.
const TaskConfigPath = taskconfig.Path

// RootPlaceholder starts a TaskConfig path that is in the image.
const RootPlaceholder = taskconfig.RootPlaceholder

// ReadTaskConfig reads root's TaskConfig (taskconfig.Read).
func ReadTaskConfig(root string) (TaskConfig, error) { return taskconfig.Read(root) }

// Resolve replaces a leading RootPlaceholder in s with root
// (taskconfig.Resolve).
func Resolve(root, s string) string { return taskconfig.Resolve(root, s) }

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
	CPUOptional   []string   `json:"cpu_optional"`
	// CPUTemplate is recorded whole, so a later change to a built-in
	// template cannot change what an existing image's guests see.
	CPUTemplate *cpuid.Template `json:"cpu_template,omitempty"`
	// TaskBuildID is the task binary's build ID (internal/buildid):
	// profiles from its instances must carry it.
	TaskBuildID string `json:"task_build_id,omitempty"`
	// Run is the image's TaskConfig, as packed. It is left out when zero,
	// so an image without one has the manifest it had before.
	Run TaskConfig `json:"run,omitzero"`
	// Trees are the directories packed beside the task, by path.
	Trees []Artifact `json:"trees,omitempty"`
}

func digest(name string, data []byte) Artifact {
	sum := sha256.Sum256(data)
	return Artifact{Name: name, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

// BuildImage writes dir/vmlinux, dir/initramfs.cpio.zst or .lz4 (/init, /task,
// the task's shared libraries at their paths, spec.Run at TaskConfigPath
// unless it is zero, and spec.Trees at their paths) and dir/manifest.json.
// The same inputs give the same bytes.
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
	if spec.Codec == "" {
		spec.Codec = CodecZstd
	}
	if spec.Codec != CodecZstd && spec.Codec != CodecLZ4 && spec.Codec != CodecNone {
		return nil, fmt.Errorf("image: codec %q: want zstd, lz4 or none", spec.Codec)
	}
	m := &Manifest{Format: ManifestFormat, Codec: spec.Codec, Cmdline: spec.Cmdline, Kernel: digest("vmlinux", kernel),
		Syscalls: nonNil(spec.Syscalls), KernelOptions: nonNil(spec.KernelOptions), CPUNeeds: nonNil(spec.CPUNeeds),
		CPUOptional: nonNil(spec.CPUOptional), CPUTemplate: spec.CPUTemplate}
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
	if id, err := buildid.File(spec.Task); err == nil {
		m.TaskBuildID = id
	}
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
	if err := packRunAndTrees(spec, m, &files); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	var cpio bytes.Buffer
	if err := WriteInitramfs(&cpio, files); err != nil {
		return nil, err
	}
	packed, err := compress(spec.Codec, cpio.Bytes())
	if err != nil {
		return nil, fmt.Errorf("image: %s: %w", spec.Codec, err)
	}
	m.Initramfs = digest(InitramfsName(spec.Codec), packed)
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	for name, data := range map[string][]byte{"vmlinux": kernel, m.Initramfs.Name: packed, "manifest.json": append(manifest, '\n')} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	return m, nil
}

// compress packs data with codec, deterministically: single-threaded,
// fixed window and level.
func compress(codec string, data []byte) ([]byte, error) {
	var out bytes.Buffer
	switch codec {
	case CodecNone:
		return data, nil
	case CodecLZ4:
		w := lz4.NewWriter(&out)
		if err := w.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level9), lz4.ConcurrencyOption(1)); err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	default:
		enc, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(8<<20), zstd.WithEncoderCRC(true))
		if err != nil {
			return nil, err
		}
		if _, err := enc.Write(data); err != nil {
			return nil, err
		}
		if err := enc.Close(); err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}

// ManifestDigest is the SHA-256 (hex) of dir/manifest.json: it names the
// digests of the image's other files, so it names the whole image (the
// reference kindlingd registers functions by).
func ManifestDigest(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
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

// BuildKernelImage writes an image whose guest is its kernel alone (a
// bespoke guest such as the echo guest: no /init, no task): dir/vmlinux,
// an empty initramfs and a manifest with empty init and task artifacts.
// Only the microVM backend can run it.
func BuildKernelImage(kernelPath, cmdline, dir string) (*Manifest, error) {
	kernel, err := os.ReadFile(kernelPath)
	if err != nil {
		return nil, fmt.Errorf("image: kernel: %w", err)
	}
	var cpio bytes.Buffer
	if err := WriteInitramfs(&cpio, nil); err != nil {
		return nil, err
	}
	m := &Manifest{Format: ManifestFormat, Codec: CodecNone, Cmdline: cmdline, Kernel: digest("vmlinux", kernel),
		Initramfs: digest(InitramfsName(CodecNone), cpio.Bytes()), Syscalls: []string{}, KernelOptions: []string{},
		CPUNeeds: []string{}, CPUOptional: []string{}}
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	for name, data := range map[string][]byte{"vmlinux": kernel, m.Initramfs.Name: cpio.Bytes(), "manifest.json": append(manifest, '\n')} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	return m, nil
}
