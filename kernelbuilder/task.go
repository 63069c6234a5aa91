package kernelbuilder

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kindlingvm/kindling/kernelbuilder/analyze"
	"github.com/kindlingvm/kindling/kernelbuilder/syscalls"
)

// essential is an option every task kernel gets, with the reason.
type essential struct {
	name, why string
}

// vmEssentials are what any Kindling microVM needs whatever the task: the
// boot entry, a console, the devices the VMM offers, the initramfs with its
// compression, and /init's file systems. Syscall families are not here:
// the task's analysis brings those.
var vmEssentials = []essential{
	{"CONFIG_64BIT", "VM essential: x86-64 kernel"},
	{"CONFIG_PVH", "VM essential: PVH boot entry (the VMM loads vmlinux directly)"},
	{"CONFIG_HYPERVISOR_GUEST", "VM essential: paravirtual guest support"},
	{"CONFIG_PARAVIRT", "VM essential: paravirtual guest support"},
	{"CONFIG_KVM_GUEST", "VM essential: KVM clock and paravirtual features"},
	{"CONFIG_SMP", "VM essential: more than one vCPU"},
	{"CONFIG_X86_LOCAL_APIC", "VM essential: in-kernel irqchip"},
	{"CONFIG_X86_X2APIC", "VM essential: in-kernel irqchip"},
	{"CONFIG_PRINTK", "VM essential: kernel messages on the serial console"},
	{"CONFIG_PRINTK_TIME", "VM essential: boot-phase timings in the console log"},
	{"CONFIG_TTY", "VM essential: serial console"},
	{"CONFIG_SERIAL_8250", "VM essential: serial console (16550A on 0x3f8)"},
	{"CONFIG_SERIAL_8250_CONSOLE", "VM essential: serial console"},
	{"CONFIG_VIRTIO_MENU", "VM essential: virtio devices"},
	{"CONFIG_VIRTIO", "VM essential: virtio devices"},
	{"CONFIG_VIRTIO_MMIO", "VM essential: the VMM's virtio-mmio transport"},
	{"CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "VM essential: devices announced with virtio_mmio.device="},
	{"CONFIG_NET", "VM essential: vsock to the host"},
	{"CONFIG_VSOCKETS", "VM essential: vsock to the host (invocations)"},
	{"CONFIG_VIRTIO_VSOCKETS", "VM essential: virtio-vsock device"},
	{"CONFIG_BLK_DEV_INITRD", "VM essential: initramfs"},
	{"CONFIG_RD_ZSTD", "VM essential: zstd-compressed initramfs"},
	{"CONFIG_RD_LZ4", "VM essential: LZ4 initramfs (where guest kernel mode is emulated, zstd's BMI2 code cannot run)"},
	{"CONFIG_BINFMT_ELF", "VM essential: run /init and the task"},
	{"CONFIG_PROC_FS", "VM essential: /init mounts /proc"},
	{"CONFIG_SYSFS", "VM essential: /init mounts /sys"},
	{"CONFIG_DEVTMPFS", "VM essential: /dev"},
	{"CONFIG_DEVTMPFS_MOUNT", "VM essential: /dev mounted before /init"},
	{"CONFIG_SHMEM", "VM essential: tmpfs for /tmp"},
	{"CONFIG_TMPFS", "VM essential: /init mounts /tmp"},
	{"CONFIG_KERNEL_LZ4", "VM essential: fast bzImage decompression"},
}

// profilingOptions are what the guest agent's CPU sampler needs of a task
// kernel when an image is built with profiling on: software cpu-clock
// events with user-space call chains, and a few bytes of the user stack
// per sample. All of that comes with perf events themselves (on x86 the
// user call chain is a walk of the task's frame pointers, and cpu-clock
// runs on hrtimers, which every kernel has; at the sampler's 99 Hz the
// 250 Hz tick times them without CONFIG_HIGH_RES_TIMERS).
//
// x86 selects CONFIG_PERF_EVENTS whatever else is configured
// (arch/x86/Kconfig, config X86), so no x86-64 kernel is without it and
// leaving it out of a plan does not take it out of the kernel; and the
// analysis asks for it wherever a binary the guest runs can call
// perf_event_open (kindling-init, which links the sampler, can). Profiling
// names it all the same, so that its need is recorded with its reason
// and checked after olddefconfig like any other option.
var profilingOptions = []essential{
	{"CONFIG_PERF_EVENTS", "profiling on: the guest agent samples the task with perf_event_open"},
}

// ProfilingOptions are the options EnableProfiling adds.
func ProfilingOptions() []Option {
	out := make([]Option, len(profilingOptions))
	for i, e := range profilingOptions {
		out[i] = Option{Name: e.name, Value: "y"}
	}
	return out
}

// adminOnly are options behind system calls no task needs in a microVM:
// loading modules, kexec, swap, accounting, NUMA placement, tracing. A
// conservative kernel (a task that could not be bounded) leaves them out.
var adminOnly = map[string]bool{
	"CONFIG_MODULES": true, "CONFIG_MODULE_UNLOAD": true, "CONFIG_KEXEC": true, "CONFIG_KEXEC_FILE": true,
	"CONFIG_SWAP": true, "CONFIG_BSD_PROCESS_ACCT": true, "CONFIG_NUMA": true, "CONFIG_MIGRATION": true,
	"CONFIG_QUOTACTL": true, "CONFIG_UPROBE_EVENTS": true, "CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS": true,
	"CONFIG_SYSFS_SYSCALL": true, "CONFIG_MODIFY_LDT_SYSCALL": true, "CONFIG_SECRETMEM": true,
}

// TaskPlan is a task kernel's option set, each option with why it is in.
type TaskPlan struct {
	Table   *syscalls.Table
	Reports []*analyze.Report
	// Why maps each requested option to the reasons it was requested.
	Why map[string][]string
	// Warnings are calls the task may make that no x86 kernel provides.
	Warnings []string
}

// PlanTask works out a kernel for the analysed binaries (the task, and
// whatever else runs in the guest, such as /init): tinyconfig, the VM
// essentials, and the options each system call and need requires.
func PlanTask(reports ...*analyze.Report) *TaskPlan {
	p := &TaskPlan{Table: syscalls.Default(), Reports: reports, Why: map[string][]string{}}
	for _, e := range vmEssentials {
		p.add(e.name, e.why)
	}
	for _, r := range reports {
		who := ""
		if len(reports) > 1 {
			who = " [" + filepath.Base(r.Path) + "]"
		}
		if r.Conservative {
			for _, s := range p.Table.Syscalls {
				for _, o := range s.Options {
					if !adminOnly[o] {
						p.add(o, "conservative (analysis could not bound the task)"+who)
					}
				}
			}
		}
		for _, s := range r.Syscalls {
			info, ok := p.Table.ByNr(s.Nr)
			if !ok {
				continue
			}
			if info.Missing {
				p.Warnings = append(p.Warnings, fmt.Sprintf("%s may call %s, which no x86-64 kernel provides (ENOSYS)", filepath.Base(r.Path), s.Name))
			}
			for _, o := range info.Options {
				p.add(o, "syscall "+s.Name+" ("+info.Source+")"+who)
			}
		}
		for _, n := range r.Needs {
			for _, o := range analyze.NeedOptions(n.Name) {
				p.add(o, "socket family "+n.Name+who)
			}
		}
	}
	return p
}

// PlanFiles analyses each binary and plans a kernel for all of them; an
// error is the first binary that cannot be analysed (bad input).
func PlanFiles(paths ...string) (*TaskPlan, error) {
	var reports []*analyze.Report
	for _, p := range paths {
		r, err := analyze.File(p)
		if err != nil {
			return nil, err
		}
		reports = append(reports, r)
	}
	return PlanTask(reports...), nil
}

// EnableProfiling adds what the guest agent's CPU sampler needs, each
// option with its reason, for an image built with profiling on.
func (p *TaskPlan) EnableProfiling() {
	for _, e := range profilingOptions {
		p.add(e.name, e.why)
	}
}

func (p *TaskPlan) add(option, why string) {
	for _, w := range p.Why[option] {
		if w == why {
			return
		}
	}
	p.Why[option] = append(p.Why[option], why)
}

// Options are the requested options, by name.
func (p *TaskPlan) Options() []Option {
	names := make([]string, 0, len(p.Why))
	for n := range p.Why {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]Option, len(names))
	for i, n := range names {
		out[i] = Option{Name: n, Value: "y"}
	}
	return out
}

