package kernelbuilder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
)

// BuildOptions are how to build.
type BuildOptions struct {
	CacheDir string    // default DefaultCacheDir()
	Jobs     int       // make -j; default the number of CPUs
	Progress io.Writer // phase lines and periodic progress; nil is silent
}

// Artifacts are a finished build in the cache.
type Artifacts struct {
	Dir     string
	Vmlinux string // ELF with the PVH note, when built
	BzImage string // when built
	Config  string
	Log     string
	Key     string
	Cached  bool
	// BuildTime is how long the build that made this entry took (zero if
	// the entry predates recording it).
	BuildTime time.Duration
}

// makeFunc runs make; tests replace it.
type makeFunc func(ctx context.Context, dir string, log io.Writer, args ...string) error

// Build builds spec, or returns the cached result of an identical build.
// Builds of the same key from several processes wait for each other.
func Build(ctx context.Context, spec Spec, opt BuildOptions) (*Artifacts, error) {
	return build(ctx, spec, opt, runMake)
}

func build(ctx context.Context, spec Spec, opt BuildOptions, mk makeFunc) (*Artifacts, error) {
	progress := progressOrDiscard(opt.Progress)
	if len(spec.Targets) == 0 {
		spec.Targets = []string{"vmlinux", "bzImage"}
	}
	for _, t := range spec.Targets {
		if t != "vmlinux" && t != "bzImage" {
			return nil, fmt.Errorf("kernel target %q: want vmlinux or bzImage", t)
		}
	}
	cache, tarball, srcHash, err := resolveSource(opt, spec.Source)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cache, "kernels"), 0o755); err != nil {
		return nil, fmt.Errorf("kernel cache %s: %w", cache, err)
	}
	key := spec.key(srcHash)
	final := filepath.Join(cache, "kernels", key)
	if a, ok := artifacts(final, key, spec); ok {
		a.Cached = true
		fmt.Fprintf(progress, "kernel: cached build %s\n", final)
		return a, nil
	}
	if err := checkTools(); err != nil {
		return nil, err
	}
	unlock, err := lockFile(final + ".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if a, ok := artifacts(final, key, spec); ok { // built while we waited
		a.Cached = true
		return a, nil
	}
	tree, err := unpackSource(ctx, cache, tarball, srcHash, spec.Patches, progress)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(final), key+".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := configureAndMake(ctx, spec, opt, tree, tmp, progress, mk); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	a, ok := artifacts(final, key, spec)
	if !ok {
		return nil, fmt.Errorf("kernel build %s finished without its artefacts", final)
	}
	fmt.Fprintf(progress, "kernel: done: %s\n", final)
	return a, nil
}

// artifacts describes a finished cache entry, if every target is there.
func artifacts(dir, key string, spec Spec) (*Artifacts, bool) {
	a := &Artifacts{Dir: dir, Key: key, Config: filepath.Join(dir, "config"), Log: filepath.Join(dir, "build.log")}
	for _, t := range spec.Targets {
		p := filepath.Join(dir, t)
		if _, err := os.Stat(p); err != nil {
			return nil, false
		}
		switch t {
		case "vmlinux":
			a.Vmlinux = p
		case "bzImage":
			a.BzImage = p
		}
	}
	if _, err := os.Stat(a.Config); err != nil {
		return nil, false
	}
	if b, err := os.ReadFile(filepath.Join(dir, "build-time")); err == nil {
		a.BuildTime, _ = time.ParseDuration(strings.TrimSpace(string(b)))
	}
	return a, true
}

func configureAndMake(ctx context.Context, spec Spec, opt BuildOptions, tree, dir string, progress io.Writer, mk makeFunc) error {
	out := filepath.Join(dir, "build")
	logPath := filepath.Join(dir, "build.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	fail := func(step string, err error) error {
		keep := filepath.Join(filepath.Dir(dir), filepath.Base(dir)[:32]+".failed.log")
		_ = copyFile(logPath, keep)
		return fmt.Errorf("kernel %s failed: %v\n%s\n(full log: %s)", step, err, tail(logPath, 30), keep)
	}
	fmt.Fprintf(progress, "kernel: configuring (tinyconfig + %d options) in %s\n", len(spec.Options), filepath.Base(tree))
	if _, err := configure(ctx, spec, tree, out, logf, mk); err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			return err
		}
		return fail("configure", err)
	}
	jobs := opt.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	fmt.Fprintf(progress, "kernel: building %s with -j%d (log: %s)\n", strings.Join(spec.Targets, " "), jobs, logPath)
	started := time.Now()
	pw := newProgress(logf, progress)
	err = mk(ctx, tree, pw, append([]string{"O=" + out, fmt.Sprintf("-j%d", jobs)}, spec.Targets...)...)
	pw.stop()
	if err != nil {
		return fail("build", err)
	}
	for _, t := range spec.Targets {
		src := filepath.Join(out, t)
		if t == "bzImage" {
			src = filepath.Join(out, "arch", "x86", "boot", "bzImage")
		}
		if err := copyFile(src, filepath.Join(dir, t)); err != nil {
			return fmt.Errorf("kernel build: collect %s: %w", t, err)
		}
	}
	if err := copyFile(filepath.Join(out, ".config"), filepath.Join(dir, "config")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "build-time"), []byte(time.Since(started).Round(time.Second).String()+"\n"), 0o644); err != nil {
		return err
	}
	return os.RemoveAll(out)
}

