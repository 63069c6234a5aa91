package memory

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestLayoutAroundTheHole(t *testing.T) {
	if r := Layout(256 << 20); len(r) != 1 || r[0].Size != 256<<20 {
		t.Fatalf("256 MiB: %+v", r)
	}
	r := Layout(4 << 30)
	if len(r) != 2 || r[0].GPA+r[0].Size != MMIOHoleStart || r[1].GPA != MMIOHoleEnd ||
		r[1].Offset != MMIOHoleStart || r[0].Size+r[1].Size != 4<<30 {
		t.Fatalf("4 GiB: %+v", r)
	}
}

func TestBoundsChecks(t *testing.T) {
	for _, memfd := range []bool{false, true} {
		m, err := New(4<<20, Options{Memfd: memfd})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if (m.File() != nil) != memfd {
			t.Fatalf("memfd %v: file %v", memfd, m.File())
		}
		if err := m.WriteU32(4<<20-4, 0xdeadbeef); err != nil {
			t.Fatal(err)
		}
		if v, err := m.ReadU32(4<<20 - 4); err != nil || v != 0xdeadbeef {
			t.Fatalf("last word: %#x %v", v, err)
		}
		for _, c := range []struct{ gpa, n uint64 }{
			{4 << 20, 1}, {4<<20 - 3, 4}, {math.MaxUint64, 2}, {math.MaxUint64 - 1, 4}, {0, math.MaxUint64}, {1, 4 << 20},
		} {
			if _, err := m.Slice(c.gpa, c.n); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("Slice(%#x, %#x): %v, want ErrOutOfRange", c.gpa, c.n, err)
			}
		}
		if _, err := m.ReadU64(4<<20 - 7); !errors.Is(err, ErrOutOfRange) {
			t.Error("ReadU64 across the end accepted")
		}
		if err := m.WriteU16(3, 0x1234); err != nil { // unaligned takes the slow path
			t.Fatal(err)
		}
		if v, _ := m.ReadU16(3); v != 0x1234 {
			t.Fatalf("unaligned u16 %#x", v)
		}
	}
}

func TestAccessesAcrossTheHoleAreRefused(t *testing.T) {
	m, err := New(MMIOHoleStart+(2<<20), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.WriteU64(MMIOHoleEnd, 7); err != nil {
		t.Fatalf("RAM above 4 GiB: %v", err)
	}
	if v, _ := m.ReadU64(MMIOHoleEnd); v != 7 || m.Bytes()[MMIOHoleStart] != 7 {
		t.Fatal("RAM above 4 GiB is not backed by the mapping's tail")
	}
	for _, gpa := range []uint64{MMIOHoleStart, 0xfee00000, MMIOHoleStart - 4} {
		if _, err := m.ReadU64(gpa); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("read at %#x in or across the MMIO hole: %v", gpa, err)
		}
	}
}

func TestSizes(t *testing.T) {
	for _, size := range []uint64{0, 1 << 20, MaxSize + PageSize, 3<<20 + 1} {
		if _, err := New(size, Options{}); err == nil {
			t.Errorf("size %d accepted", size)
		}
	}
}

func TestMapFilePrivateLeavesTheFileAlone(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mem")
	data := make([]byte, 2<<20)
	data[100] = 42
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	m, err := MapFile(f, 2<<20, true)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := m.Slice(100, 1); b[0] != 42 {
		t.Fatal("file contents not visible")
	}
	m.WriteU32(100, 7)
	m.Close()
	if b, _ := os.ReadFile(p); b[100] != 42 {
		t.Fatal("a private mapping wrote through to the file")
	}
	f2, _ := os.Open(p)
	if _, err := MapFile(f2, 4<<20, true); err == nil {
		t.Fatal("a size mismatch was accepted")
	}
}