// Spec is the build for this plan; on hosts that emulate guest kernel mode
// it carries the same patches as the test kernel (HOST.md).
func (p *TaskPlan) Spec(emulatedCPL0 bool) Spec {
	s := TestKernelSpec(emulatedCPL0)
	s.Options = p.Options()
	return s
}

// Explain renders the plan: each option by its full CONFIG_ name with the
// system calls or needs that pulled it in, then what was not resolved.
func (p *TaskPlan) Explain() string {
	var b strings.Builder
	for _, r := range p.Reports {
		fmt.Fprintf(&b, "# %s\n", r.Summary())
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "# note: %s\n", n)
		}
		for _, sc := range r.Syscalls {
			more := ""
			if sc.Count > 1 {
				more = fmt.Sprintf(" and %d more", sc.Count-1)
			}
			fmt.Fprintf(&b, "#   syscall %3d %-18s %s%s\n", sc.Nr, sc.Name, sc.Sites[0], more)
		}
		for _, n := range r.Needs {
			fmt.Fprintf(&b, "#   need %s: %s\n", n.Name, n.Sites[0])
		}
	}
	fmt.Fprintf(&b, "# kernel: tinyconfig (Linux %s table) + %d options\n", p.Table.Version, len(p.Why))
	for _, o := range p.Options() {
		whys := p.Why[o.Name]
		fmt.Fprintf(&b, "%s=y\n", o.Name)
		for _, w := range collapse(whys) {
			fmt.Fprintf(&b, "    <- %s\n", w)
		}
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(&b, "# warning: %s\n", w)
	}
	for _, r := range p.Reports {
		for _, u := range r.Unresolved {
			fmt.Fprintf(&b, "# unresolved: %s\n", u)
		}
	}
	return b.String()
}

// collapse joins "syscall a (f.c)" and "syscall b (f.c)" into
// "syscalls a, b (f.c)" so a popular option stays readable.
func collapse(whys []string) []string {
	bySource := map[string][]string{}
	var order []string
	var out []string
	for _, w := range whys {
		if !strings.HasPrefix(w, "syscall ") {
			out = append(out, w)
			continue
		}
		name, src, _ := strings.Cut(strings.TrimPrefix(w, "syscall "), " ")
		if _, ok := bySource[src]; !ok {
			order = append(order, src)
		}
		bySource[src] = append(bySource[src], name)
	}
	for _, src := range order {
		names := bySource[src]
		label := "syscall "
		if len(names) > 1 {
			label = "syscalls "
		}
		out = append(out, label+strings.Join(names, ", ")+" "+src)
	}
	return out
}
