package syscalls_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/kernelbuilder/syscalls"
)

func TestTableLookups(t *testing.T) {
	tab := syscalls.Default()
	if tab.Version == "" || len(tab.Syscalls) < 300 {
		t.Fatalf("table %s has %d calls", tab.Version, len(tab.Syscalls))
	}
	for name, want := range map[string]string{
		"epoll_create1": "CONFIG_EPOLL", "timerfd_create": "CONFIG_TIMERFD", "eventfd2": "CONFIG_EVENTFD",
		"futex": "CONFIG_FUTEX", "socket": "CONFIG_NET", "madvise": "CONFIG_ADVISE_SYSCALLS",
		"membarrier": "CONFIG_MEMBARRIER", "bpf": "CONFIG_BPF_SYSCALL",
	} {
		s, ok := tab.ByName(name)
		if !ok || !s.Optional || strings.Join(s.Options, ",") != want {
			t.Errorf("%s: %+v, want options %s", name, s, want)
		}
	}
	if s, _ := tab.ByNr(1); s.Name != "write" || s.Optional {
		t.Errorf("write: %+v", s)
	}
	if tab.Name(9999) != "syscall_9999" {
		t.Error(tab.Name(9999))
	}
}

// TestTableMatchesInstalledSource re-derives the table from the installed
// kernel source and fails if the checked-in one has drifted from it.
func TestTableMatchesInstalledSource(t *testing.T) {
	if _, err := kernelbuilder.FindSource(); err != nil {
		if os.Getenv("KINDLING_LINUX_TEST") != "" {
			t.Fatal(err)
		}
		t.Skipf("skipping the drift check: %v", err)
	}
	src, err := kernelbuilder.SourceTree(context.Background(), kernelbuilder.BuildOptions{Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	got, err := syscalls.Derive(src)
	if err != nil {
		t.Fatal(err)
	}
	want := syscalls.Default()
	if got.Version != want.Version {
		t.Errorf("installed source is Linux %s, the table was derived from %s", got.Version, want.Version)
	}
	index := map[int]syscalls.Syscall{}
	for _, s := range want.Syscalls {
		index[s.Nr] = s
	}
	var drift []string
	for _, s := range got.Syscalls {
		w, ok := index[s.Nr]
		if !ok || fmt.Sprint(w) != fmt.Sprint(s) {
			drift = append(drift, fmt.Sprintf("%d: table %+v, source %+v", s.Nr, w, s))
		}
		delete(index, s.Nr)
	}
	for _, w := range index {
		drift = append(drift, fmt.Sprintf("%d: table %+v, not in the source", w.Nr, w))
	}
	if len(drift) > 0 {
		t.Errorf("the syscall table drifted from %s (regenerate: go run ./kernelbuilder/syscalls/gen -src %s):\n%s", src, src, strings.Join(drift, "\n"))
	}
}
