// Package profiler samples a task's CPU with perf_event_open and turns the
// samples into pprof profiles symbolised from the task binary, fit for
// `go build -pgo`.
//
// Start runs the task with one software cpu-clock event per online CPU,
// attached while the task is stopped right after its execve and inherited
// by every thread and child process it makes; the kernel walks each
// sample's user stack by frame pointers, and the two words at the top of
// the stack restore the caller of a leaf that had no frame (leaf.go). A
// background goroutine drains the per-CPU ring buffers and attributes
// every address to the file mapped there, following the processes' mmap,
// fork, exec and exit records in time order. Collect symbolises the
// addresses in the task binary from DWARF, with inlined calls expanded
// into frames, or from .gopclntab, or from the ELF symbol table; other
// mappings (shared libraries, the vdso) keep bare addresses.
//
// The package only observes: after Start has let the task go it never
// stops it, writes its memory or changes its scheduling. Time the task
// spends in the kernel is not sampled.
//
// Overhead: at DefaultFrequency (99 Hz) the samples themselves cost the
// task about 0.2% more CPU time; per-task events also add a fixed cost to
// each of its context switches, which on a busy machine brought the total
// to between 0.3% and 1.6%, usually under 1%. Measured with
//
//	go test -run '^$' -bench Overhead -benchtime 10x -count 5 ./agent/profiler/
//
// on a 2-vCPU x86-64 Firecracker VM (Linux 6.18) that other builds kept at
// a load average of 3 to 7: nine runs reported medians of 0.34, 0.39,
// 0.57, 0.94, 0.94, 0.95, 1.25, 1.55 and 1.63%. A sweep in the same
// conditions gave 0.5% at 1 Hz, 0.3% at 49 Hz, 0.5% at 99 Hz, 1.5% at
// 499 Hz and 4.2% at 1999 Hz: about 18 µs per sample, 0.2% at 99 Hz; the
// rest is the context-switch cost, independent of the rate, which the
// load here made frequent (about 1100 involuntary switches a run) and a
// task alone in its VM would pay less often (not measured). Start and
// Close cost 0.7 ms of CPU.
package profiler
