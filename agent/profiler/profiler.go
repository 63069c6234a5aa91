package profiler

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/google/pprof/profile"
	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/internal/buildid"
)

const (
	// DefaultFrequency is the sampling rate when Options.Frequency is 0:
	// 99 Hz, not 100, so sampling does not tick in step with the task's
	// own 10 ms timers. Its cost is in the package comment.
	DefaultFrequency = 99

	// MaxFrequency bounds Options.Frequency: the kernel will not time a
	// software event below 10 µs, and long before that the sampler
	// measures mostly itself.
	MaxFrequency = 10000

	// drainInterval is the longest the rings go without being read.
	// The kernel also wakes the drain loop when a ring is half full.
	drainInterval = 250 * time.Millisecond

	// orderSlack: records from different CPUs' rings are applied in
	// time order, and one younger than this may still be followed by an
	// older one from a ring read a moment earlier (an mmap that a sample
	// on another CPU needs), so it waits for the next drain unless the
	// task has exited. It covers a vCPU descheduled between timestamping
	// a record and committing it.
	orderSlack = 100 * time.Millisecond
)

// Options configure a Sampler.
type Options struct {
	// Frequency in Hz of the software cpu-clock sampling; default
	// DefaultFrequency.
	Frequency int
	// Binary is the task executable used to symbolise (default
	// cmd.Path). It may be an unstripped copy of the executable that
	// runs: its build ID must then match.
	Binary string
}

// Stats counts what one Collect covered.
type Stats struct {
	Samples int64 // samples in the profile
	// Lost counts records the kernel dropped because a ring was full;
	// it reports them when it next writes to that ring, so a loss just
	// before the task exits goes uncounted.
	Lost int64
}

// Sampler samples one task's CPU. Lock order: collectMu, then mu.
type Sampler struct {
	periodNs  uint64
	stackDump bool
	bin       *elfImage // its methods need collectMu
	exe       exeID     // the file the task executed, to recognise its mappings
	taskMap   mmapInfo  // where execve mapped the task's code
	stop      int       // eventfd that ends the drain loop
	done      chan struct{}

	closeOnce sync.Once
	closeErr  error

	collectMu sync.Mutex // serialises Collect, and guards bin's tables

	mu       sync.Mutex
	rings    []*ring
	scratch  []byte
	pending  []record // decoded, waiting to be applied in time order
	spaces   *addrSpaces
	stacks   map[string]*stack
	samples  int64
	lost     int64
	since    time.Time
	finished bool // every ring has hung up: the task and its children are gone
	closed   bool
}

// stack is the samples of one call chain on one thread.
type stack struct {
	pid, tid uint32
	frames   []frame  // innermost first
	top      [2]frame // the words at SP and SP+8, where they are addresses in the task binary
	count    int64
	cpuNs    int64
}

// frame is one address of a chain with the mapping it was in when sampled.
type frame struct {
	m    *mapping // nil if no known mapping held it
	addr uint64
}

// exeID recognises the task executable in mmap records: by device and
// inode, or failing that (overlay file systems report the inode
// differently in stat and in mappings) by path.
type exeID struct {
	ids   []fileID
	paths []string
}

func (e exeID) match(mi mmapInfo) bool {
	for _, id := range e.ids {
		if mi.id != (fileID{}) && mi.id == id {
			return true
		}
	}
	for _, p := range e.paths {
		if mi.file == p {
			return true
		}
	}
	return false
}

func statID(st os.FileInfo) fileID {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}
	}
	return fileID{major: unix.Major(sys.Dev), minor: unix.Minor(sys.Dev), ino: sys.Ino}
}

// Start starts cmd (not yet started: Start calls cmd.Start) with sampling
// attached from its first user instruction, covering every thread it
// creates and every child process it forks. If Start fails after the
// task started, the task has been killed and waited for.
func Start(cmd *exec.Cmd, opts Options) (*Sampler, error) {
	freq := opts.Frequency
	if freq == 0 {
		freq = DefaultFrequency
	}
	if freq < 0 || freq > MaxFrequency {
		return nil, fmt.Errorf("profiler: frequency %d Hz out of range 1..%d", freq, MaxFrequency)
	}
	if cmd.Process != nil {
		return nil, errors.New("profiler: cmd already started")
	}
	if cmd.Err != nil { // exec.Command could not find the program
		return nil, fmt.Errorf("profiler: %w", cmd.Err)
	}
	path := opts.Binary
	if path == "" {
		path = cmd.Path
		if !filepath.IsAbs(path) && cmd.Dir != "" {
			path = filepath.Join(cmd.Dir, path) // exec resolves a relative Path in Dir
		}
	}
	bin, err := openBinary(path)
	if err != nil {
		return nil, fmt.Errorf("profiler: %w", err)
	}
	s := &Sampler{
		periodNs: uint64(time.Second) / uint64(freq),
		bin:      bin,
		stacks:   make(map[string]*stack),
		done:     make(chan struct{}),
		stop:     -1,
	}
	s.exe = exeID{ids: []fileID{bin.id}, paths: []string{bin.path}}
	s.spaces = newAddrSpaces(func(mi mmapInfo) bool { return s.exe.match(mi) }) // s.exe as attach completes it
	if s.stop, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		bin.close()
		return nil, fmt.Errorf("profiler: eventfd: %w", err)
	}
	if err := startStopped(cmd, s.attach); err != nil {
		s.release()
		return nil, fmt.Errorf("profiler: start %s: %w", cmd.Path, err)
	}
	s.since = time.Now()
	go s.drainLoop()
	return s, nil
}

