package profiler

import (
	"bytes"
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// recordKind is the subset of perf record types the sampler acts on.
type recordKind uint8

const (
	recSample recordKind = iota + 1
	recMmap              // an executable mapping (MMAP or MMAP2)
	recExec              // COMM with PERF_RECORD_MISC_COMM_EXEC: the process replaced its image
	recFork              // a new thread or process
	recExit              // a thread or process ended
	recLost              // the ring was full: lost records were dropped
)

// record is one decoded perf record, in the fields this package uses.
type record struct {
	kind     recordKind
	time     uint64 // CLOCK_MONOTONIC ns
	pid, tid uint32

	// recSample
	period uint64
	ips    []uint64 // user addresses, innermost (the sampled IP) first
	stack  [2]uint64
	stackN int // how many stack words the kernel could copy

	// recMmap
	mmap mmapInfo

	// recFork: the parent process
	ppid uint32

	// recLost
	lost uint64
}

// mmapInfo is one executable mapping: [start, limit) maps file from offset.
type mmapInfo struct {
	start, limit, offset uint64
	file                 string
	id                   fileID // zero if the record did not say
}

// fileID names a file as the kernel does: device and inode.
type fileID struct {
	major, minor uint32
	ino          uint64
}

func u16(b []byte) uint16 { return binary.NativeEndian.Uint16(b) }
func u32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }
func u64(b []byte) uint64 { return binary.NativeEndian.Uint64(b) }

// decodeRecord decodes one ring record; ok is false for records the
// sampler ignores and for malformed ones. stackDump says whether samples
// carry PERF_SAMPLE_STACK_USER. The result does not alias b.
func decodeRecord(b []byte, stackDump bool) (rec record, ok bool) {
	if len(b) < 8 {
		return rec, false
	}
	typ, misc := u32(b), u16(b[4:])
	body := b[8:]
	if typ == unix.PERF_RECORD_SAMPLE {
		return decodeSample(body, stackDump)
	}
	// Every other record ends in the sample_id trailer: pid, tid, time.
	if len(body) < sampleIDBytes {
		return rec, false
	}
	rec.time = u64(body[len(body)-8:])
	body = body[:len(body)-sampleIDBytes]
	switch typ {
	case unix.PERF_RECORD_MMAP, unix.PERF_RECORD_MMAP2:
		return decodeMmap(typ, misc, body, rec)
	case unix.PERF_RECORD_COMM:
		if misc&unix.PERF_RECORD_MISC_COMM_EXEC == 0 || len(body) < 8 {
			return rec, false
		}
		rec.kind, rec.pid, rec.tid = recExec, u32(body), u32(body[4:])
	case unix.PERF_RECORD_FORK, unix.PERF_RECORD_EXIT:
		if len(body) < 24 {
			return rec, false
		}
		rec.kind = recFork
		if typ == unix.PERF_RECORD_EXIT {
			rec.kind = recExit
		}
		rec.pid, rec.ppid, rec.tid = u32(body), u32(body[4:]), u32(body[8:])
		rec.time = u64(body[16:])
	case unix.PERF_RECORD_LOST:
		if len(body) < 16 {
			return rec, false
		}
		rec.kind, rec.lost = recLost, u64(body[8:])
	default:
		return rec, false
	}
	return rec, true
}

// decodeSample reads {ip; pid, tid; time; period; nr, ips[nr];
// size, data[size], dyn_size}: sampleType's fields in the kernel's order.
func decodeSample(b []byte, stackDump bool) (rec record, ok bool) {
	if len(b) < 40 {
		return rec, false
	}
	ip := u64(b)
	rec.kind, rec.pid, rec.tid, rec.time, rec.period = recSample, u32(b[8:]), u32(b[12:]), u64(b[16:]), u64(b[24:])
	nr := u64(b[32:])
	b = b[40:]
	if nr > uint64(len(b)/8) {
		return rec, false
	}
	rec.ips = make([]uint64, 0, nr+1)
	user := false
	for i := uint64(0); i < nr; i++ {
		a := u64(b[i*8:])
		if a >= contextMax {
			user = a == contextUser
			continue
		}
		if user {
			rec.ips = append(rec.ips, a)
		}
	}
	// The chain's first user address is the sampled IP itself; the IP
	// alone stands in when the kernel could not walk the stack at all.
	if len(rec.ips) == 0 || rec.ips[0] != ip {
		rec.ips = append([]uint64{ip}, rec.ips...)
	}
	b = b[nr*8:]
	if stackDump && len(b) >= 8 {
		size := u64(b)
		b = b[8:]
		if size > 0 && size <= uint64(len(b)) && len(b)-int(size) >= 8 {
			dyn := u64(b[size:]) // bytes actually copied
			for i := 0; i < len(rec.stack) && uint64(i*8+8) <= min(size, dyn); i++ {
				rec.stack[i] = u64(b[i*8:])
				rec.stackN = i + 1
			}
		}
	}
	return rec, true
}

// decodeMmap reads MMAP {pid, tid; addr, len, pgoff; filename} or MMAP2,
// which adds {maj, min; ino, ino_generation; prot, flags} before the name.
func decodeMmap(typ uint32, misc uint16, b []byte, rec record) (record, bool) {
	if len(b) < 32 {
		return rec, false
	}
	rec.kind, rec.pid, rec.tid = recMmap, u32(b), u32(b[4:])
	addr, n, pgoff := u64(b[8:]), u64(b[16:]), u64(b[24:])
	rec.mmap = mmapInfo{start: addr, limit: addr + n, offset: pgoff}
	name := b[32:]
	if typ == unix.PERF_RECORD_MMAP2 {
		if len(b) < 64 {
			return rec, false
		}
		if prot := u32(b[56:]); prot&unix.PROT_EXEC == 0 {
			return rec, false
		}
		// With PERF_RECORD_MISC_MMAP_BUILD_ID the same bytes hold a build
		// ID instead; this sampler does not ask for that.
		if misc&unix.PERF_RECORD_MISC_MMAP_BUILD_ID == 0 {
			rec.mmap.id = fileID{major: u32(b[32:]), minor: u32(b[36:]), ino: u64(b[40:])}
		}
		name = b[64:]
	}
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	rec.mmap.file = string(name)
	return rec, true
}
