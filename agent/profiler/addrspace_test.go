package profiler

import (
	"reflect"
	"testing"
)

func TestParseProcMaps(t *testing.T) {
	in := []byte(`00400000-0049d000 r-xp 00000000 fd:01 1234                               /tmp/x/cpuhog
0049d000-00544000 r--p 0009d000 fd:01 1234                               /tmp/x/cpuhog
7f0000001000-7f0000002000 r-xp 00001000 103:02 99                        /opt/my lib/libfoo.so (deleted)
7ffd1b3f0000-7ffd1b3f2000 r-xp 00000000 00:00 0                          [vdso]
7ffd1b3f2000-7ffd1b3f3000 rw-p 00000000 00:00 0 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`)
	got, err := parseProcMaps(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []mmapInfo{
		{start: 0x400000, limit: 0x49d000, file: "/tmp/x/cpuhog", id: fileID{0xfd, 1, 1234}},
		{start: 0x7f0000001000, limit: 0x7f0000002000, offset: 0x1000, file: "/opt/my lib/libfoo.so (deleted)", id: fileID{0x103, 2, 99}},
		{start: 0x7ffd1b3f0000, limit: 0x7ffd1b3f2000, file: "[vdso]"},
		{start: 0xffffffffff600000, limit: 0xffffffffff601000, file: "[vsyscall]"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseProcMaps:\n got %+v\nwant %+v", got, want)
	}
	if _, err := parseProcMaps([]byte("zzz r-xp\n")); err == nil {
		t.Error("a malformed line parsed")
	}
}

func TestAddrSpaces(t *testing.T) {
	a := newAddrSpaces(func(mi mmapInfo) bool { return mi.file == "/task" })
	a.add(1, mmapInfo{start: 0x1000, limit: 0x5000, file: "/task"})
	a.add(1, mmapInfo{start: 0x9000, limit: 0xa000, file: "/lib"})
	if m := a.find(1, 0x1000); m == nil || !m.task || m.file != "/task" {
		t.Fatalf("find 0x1000 = %+v", m)
	}
	if m := a.find(1, 0x5000); m != nil {
		t.Errorf("find at the limit = %+v", m)
	}

	// A mapping over the middle leaves both ends, with the right offsets.
	a.add(1, mmapInfo{start: 0x2000, limit: 0x3000, offset: 0x100000, file: "/jit"})
	for _, tt := range []struct {
		addr   uint64
		file   string
		start  uint64
		offset uint64
	}{{0x1fff, "/task", 0x1000, 0}, {0x2000, "/jit", 0x2000, 0x100000}, {0x3000, "/task", 0x3000, 0x2000}, {0x9abc, "/lib", 0x9000, 0}} {
		m := a.find(1, tt.addr)
		if m == nil || m.file != tt.file || m.start != tt.start || m.offset != tt.offset {
			t.Errorf("find %#x = %+v, want %s from %#x offset %#x", tt.addr, m, tt.file, tt.start, tt.offset)
		}
	}

	// A forked process has its parent's mappings; a thread adds nothing;
	// exec and exit forget them.
	a.fork(2, 1)
	a.fork(1, 1)
	if m := a.find(2, 0x9000); m == nil || m.file != "/lib" {
		t.Errorf("forked process: find = %+v", m)
	}
	a.exec(2)
	if m := a.find(2, 0x9000); m != nil {
		t.Errorf("after exec: find = %+v", m)
	}
	a.exit(1, 3) // a thread
	if a.find(1, 0x9000) == nil {
		t.Error("a thread's exit forgot its process")
	}
	a.exit(1, 1)
	if a.find(1, 0x9000) != nil {
		t.Error("the process's exit kept its mappings")
	}
}
