// Package testlock serialises slow tests across test binaries: go test runs
// packages in parallel, and two emulated Linux boots side by side took six
// minutes each here against about one alone.
package testlock

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Exclusive blocks until no other test process holds the lock called
// name, and holds it until t ends.
func Exclusive(t testing.TB, name string) {
	t.Helper()
	p := filepath.Join(os.TempDir(), "kindling-test-"+name+".lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("test lock %s: %v", p, err)
	}
	start := time.Now()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("test lock %s: %v", p, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("waited %v for another test's %s", d.Round(time.Second), name)
	}
	t.Cleanup(func() { f.Close() })
}
