package kernelbuilder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestKeyIsStableAndSensitive(t *testing.T) {
	base := Spec{Options: []Option{{"CONFIG_A", "y"}, {"CONFIG_B", "y"}}, Targets: []string{"vmlinux"}}
	k := base.key("src1")
	reordered := Spec{Options: []Option{{"CONFIG_B", "y"}, {"CONFIG_A", "y"}}, Targets: []string{"vmlinux"}}
	if reordered.key("src1") != k {
		t.Fatal("option order changed the key")
	}
	for name, s := range map[string]Spec{
		"option value": {Options: []Option{{"CONFIG_A", "n"}, {"CONFIG_B", "y"}}, Targets: []string{"vmlinux"}},
		"extra option": {Options: append(append([]Option(nil), base.Options...), Option{"CONFIG_C", "y"}), Targets: []string{"vmlinux"}},
		"patch":        {Options: base.Options, Targets: []string{"vmlinux"}, Patches: []Patch{{Name: "p", Data: []byte("x")}}},
		"targets":      {Options: base.Options, Targets: []string{"vmlinux", "bzImage"}},
	} {
		if s.key("src1") == k {
			t.Errorf("%s did not change the key", name)
		}
	}
	if base.key("src2") == k {
		t.Error("the source hash did not change the key")
	}
}

func TestParseOption(t *testing.T) {
	for _, tc := range []struct {
		in, err string
		want    Option
	}{
		{in: "CONFIG_PVH=y", want: Option{"CONFIG_PVH", "y"}},
		{in: `CONFIG_CMDLINE="console=ttyS0"`, want: Option{"CONFIG_CMDLINE", `"console=ttyS0"`}},
		{in: "CONFIG_NR_CPUS=4", want: Option{"CONFIG_NR_CPUS", "4"}},
		{in: "CONFIG_EXT4_FS=m", err: "no modules"},
		{in: "PVH=y", err: "CONFIG_NAME=value"},
		{in: "CONFIG_PVH", err: "CONFIG_NAME=value"},
		{in: "CONFIG_PVH=", err: "CONFIG_NAME=value"},
	} {
		got, err := ParseOption(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v %v", tc.in, got, err)
		}
	}
}

func TestMissingOptions(t *testing.T) {
	cfg, err := readConfig(strings.NewReader("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"x\"\n# comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	miss := missingOptions(cfg, []Option{{"CONFIG_A", "y"}, {"CONFIG_B", "y"}, {"CONFIG_B", "n"}, {"CONFIG_C", "n"}, {"CONFIG_D", "y"}, {"CONFIG_S", `"x"`}})
	if fmt.Sprint(miss) != "[CONFIG_B=y CONFIG_D=y]" {
		t.Fatalf("missing %v", miss)
	}
}

// fakeMake writes a .config for tinyconfig and artefacts for the build.
func fakeMake(builds *atomic.Int32, dropped string) makeFunc {
	return func(ctx context.Context, dir string, log io.Writer, args ...string) error {
		out := strings.TrimPrefix(args[0], "O=")
		switch args[len(args)-1] {
		case "tinyconfig":
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(out, ".config"), []byte("CONFIG_64BIT=y\n"), 0o644)
		case "olddefconfig":
			if dropped == "" {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(out, ".config"))
			s := strings.ReplaceAll(string(b), dropped+"=y", "# "+dropped+" is not set")
			return os.WriteFile(filepath.Join(out, ".config"), []byte(s), 0o644)
		}
		builds.Add(1)
		fmt.Fprintln(log, "  CC      init/main.o")
		if err := os.MkdirAll(filepath.Join(out, "arch/x86/boot"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, "vmlinux"), []byte("elf"), 0o644); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(out, "arch/x86/boot/bzImage"), []byte("bz"), 0o644)
	}
}

// fakeSource is a tarball with a minimal source tree in it.
func fakeSource(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "linux-source-0.0")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tree, "Kconfig"), []byte("config PVH\n\tbool\n\tdepends on X86_64\n"), 0o644)
	tarball := filepath.Join(dir, "linux-source-0.0.tar.xz")
	if out, err := exec.Command("tar", "-cJf", tarball, "-C", dir, "linux-source-0.0").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	return tarball
}

func TestBuildCachesAndSerialises(t *testing.T) {
	if err := checkTools(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	src := fakeSource(t)
	cache := t.TempDir()
	spec := Spec{Source: src, Options: []Option{{"CONFIG_PVH", "y"}}}
	var builds atomic.Int32
	var wg sync.WaitGroup
	arts := make([]*Artifacts, 4)
	errs := make([]error, 4)
	for i := range arts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			arts[i], errs[i] = build(context.Background(), spec, BuildOptions{CacheDir: cache}, fakeMake(&builds, ""))
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
	}
	if n := builds.Load(); n != 1 {
		t.Fatalf("%d concurrent builds of one key ran make %d times, want 1", len(arts), n)
	}
	for _, a := range arts {
		if a.Dir != arts[0].Dir || a.Vmlinux == "" || a.BzImage == "" {
			t.Fatalf("artefacts differ: %+v vs %+v", a, arts[0])
		}
	}
	again, err := build(context.Background(), spec, BuildOptions{CacheDir: cache}, fakeMake(&builds, ""))
	if err != nil || !again.Cached || builds.Load() != 1 {
		t.Fatalf("second build: %+v %v (builds %d)", again, err, builds.Load())
	}
	leftovers, _ := filepath.Glob(filepath.Join(cache, "kernels", "*.tmp-*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary build dirs left behind: %v", leftovers)
	}
}

func TestBuildNamesDroppedOption(t *testing.T) {
	if err := checkTools(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	var builds atomic.Int32
	_, err := build(context.Background(), Spec{Source: fakeSource(t), Options: []Option{{"CONFIG_PVH", "y"}}},
		BuildOptions{CacheDir: t.TempDir()}, fakeMake(&builds, "CONFIG_PVH"))
	if err == nil || !strings.Contains(err.Error(), "CONFIG_PVH=y (got n)") || !strings.Contains(err.Error(), "depends on X86_64") {
		t.Fatalf("error %v, want it to name CONFIG_PVH and its dependency", err)
	}
	if builds.Load() != 0 {
		t.Fatal("built despite a dropped option")
	}
}

func TestMissingSourceSaysHowToInstall(t *testing.T) {
	_, err := Build(context.Background(), Spec{Source: "/nonexistent/linux-source-6.12.tar.xz"}, BuildOptions{CacheDir: t.TempDir()})
	if !errors.Is(err, ErrNoSource) || !strings.Contains(err.Error(), "apt-get install linux-source-6.12") {
		t.Fatalf("error %v", err)
	}
}

// The embedded patches must apply to the kernel source we build.
func TestPatchesApplyToInstalledSource(t *testing.T) {
	src, err := FindSource()
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command("tar", "-xJf", src, "-C", dir, "--wildcards", "*/arch/x86/kernel/alternative.c", "*/arch/x86/kernel/fpu/core.c")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("extract: %v %s", err, out)
	}
	tree, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, patch := range TestKernelSpec(true).Patches {
		p := exec.Command("patch", "-p1", "--dry-run", "--batch")
		p.Dir = tree[0]
		p.Stdin = strings.NewReader(string(patch.Data))
		if out, err := p.CombinedOutput(); err != nil {
			t.Fatalf("%s does not apply to %s: %v\n%s", patch.Name, src, err, out)
		}
	}
}
