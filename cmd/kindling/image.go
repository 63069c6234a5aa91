package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/rootfs"
)

const imageUsage = `usage: kindling image build --task BINARY -o DIR [--init PATH] [--codec auto|zstd|lz4|none] [--emulated-cpl0=auto|true|false]

Builds a task image: the task's own kernel (analysed from the task and
kindling-init, built once and cached), initramfs.cpio.zst holding
kindling-init as /init, the task as /task and its shared libraries, and
manifest.json (digests, sizes, syscalls, kernel options). Two builds of the
same inputs give the same bytes.
`

func imageMain(args []string) error {
	if len(args) == 0 || args[0] != "build" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Print(imageUsage)
			return nil
		}
		fmt.Fprint(os.Stderr, imageUsage)
		return exitError{2}
	}
	fs := flag.NewFlagSet("kindling image build", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), imageUsage); fs.PrintDefaults() }
	task := fs.String("task", "", "the task `binary` (x86-64 ELF)")
	out := fs.String("o", "", "output `dir`")
	initBin := fs.String("init", "", "kindling-init `binary` (default: kindling-init next to this program)")
	emulated := fs.String("emulated-cpl0", "auto", "build for a host that emulates guest kernel mode (auto asks 'kindling host check')")
	codec := fs.String("codec", "auto", "initramfs compression: zstd, lz4 or none (auto: zstd, or lz4 where guest kernel mode is emulated)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *task == "" || *out == "" {
		return badInput(fmt.Errorf("image build: --task and -o are required"))
	}
	if *initBin == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		*initBin = filepath.Join(filepath.Dir(self), "kindling-init")
		if _, err := os.Stat(*initBin); err != nil {
			return badInput(fmt.Errorf("image build: no kindling-init next to %s: run make build, or pass --init PATH", self))
		}
	}
	plan, err := kernelbuilder.PlanFiles(*task, *initBin)
	if err != nil {
		return badInput(err)
	}
	emu, err := parseEmulatedCPL0(*emulated, "image build")
	if err != nil {
		return err
	}
	art, err := kernelbuilder.Build(context.Background(), plan.Spec(emu), kernelbuilder.BuildOptions{Progress: os.Stderr})
	if err != nil {
		return err
	}
	cmdline := "console=ttyS0 reboot=k panic=-1"
	if emu {
		cmdline += " " + kernelbuilder.EmulatedCPL0Cmdline()
	}
	var opts []string
	for _, o := range plan.Options() {
		opts = append(opts, o.String())
	}
	if *codec == "auto" {
		*codec = rootfs.CodecZstd
		if emu {
			*codec = rootfs.CodecLZ4 // the kernel's zstd uses BMI2, which KVM's emulator lacks
		}
	}
	m, err := rootfs.BuildImage(rootfs.ImageSpec{Init: *initBin, Task: *task, Kernel: art.Vmlinux, Cmdline: cmdline,
		Syscalls: plan.Reports[0].Names(), KernelOptions: opts, Codec: *codec}, *out)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "image: kernel %.1f MiB, initramfs %.1f MiB (%s, %d libraries), %d syscalls, %d kernel options\n",
		float64(m.Kernel.Size)/(1<<20), float64(m.Initramfs.Size)/(1<<20), m.Codec, len(m.Libraries), len(m.Syscalls), len(m.KernelOptions))
	fmt.Println(*out)
	return nil
}
