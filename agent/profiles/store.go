package profiles

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/google/pprof/profile"
)

// File names in a version's directory, dir/<name>/<version>/.
const (
	profileFile = "cpu.pb.gz"
	statsFile   = "stats.json"
	// tmpPrefix starts the names of files being written; Open removes
	// any a crash left behind.
	tmpPrefix = ".tmp-"
)

// Stats are what a version's profile was merged from.
type Stats struct {
	Profiles    int64 `json:"profiles"`    // merged
	Samples     int64 `json:"samples"`     // in them
	Invocations int64 `json:"invocations"` // they covered, as Add was told
	CPUNs       int64 `json:"cpu_ns"`      // as Add was told
	Refused     int64 `json:"refused"`     // profiles Check refused
}

// Errors from the Store.
var (
	ErrClosed  = errors.New("profile store closed")
	ErrBadName = errors.New("bad function name or version")
	// ErrFull: merging would take a version's profile past what the
	// store reads back (maxUncompressed), or its sums near overflow.
	ErrFull = errors.New("version's profile full")
)

// Store keeps one merged CPU profile per function version, in memory
// while it is in use and on disk, dir/<name>/<version>/cpu.pb.gz with
// stats.json beside it, across restarts. All its files are reached
// through an os.Root on dir, so no name and no symlink planted in dir can
// take a read or write outside it.
//
// Safe for concurrent use. Lock order: flushMu, then an entry's mu, then
// Store.mu; Store.mu is never held while waiting for another lock. Every
// use of root happens with an entry's mu held after seeing the store
// open, or under flushMu, and Close takes both before closing root.
type Store struct {
	root *os.Root

	// flushMu serializes Flush and Close.
	flushMu sync.Mutex

	mu      sync.Mutex
	entries map[key]*entry
	closed  bool
}

type key struct{ name, version string }

func (k key) dir() string { return path.Join(k.name, k.version) }

// entry is one version. Its fields are guarded by mu.
type entry struct {
	mu sync.Mutex
	// deleted: Delete removed the entry from the store; whoever holds it
	// must look it up again.
	deleted bool
	// loaded: stats (and whether a profile is on disk) have been read.
	loaded bool
	stats  Stats
	// prof is the merged profile, or nil while only the disk has it (or
	// there is none); raw its gzipped bytes once written or read.
	prof *profile.Profile
	raw  []byte
	// onDisk: a profile file exists for it.
	onDisk bool
	// dirty: memory is ahead of the disk. used: added to since the last
	// Flush; a Flush that finds an entry unused drops its parsed profile
	// from memory, so memory holds only the versions in use.
	dirty, used bool
}

// Open opens (creating it if need be) a store in dir.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile store: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("profile store: %w", err)
	}
	s := &Store{root: root, entries: map[key]*entry{}}
	if err := s.removeTemps(); err != nil {
		root.Close()
		return nil, fmt.Errorf("profile store %s: %w", dir, err)
	}
	return s, nil
}

// removeTemps removes the temporary files of writes a crash interrupted.
func (s *Store) removeTemps() error {
	return fs.WalkDir(s.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && strings.Count(p, "/") >= 1:
			// dir/<name>/<version>: its files are all there is.
			return s.removeTempsIn(p)
		}
		return nil
	})
}

