// Command demo is `make demo`: it runs every stage of Kindling that this
// host can run for real, in order, and names each stage it cannot run and
// why. Stages: host check, test kernel build (cached), initramfs, Linux boot
// in Kindling's VMM through its API, guest user space, a kernel planned for
// a task, an image of the bundled aws-lambda-go example (examples/hello),
// one invocation of it in a microVM, the same function served by kindlingd
// (register, cold invocation, prewarm, warm invocation), benchmark vs QEMU.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kindlingvm/kindling/internal/testinit"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
	"github.com/kindlingvm/kindling/vmm/launch"
)

func stage(n int, name string) {
	fmt.Printf("\n=== stage %d: %s\n", n, name)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	stage(1, "host check (kindling host check)")
	report, err := hostcheck.Run()
	if err != nil {
		return err
	}
	report.Print(os.Stdout)
	if !report.KVM.OK {
		return fmt.Errorf("no usable KVM here: every later stage needs it")
	}

	stage(2, "test kernel: tinyconfig + the VM fragment, built once and cached")
	ctx := context.Background()
	art, err := kernelbuilder.Build(ctx, kernelbuilder.TestKernelSpec(report.EmulatesCPL0()), kernelbuilder.BuildOptions{Progress: os.Stdout})
	if err != nil {
		return err
	}
	fmt.Printf("kernel: %s (cached: %v)\n", art.Vmlinux, art.Cached)

	stage(3, "initramfs with a static /init")
	dir, err := os.MkdirTemp("", "kindling-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	initrd, err := testinit.BuildInitramfs(dir)
	if err != nil {
		return err
	}
	fmt.Printf("initramfs: %s\n", initrd)

	stage(4, "boot Linux (PVH vmlinux) in kindling-vmm, driven through its API")
	cmdline := "console=ttyS0 reboot=k panic=-1"
	if report.EmulatesCPL0() {
		cmdline += " " + kernelbuilder.EmulatedCPL0Cmdline()
		fmt.Println("this host emulates guest kernel mode: expect minutes, not milliseconds, and the HOST.md command line")
	}
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		return err
	}
	cfg := vmm.Config{Kernel: art.Vmlinux, Initrd: initrd, Cmdline: cmdline, MemoryMiB: 256, VCPUs: 1,
		Disks: []vmm.Disk{{Path: disk}}}
	const handoffLine = "Run /init as init process"
	con := newWatcher(os.Stdout, handoffLine, testinit.Message)
	start := time.Now()
	p, err := launch.Start(ctx, cfg, launch.Options{ID: "demo", Stdout: con, Stderr: os.Stderr})
	if err != nil {
		return err
	}
	if err := p.Client.Start(ctx); err != nil {
		p.Kill()
		return err
	}
	st, err := p.Client.WaitStopped(ctx)
	p.Wait()
	if err != nil {
		return err
	}
	handoff, ok := con.when(handoffLine)
	if !ok {
		return fmt.Errorf("the kernel never reached the /init hand-off; VM stopped: %v", st.Exit)
	}
	fmt.Printf("\nreached the /init hand-off %.1f s after the VMM started; VM stopped: %s\n", handoff.Sub(start).Seconds(), st.Exit)

	stage(5, "guest user space: /init prints a line")
	if !report.UserSpaceRuns() {
		fmt.Printf("NOT RUN: %s\n  This host's KVM cannot run a guest's user space (see ../shared/HOST.md), so /init\n  dies on its first system call and the kernel panics and reboots, as seen above.\n  On a VMX or SVM host this stage prints %q.\n", report.UserSyscalls.Detail, testinit.Message)
	} else if _, ok := con.when(testinit.Message); !ok {
		return fmt.Errorf("guest user space should run here, but /init never printed %q", testinit.Message)
	} else {
		fmt.Printf("ok: /init printed %q\n", testinit.Message)
	}

	stage(6, "a kernel for a task: analyse a Go HTTP server, derive its options, check them against Kconfig")
	task, err := testtasks.Build(dir, testtasks.GoHTTP)
	if err != nil {
		return err
	}
	plan, err := kernelbuilder.PlanFiles(task)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(plan.Explain(), "\n") {
		if !strings.HasPrefix(line, "#   ") { // the per-syscall lines: see kindling kernel explain
			fmt.Println(line)
		}
	}
	kcfg, err := kernelbuilder.Configure(ctx, plan.Spec(report.EmulatesCPL0()), kernelbuilder.BuildOptions{})
	if err != nil {
		return err
	}
	y := 0
	for _, v := range kcfg {
		if v == "y" {
			y++
		}
	}
	fmt.Printf("olddefconfig kept all %d requested options; %d options are =y in all (make bench-kernels builds and sizes it)\n", len(plan.Why), y)

	self, err := os.Executable()
	if err != nil {
		return err
	}
	binDir := filepath.Dir(self)
	kindling := filepath.Join(binDir, "kindling")

	stage(7, "task image for an aws-lambda-go handler (examples/hello): kindling image build (its own kernel, cached)")
	handler := filepath.Join(dir, "hello")
	gobuild := exec.Command("go", "build", "-o", handler, "github.com/kindlingvm/kindling/examples/hello")
	gobuild.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := gobuild.CombinedOutput(); err != nil {
		return fmt.Errorf("stage 7: go build ./examples/hello: %v\n%s", err, out)
	}
	fmt.Printf("handler: %s (go build ./examples/hello, CGO_ENABLED=0)\n", handler)
	img := filepath.Join(dir, "image")
	build := exec.Command(kindling, "image", "build", "--task", handler, "-o", img)
	build.Stdout, build.Stderr = os.Stdout, os.Stdout
	if err := build.Run(); err != nil {
		return fmt.Errorf("stage 7: kindling image build: %w", err)
	}

	stage(8, "invoke it in a microVM: kindling invoke")
	if !report.UserSpaceRuns() {
		fmt.Printf("NOT RUN: %s\n  kindling-init is guest user space, which this host cannot run (../shared/HOST.md);\n  the guest agent's own tests run it as a host process instead. On a VMX or SVM host\n  this stage prints the handler's response and the time of each phase.\n", report.UserSyscalls.Detail)
	} else {
		inv := exec.Command(kindling, "invoke", "--image", img, "--payload", `{"name":"Kindling microVM"}`)
		inv.Stdout, inv.Stderr = os.Stdout, os.Stdout
		if err := inv.Run(); err != nil {
			return fmt.Errorf("invoke: %w", err)
		}
	}

	stage(9, "kindlingd: register, invoke cold, prewarm, invoke warm")
	if err := kindlingdStage(binDir, img); err != nil {
		return fmt.Errorf("stage 9 (kindlingd): %w", err)
	}

	stage(10, "benchmark: start-up and memory vs QEMU microvm, same host, same run")
	bench := filepath.Join(binDir, "kindling-bench")
	if _, err := os.Stat(bench); err != nil {
		return fmt.Errorf("stage 10: %s missing: run make build", bench)
	}
	cmd := exec.Command(bench, "-runs", "10")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("stage 10: kindling-bench: %w", err)
	}
	return nil
}

// watcher passes console output through and notes when each awaited line
// first appeared.
type watcher struct {
	out  io.Writer
	mu   sync.Mutex
	buf  strings.Builder
	want []string
	seen map[string]time.Time
}

func newWatcher(out io.Writer, want ...string) *watcher {
	return &watcher{out: out, want: want, seen: map[string]time.Time{}}
}

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	for _, s := range w.want {
		if _, ok := w.seen[s]; !ok && strings.Contains(w.buf.String(), s) {
			w.seen[s] = time.Now()
		}
	}
	w.mu.Unlock()
	return w.out.Write(p)
}

// when returns when s appeared, and whether it did.
func (w *watcher) when(s string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.seen[s]
	return t, ok
}
