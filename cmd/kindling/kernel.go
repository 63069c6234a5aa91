package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kindlingvm/kindling/kernelbuilder"
)

const kernelUsage = `usage: kindling kernel build --for BINARY [--for BINARY]... [-o DIR] [--emulated-cpl0=auto|true|false]
       kindling kernel explain --for BINARY [--for BINARY]... [--json]
       kindling kernel build --option CONFIG_X=y [--option ...] [--patch FILE]... [--target vmlinux|bzImage]...
       kindling kernel build-test [--emulated-cpl0=auto|true|false] [--cache DIR]

build --for analyses each binary (the task, and anything else the guest
runs, such as its /init) for the system calls and socket families it may
use, and builds tinyconfig + the VM essentials + exactly the options those
need. explain prints that option set without building: each option by its
CONFIG_ name with the system calls or needs that pulled it in, then what
the analysis could not resolve. build --option builds any option set;
build-test builds the kernel the VMM's tests boot.

On hosts that emulate guest kernel mode (auto asks 'kindling host check')
kernels carry patches that keep them off instructions KVM's emulator lacks.
Builds are cached by a hash of source, options and patches under
$XDG_CACHE_HOME/kindling (default ~/.cache/kindling); the artefact directory
(or -o DIR, which gets copies) is the last line of stdout, progress goes to
stderr.
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
	case "build-test", "build", "explain":
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
	var options, patches, targets, binaries stringList
	fs.Var(&binaries, "for", "build, explain: a `binary` the guest runs, analysed for the options it needs (repeatable)")
	outDir := fs.String("o", "", "build --for: copy vmlinux, bzImage, config and kernel.txt (the explanation) into `dir`")
	asJSON := fs.Bool("json", false, "explain: print the analysis reports and options as JSON")
	fs.Var(&options, "option", "build: a Kconfig `CONFIG_NAME=value` on top of tinyconfig (repeatable)")
	fs.Var(&patches, "patch", "build: a unified diff `file` to apply with patch -p1 (repeatable)")
	fs.Var(&targets, "target", "build: vmlinux or bzImage (repeatable; default both)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	var spec kernelbuilder.Spec
	var plan *kernelbuilder.TaskPlan
	if args[0] == "explain" || len(binaries) > 0 {
		if len(binaries) == 0 {
			return badInput(fmt.Errorf("kernel explain: give the task with --for BINARY"))
		}
		var err error
		if plan, err = kernelbuilder.PlanFiles(binaries...); err != nil {
			return badInput(err)
		}
		if args[0] == "explain" {
			if *asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"reports": plan.Reports, "options": plan.Why, "warnings": plan.Warnings, "table_version": plan.Table.Version})
			}
			fmt.Print(plan.Explain())
			return nil
		}
	}
	if args[0] == "build-test" || plan != nil {
		emu, err := parseEmulatedCPL0(*emulated, "kernel "+args[0])
		if err != nil {
			return err
		}
		if plan != nil {
			spec = plan.Spec(emu)
			for _, o := range options {
				opt, err := kernelbuilder.ParseOption(o)
				if err != nil {
					return badInput(err)
				}
				spec.Options = append(spec.Options, opt)
			}
		} else {
			spec = kernelbuilder.TestKernelSpec(emu)
		}
	} else {
		if len(options) == 0 {
			return badInput(fmt.Errorf("kernel build: give the task with --for BINARY, or options with --option CONFIG_NAME=value"))
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
	if *outDir != "" {
		if err := copyArtifacts(art, *outDir, plan); err != nil {
			return err
		}
		fmt.Println(*outDir)
		return nil
	}
	fmt.Println(art.Dir)
	return nil
}

// copyArtifacts puts a build's kernel images and config (and, for a task
// kernel, the explanation) into dir.
func copyArtifacts(art *kernelbuilder.Artifacts, dir string, plan *kernelbuilder.TaskPlan) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("kernel build -o: %w", err)
	}
	for _, p := range []string{art.Vmlinux, art.BzImage, art.Config} {
		if p == "" {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o644); err != nil {
			return fmt.Errorf("kernel build -o: %w", err)
		}
	}
	if plan != nil {
		return os.WriteFile(filepath.Join(dir, "kernel.txt"), []byte(plan.Explain()), 0o644)
	}
	return nil
}
