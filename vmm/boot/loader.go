package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kindlingvm/kindling/vmm/kvm"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Sentinel errors callers can test for.
var (
	ErrNotKernel = errors.New("not a bzImage or an ELF vmlinux with a PVH note")
	ErrTruncated = errors.New("truncated")
	ErrTooBig    = errors.New("does not fit")
)

// Config names what to boot.
type Config struct {
	Kernel  string // a bzImage, or an ELF vmlinux with a PVH entry note
	Initrd  string // optional
	Cmdline string
	VCPUs   int
}

// Protocols a kernel can be booted with.
const (
	ProtocolLinux = "linux-boot-protocol"
	ProtocolPVH   = "pvh"
)

// Entry is the boot vCPU's state at the kernel's entry point.
type Entry struct {
	Protocol string
	Regs     kvm.Regs
	long     bool // 64-bit entry (bzImage) rather than 32-bit (PVH)
}

// ApplySregs sets the segment and control registers for the entry, keeping
// the rest of s (KVM's reset values) as it is.
func (e *Entry) ApplySregs(s *kvm.Sregs) {
	if e.long {
		setupLong(s, selBootCS, selBootDS)
	} else {
		setupFlat32(s)
	}
}

// kernelImage is a parsed, validated kernel file.
type kernelImage interface {
	// end is the first guest address above the loaded kernel.
	end() uint64
	// initrdMax is the highest address an initrd byte may occupy, plus one.
	initrdMax() uint64
	// cmdlineMax is the longest command line (without its NUL) the kernel
	// accepts.
	cmdlineMax() int
	// load copies the kernel into memory and returns the entry state.
	load(mem *memory.Memory, p *plan) (*Entry, error)
}

// plan is where everything goes, decided before anything is written.
type plan struct {
	cfg        Config
	memSize    uint64
	initrdAddr uint64
	initrdSize uint64
	initrd     *os.File
}

// Check validates cfg against a guest of memSize bytes without loading it:
// the same checks Load makes, for a CLI that wants bad input reported before
// it starts a VMM.
func Check(cfg Config, memSize uint64) error {
	p, img, err := prepare(cfg, memSize)
	if p != nil && p.initrd != nil {
		p.initrd.Close()
	}
	_ = img
	return err
}

// Load loads cfg's kernel, initrd and command line into mem and writes the
// boot tables, returning the boot vCPU's entry state.
func Load(mem *memory.Memory, cfg Config) (*Entry, error) {
	p, img, err := prepare(cfg, mem.Size())
	if err != nil {
		return nil, err
	}
	if p.initrd != nil {
		defer p.initrd.Close()
		if err := loadInitrd(mem, p); err != nil {
			return nil, err
		}
	}
	if err := writeCmdline(mem, cfg.Cmdline); err != nil {
		return nil, err
	}
	if err := writeMPTable(mem, cfg.VCPUs); err != nil {
		return nil, err
	}
	return img.load(mem, p)
}

func prepare(cfg Config, memSize uint64) (*plan, kernelImage, error) {
	if cfg.VCPUs < 1 || cfg.VCPUs > MaxVCPUs {
		return nil, nil, fmt.Errorf("vcpus %d out of range 1..%d", cfg.VCPUs, MaxVCPUs)
	}
	img, err := openKernel(cfg.Kernel, memSize)
	if err != nil {
		return nil, nil, err
	}
	if n := len(cfg.Cmdline); n > img.cmdlineMax() {
		return nil, nil, fmt.Errorf("kernel command line is %d bytes; this kernel accepts at most %d", n, img.cmdlineMax())
	}
	if bytes.IndexByte([]byte(cfg.Cmdline), 0) >= 0 {
		return nil, nil, fmt.Errorf("kernel command line contains a NUL byte")
	}
	p := &plan{cfg: cfg, memSize: memSize}
	if cfg.Initrd != "" {
		if err := placeInitrd(p, img); err != nil {
			return p, nil, err
		}
	}
	return p, img, nil
}

// openKernel reads and validates the kernel file.
func openKernel(path string, memSize uint64) (kernelImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", path, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("kernel %s: is a directory", path)
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("kernel %s: empty file", path)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	switch {
	case isBzImage(data):
		return parseBzImage(path, data, memSize)
	case bytes.HasPrefix(data, []byte("\x7fELF")):
		return parsePVH(path, data, memSize)
	}
	n := min(len(data), 8)
	return nil, fmt.Errorf("kernel %s: %w (first bytes % x)", path, ErrNotKernel, data[:n])
}
