package nodejs

import (
	"strings"
	"testing"
)

func TestVersionSpecs(t *testing.T) {
	versions := []string{"20.11.0", "22.0.0", "22.1.0", "22.9.0", "22.10.0", "22.23.3", "22.23.2", "23.0.0", "24.12.0", "24.2.0", "25.0.0-rc.1", "not-a-version"}
	for _, c := range []struct {
		spec, want, err string
	}{
		{"", "22.23.3", ""},
		{"22", "22.23.3", ""},
		{"v22", "22.23.3", ""},
		{"22.x", "22.23.3", ""},
		{"22.9", "22.9.0", ""},
		{"22.23.2", "22.23.2", ""},
		{"v22.23.3", "22.23.3", ""},
		{"24", "24.12.0", ""}, // numeric, not lexical, order
		{"24.*", "24.12.0", ""},
		{"25.0.0-rc.1", "25.0.0-rc.1", ""}, // a prerelease only when named
		{"25", "", "no version"},
		{"22.22", "", "no version"},
		{"20", "", "need node 22.1.0 or newer"},
		{"22.0", "", "need node 22.1.0 or newer"},
		{"21.9.9", "", "need node 22.1.0 or newer"},
		{"x", "", `no dist-tag "x"`},
		{"*", "", "want a release line"},
		{"22.*.*", "22.23.3", ""},
		{"22.x.1", "", "a wildcard must end it"},
		{"22.1.2.3", "", "want a release line"},
		{">=22", "", "want a release line"},
	} {
		idx := index{Versions: map[string]dist{}}
		for _, v := range versions {
			idx.Versions[v] = dist{}
		}
		vs, err := parseVersionSpec(c.spec)
		var got version
		if err == nil {
			got, _, err = resolve(vs, idx)
		}
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: got %v, %v; want an error containing %q", c.spec, got, err, c.err)
		case c.err == "" && (err != nil || got.String() != c.want):
			t.Errorf("%q: got %v, %v; want %s", c.spec, got, err, c.want)
		}
	}
}

func TestResolveDistTags(t *testing.T) {
	idx := index{DistTags: map[string]string{"latest": "24.12.0", "old": "20.11.0"},
		Versions: map[string]dist{"24.12.0": {Integrity: "a"}, "20.11.0": {}, "22.23.3": {}}}
	for _, c := range []struct{ spec, want, err string }{
		{"latest", "24.12.0", ""},
		{"old", "", "need node 22.1.0 or newer"},
		{"next", "", `no dist-tag "next" (it has latest, old)`},
	} {
		vs, err := parseVersionSpec(c.spec)
		if err != nil {
			t.Fatal(err)
		}
		v, d, err := resolve(vs, idx)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want %q", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || v.String() != c.want || d.Integrity != "a" {
			t.Errorf("%s: %v %+v %v", c.spec, v, d, err)
		}
	}
}
