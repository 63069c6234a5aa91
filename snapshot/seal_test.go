package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sealedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	mem := make([]byte, 64<<20)
	copy(mem[5<<20:], "guest page")
	mem[len(mem)-1] = 7
	if _, err := WriteMemory(dir, mem); err != nil {
		t.Fatal(err)
	}
	if err := WriteState(dir, testState{Name: "vm", VCPUs: []uint64{1}}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestSealUnchangedAndVerify(t *testing.T) {
	dir := sealedDir(t)
	s, err := SealDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Files) != 2 {
		t.Fatalf("sealed %d files, want 2: %+v", len(s.Files), s.Files)
	}
	if err := s.Unchanged(dir); err != nil {
		t.Fatalf("untouched snapshot: %v", err)
	}
	if _, err := s.Verify(dir); err != nil {
		t.Fatalf("untouched snapshot: %v", err)
	}
	// A copy with every hole filled in (cp without sparse) has other
	// inodes but the same content: Unchanged says so, Verify accepts it.
	cp := t.TempDir()
	for _, f := range s.Files {
		b, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cp, f.Name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Unchanged(cp); !errors.Is(err, ErrChanged) {
		t.Fatalf("a copy: Unchanged = %v, want ErrChanged", err)
	}
	now, err := s.Verify(cp)
	if err != nil {
		t.Fatalf("a dense copy of the same content: %v", err)
	}
	if err := now.Unchanged(cp); err != nil {
		t.Fatalf("the seal Verify returned: %v", err)
	}
}

func TestSealRefusesChanges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, dir string)
		want   string
	}{
		{"one byte of memory", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, MemoryFile), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("G"), 5<<20); err != nil {
				t.Fatal(err)
			}
		}, "memory: snapshot changed after it was cut: its digest"},
		{"a page written into a hole", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, MemoryFile), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0x90}, 40<<20); err != nil {
				t.Fatal(err)
			}
		}, "memory: snapshot changed after it was cut: its digest"},
		{"same bytes, times set back", func(t *testing.T, dir string) {
			p := filepath.Join(dir, StateFile)
			fi, _ := os.Stat(p)
			b, _ := os.ReadFile(p)
			b[len(b)-2] ^= 1
			os.WriteFile(p, b, 0o600)
			os.Chtimes(p, fi.ModTime(), fi.ModTime())
		}, "state: snapshot changed after it was cut: its digest"},
		{"truncated", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, MemoryFile), 32<<20)
		}, "memory: snapshot changed after it was cut"},
		{"a file added", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, WorkingSetFile), []byte("x"), 0o600)
		}, "workingset: snapshot changed after it was cut: a file the seal does not list"},
		{"a file removed", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, StateFile))
		}, "state: snapshot changed after it was cut: a sealed file is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := sealedDir(t)
			s, err := SealDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond) // a distinct ctime
			tc.change(t, dir)
			if err := s.Unchanged(dir); !errors.Is(err, ErrChanged) {
				t.Fatalf("Unchanged after the change: %v", err)
			}
			_, err = s.Verify(dir)
			if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSealRefusesNonFiles(t *testing.T) {
	dir := sealedDir(t)
	os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
	if _, err := SealDir(dir); err == nil || !strings.Contains(err.Error(), "link is a") {
		t.Fatalf("a symlink in the snapshot: %v", err)
	}
}

// BenchmarkPageDigest is the digest's cost on a sparse 512 MiB memory file
// holding 32 MiB of data: what sealing a warm snapshot costs.
func BenchmarkPageDigest(b *testing.B) {
	dir := b.TempDir()
	mem := make([]byte, 512<<20)
	for i := 0; i < 32<<20; i += 8 {
		mem[i+3] = byte(i)
	}
	if _, err := WriteMemory(dir, mem); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, MemoryFile))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(32 << 20)
	for b.Loop() {
		if _, err := PageDigest(f, 512<<20); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSealAddNeverVouchesForAChange(t *testing.T) {
	dir := sealedDir(t)
	s, err := SealDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, WorkingSetFile), []byte("runs"), 0o600)
	s2, err := s.Add(dir, WorkingSetFile)
	if err != nil || !s2.Has(WorkingSetFile) || len(s2.Files) != 3 {
		t.Fatalf("Add: %+v %v", s2, err)
	}
	if err := s2.Unchanged(dir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	os.WriteFile(filepath.Join(dir, StateFile), []byte("forged"), 0o600)
	os.WriteFile(filepath.Join(dir, WorkingSetFile), []byte("runs2"), 0o600)
	if _, err := s2.Add(dir, WorkingSetFile); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), StateFile) {
		t.Fatalf("Add after the state file changed: %v", err)
	}
}
