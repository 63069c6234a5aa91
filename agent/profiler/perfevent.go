package profiler

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file and records.go are the only ones that know perf_event_open's
// structs: the event attributes and the ring buffer here, the records'
// layouts there. The rest of the package speaks the Go types records.go
// decodes into.

const (
	// A CPU's ring buffer holds ringHold of samples at the sampling rate,
	// four drain intervals, so that the drain loop may be kept off a
	// busy CPU for a while without losing any, reckoning ringSampleBytes
	// a sample (about a 55-frame chain and the rest of the record). At 99 Hz
	// that is the minimum, 16 pages (64 KiB); at 5 kHz the maximum, 2
	// MiB. If the locked-memory limit (kernel.perf_event_mlock_kb, 516
	// KiB by default for a process without CAP_IPC_LOCK) refuses that,
	// openRings halves it down to minRingPages.
	ringHold        = time.Second
	ringSampleBytes = 512
	minRingPages    = 2
	defRingPages    = 16
	maxRingPages    = 512

	// stackDumpBytes of user stack are copied with each sample: the words
	// at SP and SP+8, where a leaf function that has no frame (or has
	// not yet pushed one) keeps its return address. See leaf.go.
	stackDumpBytes = 16

	// sampleType is what each PERF_RECORD_SAMPLE carries, in this order.
	sampleType = unix.PERF_SAMPLE_IP | unix.PERF_SAMPLE_TID | unix.PERF_SAMPLE_TIME |
		unix.PERF_SAMPLE_PERIOD | unix.PERF_SAMPLE_CALLCHAIN | unix.PERF_SAMPLE_STACK_USER

	// sampleIDBytes is the sample_id trailer that sample_id_all appends to
	// every other record: {pid, tid u32; time u64}, from sampleType's TID
	// and TIME bits.
	sampleIDBytes = 16

	// Call chain entries at or above contextMax are context markers
	// (PERF_CONTEXT_USER and friends: small negative numbers), not addresses.
	contextMax  = 1<<64 + unix.PERF_CONTEXT_MAX
	contextUser = 1<<64 + unix.PERF_CONTEXT_USER
)

// eventAttr describes the sampling event: CPU time of the task's threads
// in user mode, every periodNs, with user call chains and the side-band
// records (mmap, comm, fork, exit) that let addresses be attributed to the
// file mapped there.
func eventAttr(periodNs uint64, pages int, stackDump bool) unix.PerfEventAttr {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Sample: periodNs,
		Bits: unix.PerfBitInherit | unix.PerfBitExcludeKernel | unix.PerfBitExcludeHv |
			unix.PerfBitExcludeCallchainKernel | unix.PerfBitMmap | unix.PerfBitMmap2 |
			unix.PerfBitComm | unix.PerfBitCommExec | unix.PerfBitTask |
			unix.PerfBitSampleIDAll | unix.PerfBitWatermark | unix.PerfBitUseClockID,
		// Wake the drain loop when half the ring is full.
		Wakeup: uint32(pages * os.Getpagesize() / 2),
		// CLOCK_MONOTONIC so that record times compare with ours (drainLocked's cutoff).
		Clockid:     unix.CLOCK_MONOTONIC,
		Sample_type: sampleType,
	}
	if stackDump {
		attr.Sample_stack_user = stackDumpBytes
	} else {
		attr.Sample_type &^= unix.PERF_SAMPLE_STACK_USER
	}
	attr.Size = uint32(unsafe.Sizeof(attr))
	return attr
}

// openEvent opens the sampling event for pid on cpu. It first asks for the
// stack dump and, should this kernel refuse it for a reason other than
// permission, retries without (leaf callers are then not recovered).
func openEvent(pid, cpu int, periodNs uint64, pages int) (fd int, stackDump bool, err error) {
	attr := eventAttr(periodNs, pages, true)
	fd, err = unix.PerfEventOpen(&attr, pid, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err == nil {
		return fd, true, nil
	}
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return -1, false, openError(err, pid, cpu)
	}
	attr = eventAttr(periodNs, pages, false)
	if fd, err = unix.PerfEventOpen(&attr, pid, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC); err != nil {
		return -1, false, openError(err, pid, cpu)
	}
	return fd, false, nil
}

// ring is one CPU's event and its mmap'd ring buffer: a metadata page,
// then a power-of-two data area the kernel writes records into at
// data_head and we consume up to data_tail.
type ring struct {
	fd   int
	mem  []byte
	meta *unix.PerfEventMmapPage
	data []byte
}

