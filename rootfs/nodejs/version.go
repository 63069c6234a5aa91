package nodejs

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultVersion is the Node release line an image gets unless told.
const DefaultVersion = "22"

// MinVersion is the oldest Node an image may run: NODE_COMPILE_CACHE,
// which carries a version's compile cache to the next, arrived in 22.1.0.
var MinVersion = version{22, 1, 0, ""}

// flushVersion is the first Node with module.flushCompileCache: older
// ones write their compile cache only when the task exits.
var flushVersion = version{22, 10, 0, ""}

// version is a semantic version as npm publishes Node's: 22.23.3.
type version struct {
	major, minor, patch int
	pre                 string // a prerelease ("rc.1"): never picked by a range
}

func parseVersion(s string) (version, bool) {
	s = strings.TrimPrefix(s, "v")
	core, pre, _ := strings.Cut(s, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return version{}, false
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || (len(p) > 1 && p[0] == '0') {
			return version{}, false
		}
		n[i] = v
	}
	return version{n[0], n[1], n[2], pre}, true
}

func (v version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch)
	if v.pre != "" {
		s += "-" + v.pre
	}
	return s
}

// less orders versions; a prerelease comes before its release.
func (v version) less(w version) bool {
	if v.major != w.major {
		return v.major < w.major
	}
	if v.minor != w.minor {
		return v.minor < w.minor
	}
	if v.patch != w.patch {
		return v.patch < w.patch
	}
	return v.pre != "" && (w.pre == "" || v.pre < w.pre)
}

// versionSpec is what a user asks for: a release line ("22"), a minor
// line ("22.23", "22.x"), an exact version ("22.23.3", "v22.23.3") or a
// dist-tag of the registry ("latest").
type versionSpec struct {
	raw   string
	nums  []int  // the fixed leading numbers: [22], [22 23] or [22 23 3]
	exact string // set for an exact version, prerelease included
	tag   string // set for a dist-tag
}

func parseVersionSpec(s string) (versionSpec, error) {
	vs := versionSpec{raw: s}
	t := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if t == "" {
		t = DefaultVersion
	}
	if v, ok := parseVersion(t); ok {
		vs.exact = v.String()
		vs.nums = []int{v.major, v.minor, v.patch}
		return vs, vs.checkFloor()
	}
	if t[0] < '0' || t[0] > '9' {
		for _, r := range t {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
				return vs, fmt.Errorf("node version %q: want a release line (22), a minor line (22.23), a version (22.23.3) or a dist-tag (latest)", s)
			}
		}
		vs.tag = t
		return vs, nil
	}
	parts := strings.Split(t, ".")
	for i, p := range parts {
		if p == "x" || p == "X" || p == "*" {
			if i == 0 {
				return vs, fmt.Errorf("node version %q: name at least a major version", s)
			}
			for _, q := range parts[i:] {
				if q != "x" && q != "X" && q != "*" {
					return vs, fmt.Errorf("node version %q: a wildcard must end it", s)
				}
			}
			break
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || i > 2 {
			return vs, fmt.Errorf("node version %q: want a release line (22), a minor line (22.23), a version (22.23.3) or a dist-tag (latest)", s)
		}
		vs.nums = append(vs.nums, n)
	}
	return vs, vs.checkFloor()
}

// checkFloor refuses a spec that can only match versions below
// MinVersion, before asking any registry.
func (vs versionSpec) checkFloor() error {
	top := version{major: vs.nums[0], minor: 1 << 30, patch: 1 << 30}
	if len(vs.nums) > 1 {
		top.minor = vs.nums[1]
	}
	if len(vs.nums) > 2 {
		top.patch = vs.nums[2]
	}
	if top.less(MinVersion) {
		return tooOld(vs.raw)
	}
	return nil
}

func tooOld(what string) error {
	return fmt.Errorf("node %s: Kindling's Node images need node %s or newer (NODE_COMPILE_CACHE, which carries a version's compile cache to the next, arrived in 22.1.0)", what, MinVersion)
}

// matches reports whether v is in the spec's range (a tag is resolved
// beforehand). Only an exact spec matches a prerelease.
func (vs versionSpec) matches(v version) bool {
	if vs.exact != "" {
		return v.String() == vs.exact
	}
	if v.pre != "" {
		return false
	}
	n := []int{v.major, v.minor, v.patch}
	for i, want := range vs.nums {
		if n[i] != want {
			return false
		}
	}
	return true
}

// pick returns the highest of versions in the spec's range, and whether
// there was one.
func (vs versionSpec) pick(versions []string) (version, bool) {
	var best version
	found := false
	for _, s := range versions {
		v, ok := parseVersion(s)
		if !ok || !vs.matches(v) {
			continue
		}
		if !found || best.less(v) {
			best, found = v, true
		}
	}
	return best, found
}
