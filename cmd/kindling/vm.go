package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api/client"
	"github.com/kindlingvm/kindling/vmm/launch"
)

const vmUsage = `usage: kindling vm run --kernel FILE [flags]
       kindling vm restore --from DIR [--prefetch] [--disk F[:ro]]... [--vsock-path P] [--console C] [--timeout D]
       kindling vm snapshot --api-sock PATH --dir DIR [--diff] [--resume]
       kindling vm workingset --api-sock PATH --dir DIR
       kindling vm status|pause|resume|stop|metrics --api-sock PATH

'vm run' starts a kindling-vmm process, boots the kernel through its API and
streams the guest's serial console to stdout until the VM stops. It exits 0
when the guest resets or powers off (or on --timeout / Ctrl-C, which stop
the VM), 1 when the guest crashed or the VMM failed, 2 on bad input.

'vm snapshot' pauses a running VM and writes a full snapshot to DIR (state
file plus sparse memory file); 'vm restore' starts a new kindling-vmm from
it and streams the console as 'vm run' does. 'vm workingset' records, beside
the snapshot a VM was restored from, the guest pages it has touched; later
'vm restore --prefetch' maps those in before the guest runs (REAP). The
other verbs drive a VM that is already running, through its socket.
`

func vmMain(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, vmUsage)
		return exitError{2}
	}
	switch args[0] {
	case "run":
		return vmRun(args[1:])
	case "restore":
		return vmRestore(args[1:])
	case "snapshot":
		return vmSnapshot(args[1:])
	case "workingset":
		return vmWorkingSet(args[1:])
	case "status", "pause", "resume", "stop", "metrics":
		return vmControl(args[0], args[1:])
	case "-h", "--help", "help":
		fmt.Print(vmUsage)
		return nil
	}
	fmt.Fprint(os.Stderr, vmUsage)
	return fmt.Errorf("vm: unknown verb %q", args[0])
}

// diskFlags collects repeated --disk PATH[:ro] flags.
type diskFlags []vmm.Disk

func (d *diskFlags) String() string { return "" }

func (d *diskFlags) Set(v string) error {
	*d = append(*d, vmm.ParseDisk(v))
	return nil
}

func vmRun(args []string) error {
	fs := flag.NewFlagSet("kindling vm run", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: kindling vm run --kernel FILE [--initrd FILE] [--cmdline ARGS] [--mem SIZE] [--vcpus N] [--disk FILE[:ro]]... [--vsock CID:PATH]\n\n")
		fs.PrintDefaults()
	}
	kernel := fs.String("kernel", "", "kernel `file`: a bzImage, or an ELF vmlinux with a PVH entry note")
	initrd := fs.String("initrd", "", "initramfs `file` (cpio, optionally compressed)")
	cmdline := fs.String("cmdline", "console=ttyS0 reboot=k panic=-1", "kernel command line; virtio_mmio.device= arguments for --disk are added")
	mem := fs.String("mem", "256M", "guest memory `size` (K, M, G suffixes; M if none)")
	vcpus := fs.Int("vcpus", 1, "number of vCPUs")
	var disks diskFlags
	fs.Var(&disks, "disk", "virtio-blk disk backed by `FILE`; FILE:ro for read-only (repeatable)")
	vsockFlag := fs.String("vsock", "", "virtio-vsock device `CID:PATH`: host processes connect to PATH and write \"CONNECT <port>\\n\"; guest connections to host port P reach PATH_P")
	rf := addRunFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("vm run: unexpected argument %q", fs.Arg(0)))
	}
	if *kernel == "" {
		return badInput(fmt.Errorf("vm run: --kernel is required"))
	}
	memMiB, err := vmm.ParseSize(*mem)
	if err != nil {
		return badInput(fmt.Errorf("--mem: %w", err))
	}
	cfg := vmm.Config{Kernel: *kernel, Initrd: *initrd, Cmdline: *cmdline, MemoryMiB: memMiB,
		VCPUs: *vcpus, Disks: disks, Console: *rf.console}
	if *vsockFlag != "" {
		if cfg.Vsock, err = vmm.ParseVsock(*vsockFlag); err != nil {
			return badInput(err)
		}
	}
	if err := vmm.Check(cfg); err != nil {
		return badInput(err)
	}

	return launchAndWait(cfg, launch.Options{ID: *rf.id, Stdout: os.Stdout}, *rf.verbose, *rf.timeout)
}