// attach runs while the task is stopped after its execve: it learns what
// the task executed, opens the events and seeds pid's address space with
// the mappings execve made (no record will ever report those).
func (s *Sampler) attach(pid int) error {
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	if st, err := os.Stat(exe); err == nil {
		s.exe.ids = append(s.exe.ids, statID(st))
	}
	if p, err := os.Readlink(exe); err == nil {
		s.exe.paths = append(s.exe.paths, p)
		if err := s.checkBuild(exe); err != nil {
			return err
		}
	}
	maps, err := readProcMaps(pid)
	if err != nil {
		return fmt.Errorf("read mappings of task %d: %w", pid, err)
	}
	rings, stackDump, err := openRings(pid, s.periodNs)
	if err != nil {
		return err
	}
	s.rings, s.stackDump = rings, stackDump
	for _, mi := range maps {
		s.spaces.add(uint32(pid), mi)
		if s.taskMap.limit == 0 && s.exe.match(mi) {
			s.taskMap = mi
		}
	}
	return nil
}

// checkBuild refuses a Binary that is not a build of what the task runs:
// its symbols would name the wrong code.
func (s *Sampler) checkBuild(exe string) error {
	if s.bin.buildID == "" {
		return nil
	}
	ran, err := buildid.File(exe)
	if err != nil || ran == s.bin.buildID {
		return nil // nothing to compare with
	}
	return fmt.Errorf("binary %s has build ID %s but the task runs build %s: set Options.Binary to a copy of the same build", s.bin.path, s.bin.buildID, ran)
}

// drainLoop reads the rings whenever one is half full and at least every
// drainInterval, until Close.
func (s *Sampler) drainLoop() {
	defer close(s.done)
	fds := make([]unix.PollFd, 1+len(s.rings))
	fds[0] = unix.PollFd{Fd: int32(s.stop), Events: unix.POLLIN}
	for i, r := range s.rings {
		fds[1+i] = unix.PollFd{Fd: int32(r.fd), Events: unix.POLLIN}
	}
	for {
		_, err := unix.Poll(fds, int(drainInterval/time.Millisecond))
		if err != nil && err != unix.EINTR {
			return
		}
		if fds[0].Revents != 0 {
			return
		}
		hup := true
		for i := range fds[1:] {
			pf := &fds[1+i]
			if pf.Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
				pf.Fd = -1 // poll ignores it from now on; the timer still drains it
			}
			hup = hup && pf.Fd == -1
		}
		s.mu.Lock()
		if hup {
			s.finished = true
		}
		s.drainLocked()
		s.mu.Unlock()
	}
}

// drainLocked reads every ring and applies the records that are old
// enough (orderSlack) in time order.
func (s *Sampler) drainLocked() {
	if s.closed {
		return
	}
	if !s.finished {
		s.finished = s.allHungUp()
	}
	for _, r := range s.rings {
		r.read(&s.scratch, func(b []byte) {
			if rec, ok := decodeRecord(b, s.stackDump); ok {
				if rec.kind == recLost {
					s.lost += int64(rec.lost)
					return
				}
				s.pending = append(s.pending, rec)
			}
		})
	}
	cutoff := ^uint64(0)
	if !s.finished {
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		cutoff = uint64(ts.Nano()) - uint64(orderSlack)
	}
	sort.SliceStable(s.pending, func(i, j int) bool { return s.pending[i].time < s.pending[j].time })
	n := sort.Search(len(s.pending), func(i int) bool { return s.pending[i].time > cutoff })
	for i := range s.pending[:n] {
		s.apply(&s.pending[i])
	}
	s.pending = append(s.pending[:0], s.pending[n:]...)
}

