package boot_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/vmm/boot"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// The real 6.12 test kernel, as vmlinux (PVH) and bzImage, loads and is
// recognised for what it is. Runs where the Linux boot test runs
// (KINDLING_LINUX_TEST=1, as make test sets, or KINDLING_TEST_KERNEL_DIR).
func TestLoadRealKernels(t *testing.T) {
	dir := os.Getenv("KINDLING_TEST_KERNEL_DIR")
	if dir == "" {
		if os.Getenv("KINDLING_LINUX_TEST") == "" || testing.Short() {
			t.Skip("skipping: set KINDLING_LINUX_TEST=1 (make test does) to build the test kernel, or KINDLING_TEST_KERNEL_DIR")
		}
		r, err := hostcheck.Run()
		if err != nil {
			t.Fatal(err)
		}
		art, err := kernelbuilder.Build(context.Background(), kernelbuilder.TestKernelSpec(r.EmulatesCPL0()), kernelbuilder.BuildOptions{Progress: os.Stderr})
		if err != nil {
			t.Fatal(err)
		}
		dir = art.Dir
	}
	for name, proto := range map[string]string{"vmlinux": boot.ProtocolPVH, "bzImage": boot.ProtocolLinux} {
		mem, err := memory.New(128<<20, memory.Options{})
		if err != nil {
			t.Fatal(err)
		}
		e, err := boot.Load(mem, boot.Config{Kernel: filepath.Join(dir, name), Cmdline: "console=ttyS0", VCPUs: 2})
		mem.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if e.Protocol != proto {
			t.Errorf("%s loaded as %s, want %s", name, e.Protocol, proto)
		}
	}
}
