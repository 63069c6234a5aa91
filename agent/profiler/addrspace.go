package profiler

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// mapping is one executable mapping of one or more processes. It never
// changes once made (aggregated samples point at it); a later mmap over
// part of it makes new mappings for the parts that survive.
type mapping struct {
	id                   uint64 // unique within a Sampler: part of sample keys
	start, limit, offset uint64
	file                 string
	task                 bool // the task binary: symbolised from Options.Binary
}

// addrSpaces follows the executable mappings of every process of the task
// from the records' mmap, fork, exec and exit events, applied in time
// order. munmap is not reported, so a mapping lives until something is
// mapped over it, the process execs or it exits.
type addrSpaces struct {
	procs  map[uint32][]*mapping // by pid, sorted by start, not overlapping
	nextID uint64
	isTask func(mmapInfo) bool
}

func newAddrSpaces(isTask func(mmapInfo) bool) *addrSpaces {
	return &addrSpaces{procs: make(map[uint32][]*mapping), isTask: isTask}
}

func (a *addrSpaces) newMapping(start, limit, offset uint64, file string, task bool) *mapping {
	a.nextID++
	return &mapping{id: a.nextID, start: start, limit: limit, offset: offset, file: file, task: task}
}

// add maps mi into pid, trimming whatever it covers.
func (a *addrSpaces) add(pid uint32, mi mmapInfo) {
	if mi.limit <= mi.start {
		return
	}
	old := a.procs[pid]
	out := make([]*mapping, 0, len(old)+2)
	for _, m := range old {
		if m.limit <= mi.start || m.start >= mi.limit {
			out = append(out, m)
			continue
		}
		if m.start < mi.start {
			out = append(out, a.newMapping(m.start, mi.start, m.offset, m.file, m.task))
		}
		if m.limit > mi.limit {
			out = append(out, a.newMapping(mi.limit, m.limit, m.offset+(mi.limit-m.start), m.file, m.task))
		}
	}
	out = append(out, a.newMapping(mi.start, mi.limit, mi.offset, mi.file, a.isTask(mi)))
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	a.procs[pid] = out
}

// fork gives a new process a copy of its parent's mappings; a new thread
// (pid == ppid) shares them already.
func (a *addrSpaces) fork(pid, ppid uint32) {
	if pid == ppid {
		return
	}
	a.procs[pid] = append([]*mapping(nil), a.procs[ppid]...)
}

// exec empties pid's address space: the mmap records of the new image follow.
func (a *addrSpaces) exec(pid uint32) { delete(a.procs, pid) }

// exit forgets a process when its main thread ends. (A main thread that
// exits before its siblings, pthread_exit style, loses the rest of its
// process's attribution; Go programs never do that.)
func (a *addrSpaces) exit(pid, tid uint32) {
	if pid == tid {
		delete(a.procs, pid)
	}
}

// find returns the mapping of pid that holds addr, or nil.
func (a *addrSpaces) find(pid uint32, addr uint64) *mapping {
	ms := a.procs[pid]
	i := sort.Search(len(ms), func(i int) bool { return ms[i].limit > addr })
	if i < len(ms) && ms[i].start <= addr {
		return ms[i]
	}
	return nil
}

// readProcMaps reads the executable mappings of pid from
// /proc/pid/maps: the ones made before the events were opened, such as
// the image execve mapped, for which no record will ever come.
func readProcMaps(pid int) ([]mmapInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	return parseProcMaps(b)
}

// parseProcMaps parses lines of "start-end perms offset major:minor inode   path".
func parseProcMaps(b []byte) ([]mmapInfo, error) {
	var out []mmapInfo
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 5 {
			return nil, fmt.Errorf("bad maps line %q", line)
		}
		if len(f[1]) < 3 || f[1][2] != 'x' {
			continue
		}
		lo, hi, ok1 := strings.Cut(f[0], "-")
		maj, mnr, ok2 := strings.Cut(f[3], ":")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		limit, err2 := strconv.ParseUint(hi, 16, 64)
		off, err3 := strconv.ParseUint(f[2], 16, 64)
		major, err4 := strconv.ParseUint(maj, 16, 32)
		minor, err5 := strconv.ParseUint(mnr, 16, 32)
		ino, err6 := strconv.ParseUint(f[4], 10, 64)
		if !ok1 || !ok2 || err1 != nil || err2 != nil || err3 != nil || err4 != nil || err5 != nil || err6 != nil {
			return nil, fmt.Errorf("bad maps line %q", line)
		}
		mi := mmapInfo{start: start, limit: limit, offset: off}
		if ino != 0 {
			mi.id = fileID{major: uint32(major), minor: uint32(minor), ino: ino}
		}
		// The path is the rest of the line after the inode; it may hold spaces.
		mi.file = afterFields(line, 5)
		out = append(out, mi)
	}
	return out, sc.Err()
}

// afterFields returns what follows the first n space-separated fields of line.
func afterFields(line string, n int) string {
	rest := line
	for i := 0; i < n; i++ {
		rest = strings.TrimLeft(rest, " ")
		j := strings.IndexByte(rest, ' ')
		if j < 0 {
			return ""
		}
		rest = rest[j:]
	}
	return strings.TrimSpace(rest)
}
