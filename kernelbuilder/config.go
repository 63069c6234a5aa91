package kernelbuilder

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// readConfig parses a .config into name -> value; "# CONFIG_X is not set"
// gives "n".
func readConfig(r io.Reader) (map[string]string, error) {
	cfg := map[string]string{}
	notSet := regexp.MustCompile(`^# (CONFIG_[A-Za-z0-9_]+) is not set$`)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := notSet.FindStringSubmatch(line); m != nil {
			cfg[m[1]] = "n"
			continue
		}
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			cfg[k] = v
		}
	}
	return cfg, sc.Err()
}

// missingOptions lists the requested options whose value did not survive.
func missingOptions(cfg map[string]string, want []Option) []Option {
	var out []Option
	for _, o := range want {
		got, ok := cfg[o.Name]
		if !ok {
			got = "n"
		}
		if got != o.Value {
			out = append(out, o)
		}
	}
	return out
}

// dependsOn says why olddefconfig may have dropped option name: the
// `depends on` lines of its Kconfig entry, the `if` blocks around the
// entry, and the `if` blocks around the `source` line that pulls its
// Kconfig file in (IPV6 has no `depends on`: net/Kconfig sources it inside
// `if INET`).
func dependsOn(src, name string) string {
	sym := strings.TrimPrefix(name, "CONFIG_")
	entry := regexp.MustCompile(`^\s*(menu)?config\s+` + regexp.QuoteMeta(sym) + `\s*$`)
	var found []string
	var file string
	_ = filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), "Kconfig") || file != "" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		ifs, in := []string{}, false
		for _, line := range strings.Split(string(data), "\n") {
			t := strings.TrimSpace(line)
			switch {
			case entry.MatchString(line):
				in, file = true, rel
				for _, c := range ifs {
					found = append(found, fmt.Sprintf("%s: inside `if %s`", rel, c))
				}
				continue
			case strings.HasPrefix(t, "if "):
				ifs = append(ifs, strings.TrimSpace(t[3:]))
			case t == "endif" && len(ifs) > 0:
				ifs = ifs[:len(ifs)-1]
			}
			if in {
				if strings.HasPrefix(t, "config ") || strings.HasPrefix(t, "menuconfig ") || strings.HasPrefix(t, "endmenu") || strings.HasPrefix(t, "if ") || t == "endif" {
					break
				}
				if strings.HasPrefix(t, "depends on") {
					found = append(found, fmt.Sprintf("%s: %s", rel, t))
				}
			}
		}
		if file == "" {
			found = nil
		}
		return nil
	})
	if file != "" {
		found = append(found, sourcedInside(src, file)...)
	}
	return strings.Join(found, "; ")
}

// sourcedInside finds the `source "file"` line that includes a Kconfig
// file and the `if` blocks around it.
func sourcedInside(src, file string) []string {
	var out []string
	needle := `source "` + filepath.ToSlash(file) + `"`
	_ = filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), "Kconfig") || out != nil {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(data), needle) {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		var ifs []string
		for _, line := range strings.Split(string(data), "\n") {
			t := strings.TrimSpace(line)
			switch {
			case strings.HasPrefix(t, "if "):
				ifs = append(ifs, strings.TrimSpace(t[3:]))
			case t == "endif" && len(ifs) > 0:
				ifs = ifs[:len(ifs)-1]
			case t == needle:
				out = []string{}
				for _, c := range ifs {
					out = append(out, fmt.Sprintf("%s sources %s inside `if %s`", rel, file, c))
				}
				return nil
			}
		}
		return nil
	})
	return out
}