// configError is a requested option olddefconfig dropped; the message
// names the option and the dependency that dropped it.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

// configure writes out/.config: tinyconfig, then the spec's options, then
// olddefconfig, and checks every requested option survived.
func configure(ctx context.Context, spec Spec, tree, out string, log io.Writer, mk makeFunc) (map[string]string, error) {
	if err := mk(ctx, tree, log, "O="+out, "tinyconfig"); err != nil {
		return nil, fmt.Errorf("tinyconfig: %w", err)
	}
	cfgPath := filepath.Join(out, ".config")
	if err := appendOptions(cfgPath, spec.Options); err != nil {
		return nil, err
	}
	if err := mk(ctx, tree, log, "O="+out, "olddefconfig"); err != nil {
		return nil, fmt.Errorf("olddefconfig: %w", err)
	}
	f, err := os.Open(cfgPath)
	if err != nil {
		return nil, err
	}
	cfg, err := readConfig(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	if miss := missingOptions(cfg, spec.Options); len(miss) > 0 {
		var lines []string
		for _, o := range miss {
			l := fmt.Sprintf("%s (got %s)", o, valueOr(cfg[o.Name], "unset"))
			if dep := dependsOn(tree, o.Name); dep != "" {
				l += "; " + dep
			}
			lines = append(lines, l)
		}
		return cfg, &configError{fmt.Sprintf("kernel config: olddefconfig dropped %d requested option(s): %s", len(miss), strings.Join(lines, " | "))}
	}
	return cfg, nil
}

// Configure resolves spec's configuration against the kernel source
// (tinyconfig, the options, olddefconfig) without building, and returns
// the resulting .config; a requested option that did not survive is an
// error naming it and its dependencies. It takes seconds, not minutes.
func Configure(ctx context.Context, spec Spec, opt BuildOptions) (map[string]string, error) {
	if err := checkTools(); err != nil {
		return nil, err
	}
	cache, tarball, srcHash, err := resolveSource(opt, spec.Source)
	if err != nil {
		return nil, err
	}
	tree, err := unpackSource(ctx, cache, tarball, srcHash, spec.Patches, progressOrDiscard(opt.Progress))
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "kindling-kconfig-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var log bytes.Buffer
	cfg, err := configure(ctx, spec, tree, tmp, &log, runMake)
	if err != nil {
		var ce *configError
		if !errors.As(err, &ce) {
			return nil, fmt.Errorf("%w\n%s", err, lastLines(log.String(), 20))
		}
	}
	return cfg, err
}

// SourceTree unpacks (once, cached) the kernel source and returns its
// directory, for tools that read it (the syscall table's drift test).
func SourceTree(ctx context.Context, opt BuildOptions) (string, error) {
	cache, tarball, srcHash, err := resolveSource(opt, "")
	if err != nil {
		return "", err
	}
	return unpackSource(ctx, cache, tarball, srcHash, nil, progressOrDiscard(opt.Progress))
}

// resolveSource picks the cache directory (opt's, or the default), the
// kernel source tarball (the one given, which must exist, or the newest
// installed) and its content hash.
func resolveSource(opt BuildOptions, tarball string) (cache, source, hash string, err error) {
	cache = opt.CacheDir
	if cache == "" {
		if cache, err = DefaultCacheDir(); err != nil {
			return "", "", "", err
		}
	}
	if tarball == "" {
		if tarball, err = FindSource(); err != nil {
			return "", "", "", err
		}
	} else if _, err := os.Stat(tarball); err != nil {
		return "", "", "", fmt.Errorf("%w: %s: %v; install it with `apt-get install linux-source-6.12`", ErrNoSource, tarball, err)
	}
	if hash, err = sourceHash(cache, tarball); err != nil {
		return "", "", "", err
	}
	return cache, tarball, hash, nil
}

func progressOrDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// appendOptions sets the options by appending them to .config; olddefconfig
// then resolves them (a later line wins in Kconfig).
func appendOptions(path string, opts []Option) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, o := range opts {
		line := o.String()
		if o.Value == "n" {
			line = "# " + o.Name + " is not set"
		}
		if _, err := fmt.Fprintln(f, line); err != nil {
			return err
		}
	}
	return nil
}

func runMake(ctx context.Context, dir string, log io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", dir}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	return cmd.Run()
}

func valueOr(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return lastLines(string(b), n)
}

// progressWriter forwards make's output to the log and counts compiled
// objects, printing a line every progressEvery.
type progressWriter struct {
	log     io.Writer
	objects atomic.Int64
	partial []byte
	done    chan struct{}
	exited  chan struct{}
}

const progressEvery = 10 * time.Second

func newProgress(log, progress io.Writer) *progressWriter {
	p := &progressWriter{log: log, done: make(chan struct{}), exited: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(p.exited)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				fmt.Fprintf(progress, "kernel: compiled %d objects in %v\n", p.objects.Load(), time.Since(start).Round(time.Second))
				return
			case <-t.C:
				fmt.Fprintf(progress, "kernel: building... %d objects compiled, %v elapsed\n", p.objects.Load(), time.Since(start).Round(time.Second))
			}
		}
	}()
	return p
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		if line := p.partial[:i]; bytes.HasPrefix(line, []byte("  CC ")) || bytes.HasPrefix(line, []byte("  AS ")) {
			p.objects.Add(1)
		}
		p.partial = p.partial[i+1:]
	}
	return p.log.Write(b)
}

func (p *progressWriter) stop() {
	close(p.done)
	<-p.exited
}
