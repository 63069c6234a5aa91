package analyze

import (
	"sort"
	"testing"

	"github.com/kindlingvm/kindling/kernelbuilder/syscalls"
)

// TestLibcTableNamesAreKnownSyscalls checks that every call the libc table
// names is a real x86-64 system call, that no function is listed as both
// making calls and pure, and that the lists are sorted without duplicates.
func TestLibcTableNamesAreKnownSyscalls(t *testing.T) {
	tbl := syscalls.Default()
	table, pure := libcSyscalls(), libcPure()
	if len(table) < 250 {
		t.Errorf("libc table has %d functions, want at least 250", len(table))
	}
	fns := make([]string, 0, len(table))
	for fn := range table {
		fns = append(fns, fn)
	}
	sort.Strings(fns)
	for _, fn := range fns {
		names := table[fn]
		for i, n := range names {
			if _, ok := tbl.ByName(n); !ok {
				t.Errorf("libcSyscalls()[%q] names %q, which is not an x86-64 system call", fn, n)
			}
			if i > 0 && names[i-1] >= n {
				t.Errorf("libcSyscalls()[%q] is not sorted and unique at %q", fn, n)
			}
		}
		if pure[fn] {
			t.Errorf("%q is both in libcSyscalls() and libcPure()", fn)
		}
	}
	if _, ok := table["syscall"]; !ok {
		t.Errorf("libcSyscalls() lacks the generic syscall function")
	}
}
