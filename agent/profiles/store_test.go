package profiles

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/pprof/profile"
)

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func add(t *testing.T, s *Store, name, version string, p *profile.Profile) {
	t.Helper()
	if err := s.Add(name, version, p, 3, 1000); err != nil {
		t.Fatal(err)
	}
}

// A version's profile is the merge of what was added, from memory before
// a flush and from disk after a restart, and adding after the restart
// goes on from what the disk had.
func TestStoreAddGetRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	a, b, c := synthetic(1, testBuild, 100), synthetic(2, testBuild, 80), synthetic(3, testBuild, 60)
	if _, _, err := s.Get("fn", "v1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("get before add: %v", err)
	}
	add(t, s, "fn", "v1", a)
	add(t, s, "fn", "v1", b)
	s.Refused("fn", "v1", fmt.Errorf("%w: test", ErrOtherBuild))
	add(t, s, "fn", "v2", c)
	got, st, err := s.Get("fn", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if want := encode(t, mustMerge(t, a, b)); !bytes.Equal(got, want) {
		t.Fatal("v1 is not the merge of what was added")
	}
	sa, _ := Totals(a)
	sb, _ := Totals(b)
	wantStats := Stats{Profiles: 2, Samples: sa + sb, Invocations: 6, CPUNs: 2000, Refused: 1}
	if st != wantStats {
		t.Fatalf("stats %+v, want %+v", st, wantStats)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"fn/v1/cpu.pb.gz", "fn/v1/stats.json", "fn/v2/cpu.pb.gz"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	// The file is the profile: Check reads it back.
	onDisk, _ := os.ReadFile(filepath.Join(dir, "fn/v1/cpu.pb.gz"))
	if _, err := Check(onDisk, Expect{BuildID: testBuild}); err != nil || !bytes.Equal(onDisk, got) {
		t.Fatalf("file: %v", err)
	}

	s = openStore(t, dir)
	defer s.Close()
	got2, st2, err := s.Get("fn", "v1")
	if err != nil || !bytes.Equal(got2, got) || st2 != wantStats {
		t.Fatalf("after restart: %v, stats %+v", err, st2)
	}
	add(t, s, "fn", "v1", c)
	got3, st3, err := s.Get("fn", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if want := encode(t, mustMerge(t, a, b, c)); !bytes.Equal(got3, want) {
		t.Fatal("adding after a restart did not merge into what the disk had")
	}
	if st3.Profiles != 3 || st3.Refused != 1 {
		t.Fatalf("stats %+v", st3)
	}
}

func mustMerge(t *testing.T, ps ...*profile.Profile) *profile.Profile {
	t.Helper()
	m, err := Merge(ps...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The order profiles arrive in does not change the stored bytes.
func TestStoreOrderIndependent(t *testing.T) {
	ps := []*profile.Profile{synthetic(1, testBuild, 50), synthetic(2, testBuild, 70), synthetic(3, testBuild, 20), synthetic(4, testBuild, 90)}
	var first []byte
	permutations(ps, func(order []*profile.Profile) {
		s := openStore(t, t.TempDir())
		defer s.Close()
		for i, p := range order {
			add(t, s, "fn", "v", p)
			if i == 1 {
				s.Flush() // drops nothing yet: the version is in use
			}
		}
		got, _, err := s.Get("fn", "v")
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = got
		} else if !bytes.Equal(got, first) {
			t.Fatal("arrival order changed the stored profile")
		}
	})
}

// A version idle for a flush leaves memory; it comes back from disk.
func TestStoreDropsIdle(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	a, b := synthetic(1, testBuild, 50), synthetic(2, testBuild, 50)
	add(t, s, "fn", "v", a)
	for range 2 {
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	e := s.entries[key{"fn", "v"}]
	s.mu.Unlock()
	e.mu.Lock()
	inMemory := e.prof != nil
	e.mu.Unlock()
	if inMemory {
		t.Fatal("idle version still in memory")
	}
	add(t, s, "fn", "v", b)
	got, _, err := s.Get("fn", "v")
	if err != nil || !bytes.Equal(got, encode(t, mustMerge(t, a, b))) {
		t.Fatalf("after reload: %v", err)
	}
}

func TestStoreRefusedOnly(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	s.Refused("fn", "v", ErrCorrupt)
	s.Refused("fn", "v", ErrForeign)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	defer s.Close()
	_, st, err := s.Get("fn", "v")
	if !errors.Is(err, os.ErrNotExist) || st.Refused != 2 {
		t.Fatalf("%v, stats %+v", err, st)
	}
}

func TestStoreDelete(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	add(t, s, "fn", "v1", synthetic(1, testBuild, 10))
	add(t, s, "fn", "v2", synthetic(2, testBuild, 10))
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("fn", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get("fn", "v1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("get deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "fn/v1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleted version's directory: %v", err)
	}
	if err := s.Delete("fn", "v2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "fn")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("function's directory after its last version: %v", err)
	}
	if err := s.Delete("fn", "never"); err != nil {
		t.Fatalf("delete of nothing: %v", err)
	}
	// A deleted version starts over.
	add(t, s, "fn", "v1", synthetic(3, testBuild, 10))
	if _, st, err := s.Get("fn", "v1"); err != nil || st.Profiles != 1 {
		t.Fatalf("%v %+v", err, st)
	}
}

// Names never leave the directory, nor does a symlink planted in it take
// a write elsewhere.
func TestStoreStaysInDir(t *testing.T) {
	base := t.TempDir()
	dir, outside := filepath.Join(base, "store"), filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	s := openStore(t, dir)
	defer s.Close()
	p := synthetic(1, testBuild, 10)
	for _, c := range [][2]string{{"..", "v"}, {"fn", ".."}, {"../outside", "v"}, {"fn", "a/b"}, {"", "v"}, {"fn", "."}, {"f\x00", "v"}} {
		if err := s.Add(c[0], c[1], p, 1, 1); !errors.Is(err, ErrBadName) {
			t.Errorf("add %q: %v", c, err)
		}
		if _, _, err := s.Get(c[0], c[1]); !errors.Is(err, ErrBadName) {
			t.Errorf("get %q: %v", c, err)
		}
		if err := s.Delete(c[0], c[1]); !errors.Is(err, ErrBadName) {
			t.Errorf("delete %q: %v", c, err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(dir, "evil")); err != nil {
		t.Fatal(err)
	}
	err := s.Add("evil", "v", p, 1, 1)
	if err == nil {
		err = s.Flush()
	}
	if err == nil {
		t.Error("added and flushed through a symlink out of the store")
	}
	t.Log(err)
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("wrote outside the store: %v", ents)
	}
}

// Open removes what a write interrupted by a crash left.
func TestStoreRemovesTemps(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "fn/v"), 0o755)
	tmp := filepath.Join(dir, "fn/v", tmpPrefix+profileFile)
	os.WriteFile(tmp, []byte("half a profile"), 0o644)
	s := openStore(t, dir)
	defer s.Close()
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
}

func TestStoreClosed(t *testing.T) {
	s := openStore(t, t.TempDir())
	add(t, s, "fn", "v", synthetic(1, testBuild, 10))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Add("fn", "v", synthetic(1, testBuild, 10), 1, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("add: %v", err)
	}
	if _, _, err := s.Get("fn", "v"); !errors.Is(err, ErrClosed) {
		t.Errorf("get: %v", err)
	}
	if err := s.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("flush: %v", err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("close: %v", err)
	}
}

// Adding a profile of another build than the version's merged one is
// refused, and so is growing a version's profile past what the store can
// read back.
func TestStoreRefusesMisfits(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	add(t, s, "fn", "v", synthetic(1, testBuild, 10))
	if err := s.Add("fn", "v", synthetic(2, "other", 10), 1, 1); !errors.Is(err, ErrOtherBuild) {
		t.Errorf("other build: %v", err)
	}
	big := synthetic(3, testBuild, 1)
	big.Sample[0].Location[0].Line[0].Function.Name = string(bytes.Repeat([]byte("x"), maxUncompressed))
	if err := s.Add("fn", "v", big, 1, 1); !errors.Is(err, ErrFull) {
		t.Errorf("too big: %v", err)
	}
	if _, st, _ := s.Get("fn", "v"); st.Profiles != 1 {
		t.Errorf("stats %+v, want the refused adds left out", st)
	}
}

// Adds, gets, refusals, flushes and deletes from many goroutines at once
// (run with -race).
func TestStoreConcurrent(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	ps := make([]*profile.Profile, 8)
	for i := range ps {
		ps[i] = synthetic(uint64(i), testBuild, 30)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				v := fmt.Sprintf("v%d", (g+i)%3)
				switch i % 5 {
				case 0, 1:
					if err := s.Add("fn", v, ps[(g+i)%len(ps)], 1, 1); err != nil {
						t.Error(err)
					}
				case 2:
					if _, _, err := s.Get("fn", v); err != nil && !errors.Is(err, os.ErrNotExist) {
						t.Error(err)
					}
				case 3:
					s.Refused("fn", v, ErrCorrupt)
					if err := s.Flush(); err != nil {
						t.Error(err)
					}
				case 4:
					if g == 0 {
						if err := s.Delete("fn", v); err != nil {
							t.Error(err)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What is on disk reads back.
	s = openStore(t, dir)
	defer s.Close()
	for v := range 3 {
		if data, _, err := s.Get("fn", fmt.Sprintf("v%d", v)); err == nil {
			if _, err := Check(data, Expect{BuildID: testBuild}); err != nil {
				t.Errorf("v%d: %v", v, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
	}
}