// launchAndWait starts kindling-vmm, boots (or resumes) the VM through its
// API, and waits for it to stop, reporting the exit reason.
func launchAndWait(cfg vmm.Config, opt launch.Options, verbose bool, timeout time.Duration) error {
	ctx := context.Background()
	if verbose {
		opt.Stderr = os.Stderr
	}
	p, err := launch.Start(ctx, cfg, opt)
	if err != nil {
		return badInput(err)
	}
	if err := p.Client.Start(ctx); err != nil {
		p.Kill()
		return err
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	var deadline <-chan time.Time
	if timeout > 0 {
		deadline = time.After(timeout)
	}
	done := make(chan vmm.Status, 1)
	go func() {
		st, err := p.Client.WaitStopped(ctx)
		if err != nil {
			st = vmm.Status{State: vmm.StateStopped}
		}
		done <- st
	}()
	var st vmm.Status
	select {
	case st = <-done:
	case <-stop:
		st, _ = p.Client.Stop(ctx)
	case <-deadline:
		fmt.Fprintf(os.Stderr, "kindling: --timeout %v reached, stopping the VM\n", timeout)
		st, _ = p.Client.Stop(ctx)
	}
	code := p.Wait()
	if st.Exit != nil {
		fmt.Fprintf(os.Stderr, "kindling: vm stopped: %s\n", st.Exit)
	} else if code != 0 {
		fmt.Fprintf(os.Stderr, "kindling: %s exited with status %d\n", launch.BinaryName, code)
	}
	if code != 0 {
		return exitError{1}
	}
	return nil
}

func vmRestore(args []string) error {
	fs := flag.NewFlagSet("kindling vm restore", flag.ContinueOnError)
	from := fs.String("from", "", "snapshot `dir` written by 'kindling vm snapshot'")
	prefetch := fs.Bool("prefetch", false, "map the snapshot's recorded working set in before the guest runs")
	var disks diskFlags
	fs.Var(&disks, "disk", "host `FILE` for the snapshot's next disk, overriding its path (repeat per disk, in order)")
	vsockPath := fs.String("vsock-path", "", "Unix socket `path` for the snapshot's vsock device (the original VM may still hold its own)")
	rf := addRunFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *from == "" {
		return badInput(fmt.Errorf("vm restore: --from is required"))
	}
	var vs *vmm.Vsock
	if *vsockPath != "" {
		vs = &vmm.Vsock{Path: *vsockPath}
	}
	return launchAndWait(vmm.Config{Console: *rf.console, Disks: disks, Vsock: vs}, launch.Options{ID: *rf.id, Stdout: os.Stdout, Restore: *from, Prefetch: *prefetch}, *rf.verbose, *rf.timeout)
}

func vmSnapshot(args []string) error {
	fs := flag.NewFlagSet("kindling vm snapshot", flag.ContinueOnError)
	sock := fs.String("api-sock", "", "the VM's control socket `path`")
	dir := fs.String("dir", "", "snapshot `dir` to write (created if missing)")
	resume := fs.Bool("resume", false, "resume the VM after the snapshot (default: leave it paused)")
	diff := fs.Bool("diff", false, "write only the pages changed since this VM's last snapshot (restoring needs that one too)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sock == "" || *dir == "" {
		return badInput(fmt.Errorf("vm snapshot: --api-sock and --dir are required"))
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return badInput(err)
	}
	c := client.New(*sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if st.State == vmm.StateRunning {
		if err := c.Pause(ctx); err != nil {
			return err
		}
	}
	take := c.Snapshot
	if *diff {
		take = c.SnapshotDiff
	}
	info, err := take(ctx, abs)
	if err != nil {
		return err
	}
	if *resume {
		if err := c.Resume(ctx); err != nil {
			return err
		}
	}
	fmt.Printf("snapshot %s: %d MiB of guest memory, %d KiB written, %v\n", info.Dir, info.MemoryBytes>>20, info.WrittenBytes>>10, info.Took)
	return nil
}

func vmWorkingSet(args []string) error {
	fs := flag.NewFlagSet("kindling vm workingset", flag.ContinueOnError)
	sock := fs.String("api-sock", "", "the restored VM's control socket `path`")
	dir := fs.String("dir", "", "the snapshot `dir` the VM was restored from")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sock == "" || *dir == "" {
		return badInput(fmt.Errorf("vm workingset: --api-sock and --dir are required"))
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return badInput(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pages, err := client.New(*sock).RecordWorkingSet(ctx, abs)
	if err != nil {
		return err
	}
	fmt.Printf("working set of %s: %d pages (%d KiB)\n", abs, pages, pages*4)
	return nil
}

// runFlags are the flags of the verbs that run a VM in the foreground.
type runFlags struct {
	console *string
	timeout *time.Duration
	id      *string
	verbose *bool
}

func addRunFlags(fs *flag.FlagSet) runFlags {
	return runFlags{
		console: fs.String("console", "stdout", "where the serial console goes: stdout, none, or a file path"),
		timeout: fs.Duration("timeout", 0, "stop the VM after this long (0: run until the guest stops)"),
		id:      fs.String("id", "", "VM name for logs"),
		verbose: fs.Bool("v", false, "show the VMM's logs"),
	}
}

// parseFlags parses args, passing --help through and turning any other
// flag error (already printed by the flag package) into exit status 2.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return exitError{2}
	}
	return nil
}

// badInput prints err as the one line it is and exits 2.
func badInput(err error) error {
	fmt.Fprintf(os.Stderr, "kindling: %v\n", err)
	return exitError{2}
}

func vmControl(verb string, args []string) error {
	fs := flag.NewFlagSet("kindling vm "+verb, flag.ContinueOnError)
	sock := fs.String("api-sock", "", "the VM's control socket `path`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sock == "" {
		return badInput(fmt.Errorf("vm %s: --api-sock is required", verb))
	}
	c := client.New(*sock)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out any
	var err error
	switch verb {
	case "status":
		out, err = c.Status(ctx)
	case "pause":
		if err = c.Pause(ctx); err == nil {
			out, err = c.Status(ctx)
		}
	case "resume":
		if err = c.Resume(ctx); err == nil {
			out, err = c.Status(ctx)
		}
	case "stop":
		out, err = c.Stop(ctx)
	case "metrics":
		out, err = c.Metrics(ctx)
	}
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
