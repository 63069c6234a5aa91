// Package systemd holds kindlingd's systemd unit, kindlingd.service; its
// test checks the unit with systemd-analyze verify.
package systemd

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const unitName = "kindlingd.service"

// execStart matches the unit's ExecStart= line up to the end of its binary.
var execStart = regexp.MustCompile(`(?m)^ExecStart=(\S+)`)

// TestUnit checks the settings kindlingd depends on, then runs
// systemd-analyze verify on the unit.
func TestUnit(t *testing.T) {
	t.Run("settings", testSettings)
	t.Run("verify", testVerify)
}

// testVerify runs systemd-analyze verify on a copy of the unit whose
// ExecStart binary exists (verify fails on a missing one), and fails on any
// message about the unit.
func testVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		msg := "systemd-analyze not found: install systemd (make setup does)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	unit, err := os.ReadFile(unitName)
	if err != nil {
		t.Fatal(err)
	}
	m := execStart.FindSubmatchIndex(unit)
	if m == nil || filepath.Base(string(unit[m[2]:m[3]])) != "kindlingd" {
		t.Fatalf("%s: no ExecStart= line running kindlingd", unitName)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "kindlingd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	copied := filepath.Join(dir, unitName)
	if err := os.WriteFile(copied, bytes.Join([][]byte{unit[:m[2]], []byte(bin), unit[m[3]:]}, nil), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// --recursive-errors=no: the exit status reflects this unit only, not
	// the host's units it depends on (network-online.target and the
	// default dependencies).
	cmd := exec.CommandContext(ctx, analyze, "verify", "--recursive-errors=no", copied)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("%s: %v", cmd, err)
	}
	// verify also loads the host's units this one depends on, and prints
	// what it finds wrong with those ("Unit hwclock.service is masked.",
	// "foo.service: Command ... is not executable"): that is the host's
	// business, not this unit's. Every message about this unit names it,
	// as "<path>/kindlingd.service:LINE: ..." (parse errors: unknown keys,
	// bad values) or "kindlingd.service: ..." (missing commands, failed
	// dependencies). Note that verify exits 0 on parse errors, so the
	// output is what decides.
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
		case strings.Contains(line, unitName):
			t.Errorf("systemd-analyze verify: %s", line)
		default:
			t.Logf("ignored (not about %s): %s", unitName, line)
		}
	}
}

// testSettings checks the settings kindlingd's design depends on: it
// reports readiness and liveness through sd_notify, and its sandboxes must
// survive its stop and restart.
func testSettings(t *testing.T) {
	unit, err := os.ReadFile(unitName)
	if err != nil {
		t.Fatal(err)
	}
	service := serviceSettings(unit)
	for _, c := range []struct {
		key string
		ok  func(string) bool
		why string
	}{
		{"Type", is("notify"), "kindlingd reports READY=1 through sd_notify"},
		{"WatchdogSec", func(v string) bool { return v != "" && v != "0" && v != "infinity" }, "kindlingd pings the watchdog; a hung daemon must be restarted"},
		{"KillMode", is("process"), "sandboxes must outlive a kindlingd stop or restart"},
	} {
		v, found := service[c.key]
		if !found || !c.ok(v) {
			t.Errorf("[Service] %s=%s: %s", c.key, v, c.why)
		}
	}
}

func is(want string) func(string) bool { return func(v string) bool { return v == want } }

// serviceSettings returns the [Service] section's settings, the last
// assignment of each key winning as in systemd.
func serviceSettings(unit []byte) map[string]string {
	settings := map[string]string{}
	section := ""
	for line := range strings.Lines(string(unit)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
		case section == "[Service]":
			if k, v, ok := strings.Cut(line, "="); ok {
				settings[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
	}
	return settings
}
