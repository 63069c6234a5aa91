package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/cpuid/isa"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/rootfs"
)

const imageUsage = `usage: kindling image build --task BINARY -o DIR [--init PATH] [--codec auto|zstd|lz4|none] [--cpu-template auto|NAME|FILE] [--emulated-cpl0=auto|true|false]

Builds a task image: the task's own kernel (analysed from the task and
kindling-init, built once and cached), initramfs.cpio.zst holding
kindling-init as /init, the task as /task and its shared libraries, and
manifest.json (digests, sizes, syscalls, kernel options, the task's
instruction-set needs and its CPU template, chosen for this host). Two builds of the
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
	cpuTemplate := fs.String("cpu-template", "auto", "the CPU the image runs on: a built-in template, a JSON file, or auto (the smallest built-in one giving the task what it requires on this host)")
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
	needs, tmpl, err := chooseCPU(*task, *cpuTemplate)
	if err != nil {
		return err
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
		Syscalls: plan.Reports[0].Names(), KernelOptions: opts, Codec: *codec,
		CPUNeeds: needs.Required(), CPUOptional: needs.Optional(), CPUTemplate: tmpl}, *out)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "image: kernel %.1f MiB, initramfs %.1f MiB (%s, %d libraries), %d syscalls, %d kernel options, CPU template %s\n",
		float64(m.Kernel.Size)/(1<<20), float64(m.Initramfs.Size)/(1<<20), m.Codec, len(m.Libraries), len(m.Syscalls), len(m.KernelOptions), tmpl.Name)
	fmt.Println(*out)
	return nil
}

// chooseCPU analyses the task's instruction-set needs and picks its CPU
// template: the named one, checked against what the task requires on
// this host, or with "auto" the smallest built-in one that fits.
func chooseCPU(task, name string) (*isa.Report, *cpuid.Template, error) {
	needs, err := isa.File(task)
	if err != nil {
		return nil, nil, badInput(err)
	}
	host, hostErr := cpuid.Supported()
	if name == "auto" {
		if hostErr != nil {
			return nil, nil, fmt.Errorf("image build: read this host's supported CPUID to choose a CPU template: %w (or name one with --cpu-template)", hostErr)
		}
		ch, err := cpuid.Select(host, needs.Required(), needs.Optional())
		if err != nil {
			return nil, nil, fmt.Errorf("image build: %w", err)
		}
		if len(ch.HiddenOptional) > 0 {
			fmt.Fprintf(os.Stderr, "image: CPU template %s hides the task's optional %s (their runtime-dispatched paths fall back)\n",
				ch.Template.Name, strings.Join(ch.HiddenOptional, ", "))
		}
		return needs, ch.Template, nil
	}
	t, err := cpuid.Load(name)
	if err != nil {
		return nil, nil, badInput(err)
	}
	if hostErr != nil {
		fmt.Fprintf(os.Stderr, "image: cannot read this host's CPUID (%v): CPU template %s not checked against it\n", hostErr, t.Name)
		return needs, t, nil
	}
	applied, err := t.Apply(host)
	if err != nil {
		return nil, nil, fmt.Errorf("image build: %w", err)
	}
	var hidden []string
	for _, r := range needs.Required() {
		if f := cpuid.Lookup(r); f == nil || !applied.Has(f) {
			hidden = append(hidden, r)
		}
	}
	if len(hidden) > 0 {
		return nil, nil, fmt.Errorf("image build: CPU template %s hides %s, which the task requires (kindling cpu needs %s says why); pick another or --cpu-template auto",
			t.Name, strings.Join(hidden, ", "), task)
	}
	return needs, t, nil
}
