package profiler

import (
	"encoding/binary"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// rec assembles a perf record: header, then the fields as u32 (uint32) or
// u64 (uint64) words or raw bytes ([]byte, padded to 8).
func rec(typ uint32, misc uint16, fields ...any) []byte {
	var body []byte
	for _, f := range fields {
		switch v := f.(type) {
		case uint32:
			body = binary.NativeEndian.AppendUint32(body, v)
		case uint64:
			body = binary.NativeEndian.AppendUint64(body, v)
		case []byte:
			body = append(body, v...)
			for len(body)%8 != 0 {
				body = append(body, 0)
			}
		default:
			panic("bad field")
		}
	}
	b := binary.NativeEndian.AppendUint32(nil, typ)
	b = binary.NativeEndian.AppendUint16(b, misc)
	b = binary.NativeEndian.AppendUint16(b, uint16(8+len(body)))
	return append(b, body...)
}

func TestDecodeRecord(t *testing.T) {
	const user, kernel = uint64(contextUser), uint64(1<<64 + unix.PERF_CONTEXT_KERNEL)
	// sample_id trailer: pid, tid, time
	trailer := []any{uint32(7), uint32(8), uint64(5000)}
	tests := []struct {
		name      string
		in        []byte
		stackDump bool
		want      record
		ok        bool
	}{{
		name: "sample: markers dropped, IP not repeated, stack words read",
		in: rec(unix.PERF_RECORD_SAMPLE, 0, uint64(0x1000), uint32(7), uint32(8), uint64(99), uint64(2004008),
			uint64(4), user, uint64(0x1000), uint64(0x2005), uint64(0x3009),
			uint64(16), uint64(0x2fff), uint64(0xabc), uint64(16)),
		stackDump: true,
		want: record{kind: recSample, time: 99, pid: 7, tid: 8, period: 2004008,
			ips: []uint64{0x1000, 0x2005, 0x3009}, stack: [2]uint64{0x2fff, 0xabc}, stackN: 2},
		ok: true,
	}, {
		name: "sample: only as much stack as the kernel copied",
		in: rec(unix.PERF_RECORD_SAMPLE, 0, uint64(0x1000), uint32(7), uint32(8), uint64(99), uint64(10),
			uint64(2), user, uint64(0x1000),
			uint64(16), uint64(0x2fff), uint64(0), uint64(8)),
		stackDump: true,
		want:      record{kind: recSample, time: 99, pid: 7, tid: 8, period: 10, ips: []uint64{0x1000}, stack: [2]uint64{0x2fff}, stackN: 1},
		ok:        true,
	}, {
		name: "sample: no chain stands on its IP; kernel entries skipped",
		in: rec(unix.PERF_RECORD_SAMPLE, 0, uint64(0x1000), uint32(7), uint32(8), uint64(99), uint64(10),
			uint64(2), kernel, uint64(0xffffffff81000000), uint64(0)),
		stackDump: true,
		want:      record{kind: recSample, time: 99, pid: 7, tid: 8, period: 10, ips: []uint64{0x1000}},
		ok:        true,
	}, {
		name: "sample: chain longer than the record",
		in:   rec(unix.PERF_RECORD_SAMPLE, 0, uint64(0x1000), uint32(7), uint32(8), uint64(99), uint64(10), uint64(1000), user),
	}, {
		name: "mmap2",
		in: rec(unix.PERF_RECORD_MMAP2, 0, append([]any{uint32(7), uint32(7), uint64(0x400000), uint64(0x1000), uint64(0),
			uint32(253), uint32(1), uint64(42), uint64(0), uint32(unix.PROT_READ | unix.PROT_EXEC), uint32(0),
			[]byte("/bin/task\x00")}, trailer...)...),
		want: record{kind: recMmap, time: 5000, pid: 7, tid: 7,
			mmap: mmapInfo{start: 0x400000, limit: 0x401000, file: "/bin/task", id: fileID{253, 1, 42}}},
		ok: true,
	}, {
		name: "mmap2 of data is ignored",
		in: rec(unix.PERF_RECORD_MMAP2, 0, append([]any{uint32(7), uint32(7), uint64(0x400000), uint64(0x1000), uint64(0),
			uint32(253), uint32(1), uint64(42), uint64(0), uint32(unix.PROT_READ), uint32(0),
			[]byte("/bin/task\x00")}, trailer...)...),
	}, {
		name: "mmap",
		in: rec(unix.PERF_RECORD_MMAP, 0, append([]any{uint32(7), uint32(9), uint64(0x7000), uint64(0x2000), uint64(0x1000),
			[]byte("[vdso]\x00")}, trailer...)...),
		want: record{kind: recMmap, time: 5000, pid: 7, tid: 9, mmap: mmapInfo{start: 0x7000, limit: 0x9000, offset: 0x1000, file: "[vdso]"}},
		ok:   true,
	}, {
		name: "comm of an exec",
		in:   rec(unix.PERF_RECORD_COMM, unix.PERF_RECORD_MISC_COMM_EXEC, append([]any{uint32(7), uint32(7), []byte("task\x00")}, trailer...)...),
		want: record{kind: recExec, time: 5000, pid: 7, tid: 7},
		ok:   true,
	}, {
		name: "comm of a rename is ignored",
		in:   rec(unix.PERF_RECORD_COMM, 0, append([]any{uint32(7), uint32(7), []byte("task\x00")}, trailer...)...),
	}, {
		name: "fork",
		in:   rec(unix.PERF_RECORD_FORK, 0, append([]any{uint32(9), uint32(7), uint32(9), uint32(7), uint64(4000)}, trailer...)...),
		want: record{kind: recFork, time: 4000, pid: 9, ppid: 7, tid: 9},
		ok:   true,
	}, {
		name: "exit",
		in:   rec(unix.PERF_RECORD_EXIT, 0, append([]any{uint32(9), uint32(9), uint32(10), uint32(10), uint64(4000)}, trailer...)...),
		want: record{kind: recExit, time: 4000, pid: 9, ppid: 9, tid: 10},
		ok:   true,
	}, {
		name: "lost",
		in:   rec(unix.PERF_RECORD_LOST, 0, append([]any{uint64(1), uint64(17)}, trailer...)...),
		want: record{kind: recLost, time: 5000, lost: 17},
		ok:   true,
	}, {
		name: "throttle is ignored",
		in:   rec(unix.PERF_RECORD_THROTTLE, 0, append([]any{uint64(1), uint64(2), uint64(3)}, trailer...)...),
	}, {
		name: "truncated",
		in:   rec(unix.PERF_RECORD_FORK, 0, uint64(1)),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := decodeRecord(tt.in, tt.stackDump)
			if ok != tt.ok || ok && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("decodeRecord = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}