func (s *Store) removeTempsIn(dir string) error {
	ents, err := fs.ReadDir(s.root.FS(), dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := s.root.Remove(path.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return fs.SkipDir
}

// validName: the caller has validated names and versions, but a store
// never trusts a path element it joins.
func validName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 255 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func newKey(name, version string) (key, error) {
	if !validName(name) || !validName(version) {
		return key{}, fmt.Errorf("%w: %q version %q", ErrBadName, name, version)
	}
	return key{name, version}, nil
}

// lock returns k's entry, locked, with its stats loaded.
func (s *Store) lock(k key) (*entry, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		e, ok := s.entries[k]
		if !ok {
			e = &entry{}
			s.entries[k] = e
		}
		s.mu.Unlock()
		e.mu.Lock()
		if e.deleted {
			e.mu.Unlock()
			continue
		}
		// Close may have come between: it flushes each entry under its
		// mu, so an operation that sees the store open here completes
		// before Close flushes this entry and closes root.
		if s.isClosed() {
			e.mu.Unlock()
			return nil, ErrClosed
		}
		if !e.loaded {
			if err := s.loadStats(k, e); err != nil {
				e.mu.Unlock()
				return nil, err
			}
		}
		return e, nil
	}
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// loadStats reads what the disk has of k: stats, and whether a profile is
// there.
func (s *Store) loadStats(k key, e *entry) error {
	b, err := s.root.ReadFile(path.Join(k.dir(), statsFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("profile stats of %s %s: %w", k.name, k.version, err)
	default:
		if err := json.Unmarshal(b, &e.stats); err != nil {
			return fmt.Errorf("profile stats of %s %s: %w", k.name, k.version, err)
		}
	}
	_, err = s.root.Stat(path.Join(k.dir(), profileFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("profile of %s %s: %w", k.name, k.version, err)
	default:
		e.onDisk = true
	}
	e.loaded = true
	return nil
}

// loadProfile parses k's profile from disk into memory, if it is only
// there.
func (s *Store) loadProfile(k key, e *entry) error {
	if e.prof != nil || !e.onDisk {
		return nil
	}
	raw := e.raw
	if raw == nil {
		var err error
		if raw, err = s.root.ReadFile(path.Join(k.dir(), profileFile)); err != nil {
			return fmt.Errorf("profile of %s %s: %w", k.name, k.version, err)
		}
	}
	// The store's own file, so written within maxUncompressed; it may
	// compress worse than a guest's would have to.
	p, err := decode(raw, maxUncompressed)
	if err == nil {
		err = checkKind(p)
	}
	if err != nil {
		return fmt.Errorf("stored profile of %s %s (Delete it to start over): %w", k.name, k.version, err)
	}
	e.prof, e.raw = p, raw
	return nil
}

// Add merges p, a profile Check passed for this version, into the
// version's profile, with what the caller measured of the invocations it
// covers.
func (s *Store) Add(name, version string, p *profile.Profile, invocations, cpuNs int64) error {
	k, err := newKey(name, version)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("add profile of %s %s: nil profile", name, version)
	}
	if err := checkKind(p); err != nil {
		return fmt.Errorf("add profile of %s %s: %w", name, version, err)
	}
	e, err := s.lock(k)
	if err != nil {
		return err
	}
	defer e.mu.Unlock()
	if err := s.loadProfile(k, e); err != nil {
		return err
	}
	var merged *profile.Profile
	if e.prof == nil {
		merged, err = Merge(p) // a canonical copy
	} else {
		if got, want := p.Mapping[0].BuildID, e.prof.Mapping[0].BuildID; got != want {
			return fmt.Errorf("add profile of %s %s: %w: profile of build %s, the version's merged profile is of build %s", name, version, ErrOtherBuild, orNone(got), orNone(want))
		}
		merged, err = Merge(e.prof, p)
	}
	if err != nil {
		return fmt.Errorf("add profile of %s %s: %w", name, version, err)
	}
	if err := fits(merged); err != nil {
		return fmt.Errorf("add profile of %s %s: %w", name, version, err)
	}
	samples, _ := Totals(p)
	e.prof, e.raw = merged, nil
	e.stats.Profiles++
	e.stats.Samples += samples
	e.stats.Invocations += max(invocations, 0)
	e.stats.CPUNs += max(cpuNs, 0)
	e.dirty, e.used = true, true
	return nil
}

// fits refuses a merged profile the store could not read back, or whose
// sums could come near overflowing: a guest inventing stacks or values
// must not grow a version's profile without bound.
func fits(p *profile.Profile) error {
	samples, cpuNs := Totals(p)
	if samples > maxMergedTotal || cpuNs > maxMergedTotal {
		return fmt.Errorf("%w: its totals would pass %d", ErrFull, int64(maxMergedTotal))
	}
	var n countWriter
	if err := p.WriteUncompressed(&n); err != nil {
		return err
	}
	if n > maxUncompressed {
		return fmt.Errorf("%w: it would be %d MiB, more than %d MiB (%d distinct stacks)", ErrFull, n>>20, maxUncompressed>>20, len(p.Sample))
	}
	return nil
}

// maxMergedTotal keeps a version's sums (and its Stats) far from int64
// overflow: each Add brings at most maxTotal.
const maxMergedTotal = 1 << 60

type countWriter int

func (c *countWriter) Write(b []byte) (int, error) {
	*c += countWriter(len(b))
	return len(b), nil
}

// Refused counts a profile of the version that Check refused; err, the
// refusal, is the caller's to log: the store keeps only the count.
func (s *Store) Refused(name, version string, err error) {
	k, kerr := newKey(name, version)
	if kerr != nil {
		return
	}
	e, lerr := s.lock(k)
	if lerr != nil {
		return
	}
	defer e.mu.Unlock()
	e.stats.Refused++
	e.dirty = true
}

// Get returns the version's merged profile, as gzipped pprof bytes, and
// its stats. With no profile yet the error wraps os.ErrNotExist, and the
// stats still say what is known (refusals).
func (s *Store) Get(name, version string) ([]byte, Stats, error) {
	k, err := newKey(name, version)
	if err != nil {
		return nil, Stats{}, err
	}
	e, err := s.lock(k)
	if err != nil {
		return nil, Stats{}, err
	}
	defer e.mu.Unlock()
	if e.prof == nil && !e.onDisk {
		return nil, e.stats, fmt.Errorf("profile of %s %s: %w", name, version, os.ErrNotExist)
	}
	raw, err := s.rawOf(k, e)
	if err != nil {
		return nil, e.stats, err
	}
	return bytes.Clone(raw), e.stats, nil
}

// rawOf is the entry's profile's gzipped bytes: cached, serialized from
// memory, or read from disk.
func (s *Store) rawOf(k key, e *entry) ([]byte, error) {
	switch {
	case e.raw != nil:
	case e.prof != nil:
		var b bytes.Buffer
		if err := e.prof.Write(&b); err != nil {
			return nil, fmt.Errorf("profile of %s %s: %w", k.name, k.version, err)
		}
		e.raw = b.Bytes()
	default:
		raw, err := s.root.ReadFile(path.Join(k.dir(), profileFile))
		if err != nil {
			return nil, fmt.Errorf("profile of %s %s: %w", k.name, k.version, err)
		}
		e.raw = raw
	}
	return e.raw, nil
}

// Flush writes every version whose memory is ahead of its files, each
// file atomically. It goes on past a failing version and returns the
// errors together.
func (s *Store) Flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	if s.isClosed() {
		return ErrClosed
	}
	return s.flushAll()
}

// flushAll flushes each entry under its own lock. The caller holds
// flushMu.
func (s *Store) flushAll() error {
	s.mu.Lock()
	ks := make([]key, 0, len(s.entries))
	es := make([]*entry, 0, len(s.entries))
	for k, e := range s.entries {
		ks, es = append(ks, k), append(es, e)
	}
	s.mu.Unlock()
	var errs []error
	for i, e := range es {
		e.mu.Lock()
		if !e.deleted {
			if err := s.flushEntry(ks[i], e); err != nil {
				errs = append(errs, err)
			}
		}
		e.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (s *Store) flushEntry(k key, e *entry) error {
	if e.dirty {
		if err := s.root.MkdirAll(k.dir(), 0o755); err != nil {
			return fmt.Errorf("flush profile of %s %s: %w", k.name, k.version, err)
		}
		if e.prof != nil {
			raw, err := s.rawOf(k, e)
			if err != nil {
				return err
			}
			if err := s.writeFile(k, profileFile, raw); err != nil {
				return err
			}
			e.onDisk = true
		}
		b, err := json.MarshalIndent(e.stats, "", "  ")
		if err != nil {
			return err
		}
		if err := s.writeFile(k, statsFile, append(b, '\n')); err != nil {
			return err
		}
		e.dirty = false
	}
	if !e.used {
		e.prof, e.raw = nil, nil
	}
	e.used = false
	return nil
}

// writeFile replaces k's file name with data atomically: a temporary file
// beside it, synced, renamed over it, and the directory synced.
func (s *Store) writeFile(k key, name string, data []byte) (err error) {
	dir := k.dir()
	tmp := path.Join(dir, tmpPrefix+name)
	defer func() {
		if err != nil {
			s.root.Remove(tmp)
			err = fmt.Errorf("write %s of %s %s: %w", name, k.name, k.version, err)
		}
	}()
	f, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := s.root.Rename(tmp, path.Join(dir, name)); err != nil {
		return err
	}
	d, err := s.root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Delete forgets the version: memory and disk.
func (s *Store) Delete(name, version string) error {
	k, err := newKey(name, version)
	if err != nil {
		return err
	}
	e, err := s.lock(k)
	if err != nil {
		return err
	}
	defer e.mu.Unlock()
	// Remove the files before the entry: an entry made for k after this
	// must find nothing on disk to load.
	if err := s.root.RemoveAll(k.dir()); err != nil {
		return fmt.Errorf("delete profile of %s %s: %w", name, version, err)
	}
	// The function's directory goes with its last version: Remove
	// refuses a directory that is not empty.
	_ = s.root.Remove(k.name)
	s.mu.Lock()
	if s.entries[k] == e {
		delete(s.entries, k)
	}
	s.mu.Unlock()
	e.deleted = true
	return nil
}

// Close flushes and closes the store; every later call fails with
// ErrClosed.
func (s *Store) Close() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	return errors.Join(s.flushAll(), s.root.Close())
}
