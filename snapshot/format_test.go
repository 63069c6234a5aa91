package snapshot

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

type testState struct {
	Name  string
	VCPUs []uint64
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	in := testState{Name: "vm", VCPUs: []uint64{1, 2, 3}}
	if err := WriteState(dir, in); err != nil {
		t.Fatal(err)
	}
	var out testState
	if err := ReadState(dir, &out); err != nil {
		t.Fatal(err)
	}
	if out.Name != "vm" || len(out.VCPUs) != 3 {
		t.Fatalf("got %+v", out)
	}
}

func TestStateRefusals(t *testing.T) {
	dir := t.TempDir()
	if err := WriteState(dir, testState{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, StateFile))
	mutate := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"flipped payload byte", mutate(func(b []byte) []byte { b[len(b)-3] ^= 1; return b }), ErrCorrupt},
		{"truncated payload", good[:len(good)-2], ErrTruncated},
		{"truncated header", good[:10], ErrTruncated},
		{"trailing bytes", append(append([]byte(nil), good...), 'x'), ErrCorrupt},
		{"other version", mutate(func(b []byte) []byte { b[8] = 99; return b }), ErrVersion},
		{"bad magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b }), ErrNotSnapshot},
		{"huge length", mutate(func(b []byte) []byte { b[23] = 0x7f; return b }), ErrCorrupt},
		{"empty", nil, ErrTruncated},
	} {
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, StateFile), tc.data, 0o644)
		var s testState
		err := ReadState(d, &s)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	var wrongShape struct{ Other int }
	if err := ReadState(dir, &wrongShape); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a payload with unknown fields: %v", err)
	}
}

func TestMemoryFileIsSparse(t *testing.T) {
	dir := t.TempDir()
	mem := make([]byte, 64<<20)
	copy(mem[5*pageSize:], "hello")
	mem[len(mem)-1] = 7
	n, err := WriteMemory(dir, mem)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2*pageSize {
		t.Fatalf("wrote %d bytes, want two pages", n)
	}
	f, err := OpenMemory(dir, uint64(len(mem)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	if st.Blocks*512 > 1<<20 {
		t.Fatalf("a 64 MiB image with two used pages takes %d bytes of disk", st.Blocks*512)
	}
	got, _ := os.ReadFile(filepath.Join(dir, MemoryFile))
	if !bytes.Equal(got, mem) {
		t.Fatal("memory file differs from memory")
	}
	if _, err := OpenMemory(dir, 32<<20); !errors.Is(err, ErrTruncated) {
		t.Fatalf("size mismatch: %v", err)
	}
}

func TestWorkingSetFile(t *testing.T) {
	dir := t.TempDir()
	if runs, err := ReadWorkingSet(dir, 1<<20); runs != nil || err != nil {
		t.Fatalf("no file: %v %v", runs, err)
	}
	in := []Run{{0, 4096}, {8192, 3 * 4096}}
	if err := WriteWorkingSet(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadWorkingSet(dir, 1<<20)
	if err != nil || len(out) != 2 || out[1] != in[1] {
		t.Fatalf("round trip: %v %v", out, err)
	}
	if _, err := ReadWorkingSet(dir, 16384); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a run past the memory file: %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, WorkingSetFile))
	b[len(b)-1] ^= 1
	os.WriteFile(filepath.Join(dir, WorkingSetFile), b, 0o644)
	if _, err := ReadWorkingSet(dir, 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped byte: %v", err)
	}
	os.WriteFile(filepath.Join(dir, WorkingSetFile), b[:30], 0o644)
	if _, err := ReadWorkingSet(dir, 1<<20); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
}