func mapRing(fd, pages int) (*ring, error) {
	mem, err := unix.Mmap(fd, 0, (1+pages)*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	r := &ring{fd: fd, mem: mem, meta: (*unix.PerfEventMmapPage)(unsafe.Pointer(&mem[0]))}
	off, size := r.meta.Data_offset, r.meta.Data_size
	if off == 0 { // kernels before 4.1 leave these 0: data follows the first page
		off, size = uint64(os.Getpagesize()), uint64(pages*os.Getpagesize())
	}
	if off+size > uint64(len(mem)) || size == 0 || size&(size-1) != 0 {
		unix.Munmap(mem)
		return nil, fmt.Errorf("kernel placed the ring's data at %#x+%#x in a %#x mapping", off, size, len(mem))
	}
	r.data = mem[off : off+size]
	return r, nil
}

// read calls fn with each complete record written since the last read and
// then releases their space to the kernel. A record that wraps around the
// end of the ring is copied into scratch so fn always sees contiguous bytes;
// fn must not keep rec.
func (r *ring) read(scratch *[]byte, fn func(rec []byte)) {
	head := atomic.LoadUint64(&r.meta.Data_head) // pairs with the kernel's smp_store_release
	tail := atomic.LoadUint64(&r.meta.Data_tail)
	size := uint64(len(r.data))
	for tail+8 <= head {
		at := tail % size
		hdr := r.bytes(at, 8, scratch)
		n := uint64(u16(hdr[6:]))
		if n < 8 || tail+n > head {
			break // corrupt or torn: drop what is left rather than loop
		}
		fn(r.bytes(at, n, scratch))
		tail += n
	}
	atomic.StoreUint64(&r.meta.Data_tail, head) // we are done with everything up to head
}

func (r *ring) bytes(at, n uint64, scratch *[]byte) []byte {
	if at+n <= uint64(len(r.data)) {
		return r.data[at : at+n]
	}
	*scratch = append((*scratch)[:0], r.data[at:]...)
	*scratch = append(*scratch, r.data[:n-(uint64(len(r.data))-at)]...)
	return *scratch
}

func (r *ring) close() error {
	err := unix.Munmap(r.mem)
	if cerr := unix.Close(r.fd); err == nil {
		err = cerr
	}
	return err
}

// openRings opens and maps one event per online CPU for pid. inherit=1
// makes every thread and child process pid creates from now on carry the
// events too, writing into these same rings: the kernel sends an inherited
// event's output to its parent's buffer. One event per CPU, not one with
// cpu == -1, because the kernel refuses to mmap an inherited per-task
// event that is not bound to a CPU; and each CPU needs its own ring since
// PERF_EVENT_IOC_SET_OUTPUT only redirects between events of the same CPU.
func openRings(pid int, periodNs uint64) (rings []*ring, stackDump bool, err error) {
	cpus, err := onlineCPUs()
	if err != nil {
		return nil, false, err
	}
	defer func() {
		if err != nil {
			for _, r := range rings {
				r.close()
			}
			rings = nil
		}
	}()
	stackDump = true
	pages := ringPages(periodNs)
	for _, cpu := range cpus {
		fd, dump, err := openEvent(pid, cpu, periodNs, pages)
		if err != nil {
			return rings, false, err
		}
		stackDump = stackDump && dump
		for {
			r, err := mapRing(fd, pages)
			if err == nil {
				rings = append(rings, r)
				break
			}
			if errors.Is(err, unix.EPERM) { // over the locked-memory limit
				if pages > minRingPages {
					pages /= 2
					continue
				}
				err = fmt.Errorf("%w: raise kernel.perf_event_mlock_kb or RLIMIT_MEMLOCK, or grant CAP_IPC_LOCK", err)
			}
			unix.Close(fd)
			return rings, false, fmt.Errorf("mmap perf ring buffer for cpu %d (%d KiB): %w", cpu, (1+pages)*os.Getpagesize()/1024, err)
		}
	}
	return rings, stackDump, nil
}

// ringPages sizes a ring for sampling every periodNs: a power of two
// between defRingPages and maxRingPages.
func ringPages(periodNs uint64) int {
	want := uint64(ringHold) / periodNs * ringSampleBytes / uint64(os.Getpagesize())
	pages := defRingPages
	for uint64(pages) < want && pages < maxRingPages {
		pages *= 2
	}
	return pages
}

// onlineCPUs parses /sys/devices/system/cpu/online ("0-3,6,8-9").
func onlineCPUs() ([]int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, fmt.Errorf("list online CPUs: %w", err)
	}
	cpus, err := parseCPUList(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("list online CPUs: %w", err)
	}
	return cpus, nil
}

func parseCPUList(s string) ([]int, error) {
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("bad CPU list %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("bad CPU list %q", s)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 0 {
		return nil, fmt.Errorf("bad CPU list %q", s)
	}
	return cpus, nil
}
