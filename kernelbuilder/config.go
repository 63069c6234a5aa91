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

// dependsOn finds the `depends on` lines of option name's Kconfig entry in
// the source tree, to say why olddefconfig dropped it.
func dependsOn(src, name string) string {
	sym := strings.TrimPrefix(name, "CONFIG_")
	entry := regexp.MustCompile(`^\s*(menu)?config\s+` + regexp.QuoteMeta(sym) + `\s*$`)
	var found []string
	_ = filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), "Kconfig") || len(found) > 0 {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		in := false
		for sc.Scan() {
			line := sc.Text()
			t := strings.TrimSpace(line)
			if entry.MatchString(line) {
				in = true
				continue
			}
			if in {
				if strings.HasPrefix(t, "config ") || strings.HasPrefix(t, "menuconfig ") || strings.HasPrefix(t, "endmenu") {
					break
				}
				if strings.HasPrefix(t, "depends on") {
					rel, _ := filepath.Rel(src, p)
					found = append(found, fmt.Sprintf("%s: %s", rel, t))
				}
			}
		}
		return nil
	})
	return strings.Join(found, "; ")
}
