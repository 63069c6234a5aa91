// Package kernelbuilder builds Linux kernels for microVMs: `make tinyconfig`
// plus requested Kconfig options, checked to have survived olddefconfig,
// built out of tree and cached by a hash of the source, the options and the
// patches, so a second build with the same inputs costs nothing. It never
// modifies the installed kernel source: it unpacks its own copy.
package kernelbuilder

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Option is one Kconfig setting, by its full CONFIG_ name.
type Option struct {
	Name  string // e.g. CONFIG_PVH
	Value string // y, n, a number or a quoted string
}

func (o Option) String() string { return o.Name + "=" + o.Value }

var optionName = regexp.MustCompile(`^CONFIG_[A-Za-z0-9_]+$`)

// ParseOption parses "CONFIG_NAME=value".
func ParseOption(s string) (Option, error) {
	name, value, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || !optionName.MatchString(name) || value == "" {
		return Option{}, fmt.Errorf("kernel option %q: want CONFIG_NAME=value", s)
	}
	if value == "m" {
		return Option{}, fmt.Errorf("kernel option %s=m: microVM kernels have no modules; use =y", name)
	}
	return Option{Name: name, Value: value}, nil
}

// Patch is a unified diff applied to the source with `patch -p1`.
type Patch struct {
	Name string
	Data []byte
}

// Spec is what to build.
type Spec struct {
	// Source is a kernel source tarball; empty means the newest
	// /usr/src/linux-source-*.tar.xz.
	Source  string
	Options []Option
	Patches []Patch
	// Targets are make targets: "vmlinux", "bzImage".
	Targets []string
}

// formatVersion changes whenever the builder changes what it produces for
// the same inputs, so old cache entries stop matching.
const formatVersion = "kindling-kernelbuilder-1"

// key is the content hash that names a build in the cache.
func (s Spec) key(sourceHash string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nsource %s\n", formatVersion, sourceHash)
	opts := make([]string, len(s.Options))
	for i, o := range s.Options {
		opts[i] = o.String()
	}
	sort.Strings(opts)
	for _, o := range opts {
		fmt.Fprintf(h, "option %s\n", o)
	}
	for _, p := range s.Patches {
		sum := sha256.Sum256(p.Data)
		fmt.Fprintf(h, "patch %x\n", sum)
	}
	targets := append([]string(nil), s.Targets...)
	sort.Strings(targets)
	fmt.Fprintf(h, "targets %s\n", strings.Join(targets, " "))
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// patchesKey names an unpacked, patched source tree.
func patchesKey(sourceHash string, patches []Patch) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", formatVersion, sourceHash)
	for _, p := range patches {
		sum := sha256.Sum256(p.Data)
		fmt.Fprintf(h, "%x\n", sum)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}