// allHungUp says whether every ring's event has no task left to follow:
// then no record will come after the ones in the rings now.
func (s *Sampler) allHungUp() bool {
	fds := make([]unix.PollFd, len(s.rings))
	for i, r := range s.rings {
		fds[i] = unix.PollFd{Fd: int32(r.fd), Events: unix.POLLIN}
	}
	if _, err := unix.Poll(fds, 0); err != nil {
		return false
	}
	for _, f := range fds {
		if f.Revents&unix.POLLHUP == 0 {
			return false
		}
	}
	return true
}

func (s *Sampler) apply(rec *record) {
	switch rec.kind {
	case recMmap:
		s.spaces.add(rec.pid, rec.mmap)
	case recExec:
		s.spaces.exec(rec.pid)
	case recFork:
		s.spaces.fork(rec.pid, rec.ppid)
	case recExit:
		s.spaces.exit(rec.pid, rec.tid)
	case recSample:
		s.addSample(rec)
	}
}

// addSample attributes each address to its mapping now, while the
// process's mappings are as they were when it was taken, and counts the
// chain.
func (s *Sampler) addSample(rec *record) {
	st := stack{pid: rec.pid, tid: rec.tid, frames: make([]frame, len(rec.ips))}
	for i, a := range rec.ips {
		st.frames[i] = frame{m: s.spaces.find(rec.pid, a), addr: a}
	}
	// Keep the stack words only where they may restore a frameless
	// leaf's caller (leaf.go): an address in the task binary that the
	// frame-pointer chain does not already hold next.
	if leaf := st.frames[0].m; leaf != nil && leaf.task {
		for i := 0; i < rec.stackN; i++ {
			w := rec.stack[i]
			if m := s.spaces.find(rec.pid, w); m != nil && m.task && (len(rec.ips) < 2 || rec.ips[1] != w) {
				st.top[i] = frame{m: m, addr: w}
			}
		}
	}
	key := st.key()
	agg := s.stacks[key]
	if agg == nil {
		agg = &st
		s.stacks[key] = agg
	}
	agg.count++
	agg.cpuNs += int64(rec.period)
	s.samples++
}

func (st *stack) key() string {
	b := make([]byte, 0, 8+16*len(st.frames)+16)
	b = binary.NativeEndian.AppendUint32(b, st.pid)
	b = binary.NativeEndian.AppendUint32(b, st.tid)
	for _, f := range st.frames {
		var id uint64
		if f.m != nil {
			id = f.m.id
		}
		b = binary.NativeEndian.AppendUint64(b, id)
		b = binary.NativeEndian.AppendUint64(b, f.addr)
	}
	b = binary.NativeEndian.AppendUint64(b, st.top[0].addr)
	b = binary.NativeEndian.AppendUint64(b, st.top[1].addr)
	return string(b)
}

// Collect returns a pprof profile of the samples taken since the previous
// Collect (nil, with no error, if none), plus counts. Safe to call
// concurrently with the task running. Samples from the last orderSlack
// while the task runs are left for the next Collect.
func (s *Sampler) Collect() (*profile.Profile, Stats, error) {
	s.collectMu.Lock()
	defer s.collectMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, Stats{}, errors.New("profiler: Collect after Close")
	}
	s.drainLocked()
	stacks, since, now := s.stacks, s.since, time.Now()
	stats := Stats{Samples: s.samples, Lost: s.lost}
	s.stacks, s.since, s.samples, s.lost = make(map[string]*stack), now, 0, 0
	s.mu.Unlock()

	if len(stacks) == 0 {
		return nil, stats, nil
	}
	p := s.build(stacks, since, now)
	if err := p.CheckValid(); err != nil {
		return nil, stats, fmt.Errorf("profiler: built an invalid profile: %w", err)
	}
	return p, stats, nil
}

// Close stops sampling and frees the rings; samples not yet collected
// are dropped. Call it after the task exits, or to stop early (the task
// then runs on unsampled).
func (s *Sampler) Close() error {
	s.closeOnce.Do(func() {
		unix.Write(s.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0}) // an eventfd takes a u64 count
		<-s.done
		s.collectMu.Lock()
		defer s.collectMu.Unlock()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closed = true
		s.closeErr = s.release()
	})
	return s.closeErr
}

// release closes every descriptor and mapping the Sampler holds.
func (s *Sampler) release() error {
	var errs []error
	for _, r := range s.rings {
		errs = append(errs, r.close())
	}
	s.rings = nil
	if s.stop >= 0 {
		errs = append(errs, unix.Close(s.stop))
		s.stop = -1
	}
	errs = append(errs, s.bin.close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("profiler: close: %w", err)
	}
	return nil
}
