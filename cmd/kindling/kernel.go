package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/kindlingvm/kindling/kernelbuilder"
)

const kernelUsage = `usage: kindling kernel build-test [--emulated-cpl0=auto|true|false] [--cache DIR]
       kindling kernel build --option CONFIG_X=y [--option ...] [--patch FILE]... [--target vmlinux|bzImage]...

build-test builds the kernel the VMM's tests boot: tinyconfig plus the VM
essentials, with the int3 self-test patched out on hosts that emulate guest
kernel mode (auto asks 'kindling host check'). build builds any option set.
Builds are cached by a hash of source, options and patches under
$XDG_CACHE_HOME/kindling (default ~/.cache/kindling); the artefact directory
is the last line of stdout, progress goes to stderr.
`

// stringList collects a repeated flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func kernelMain(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, kernelUsage)
		return exitError{2}
	}
	switch args[0] {
	case "build-test", "build":
	case "-h", "--help", "help":
		fmt.Print(kernelUsage)
		return nil
	default:
		fmt.Fprint(os.Stderr, kernelUsage)
		return fmt.Errorf("kernel: unknown verb %q", args[0])
	}
	fs := flag.NewFlagSet("kindling kernel "+args[0], flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), kernelUsage); fs.PrintDefaults() }
	cache := fs.String("cache", "", "cache `dir` (default $XDG_CACHE_HOME/kindling)")
	source := fs.String("source", "", "kernel source `tarball` (default the newest "+kernelbuilder.SourceGlob+")")
	jobs := fs.Int("j", 0, "parallel make jobs (default: one per CPU)")
	emulated := fs.String("emulated-cpl0", "auto", "build-test: apply the int3 self-test patch (auto: if this host emulates guest kernel mode)")
	var options, patches, targets stringList
	fs.Var(&options, "option", "build: a Kconfig `CONFIG_NAME=value` on top of tinyconfig (repeatable)")
	fs.Var(&patches, "patch", "build: a unified diff `file` to apply with patch -p1 (repeatable)")
	fs.Var(&targets, "target", "build: vmlinux or bzImage (repeatable; default both)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	var spec kernelbuilder.Spec
	if args[0] == "build-test" {
		var emu bool
		switch *emulated {
		case "true":
			emu = true
		case "false":
		case "auto":
			var err error
			if emu, err = hostEmulatesCPL0(); err != nil {
				return fmt.Errorf("kernel build-test: %w (pass --emulated-cpl0=true or false)", err)
			}
		default:
			return badInput(fmt.Errorf("--emulated-cpl0=%q: want auto, true or false", *emulated))
		}
		spec = kernelbuilder.TestKernelSpec(emu)
	} else {
		if len(options) == 0 {
			return badInput(fmt.Errorf("kernel build: give at least one --option CONFIG_NAME=value"))
		}
		for _, o := range options {
			opt, err := kernelbuilder.ParseOption(o)
			if err != nil {
				return badInput(err)
			}
			spec.Options = append(spec.Options, opt)
		}
		for _, p := range patches {
			data, err := os.ReadFile(p)
			if err != nil {
				return badInput(fmt.Errorf("patch: %w", err))
			}
			spec.Patches = append(spec.Patches, kernelbuilder.Patch{Name: p, Data: data})
		}
		spec.Targets = targets
	}
	spec.Source = *source
	art, err := kernelbuilder.Build(context.Background(), spec, kernelbuilder.BuildOptions{CacheDir: *cache, Jobs: *jobs, Progress: os.Stderr})
	if err != nil {
		return err
	}
	fmt.Println(art.Dir)
	return nil
}
