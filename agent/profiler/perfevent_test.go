package profiler

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseCPUList(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []int
	}{{"0", []int{0}}, {"0-3", []int{0, 1, 2, 3}}, {"0-1,4,6-7", []int{0, 1, 4, 6, 7}}, {"", nil}, {"3-1", nil}, {"a", nil}} {
		got, err := parseCPUList(tt.in)
		if !reflect.DeepEqual(got, tt.want) || (err == nil) != (tt.want != nil) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestOpenError(t *testing.T) {
	for _, tt := range []struct {
		errno unix.Errno
		want  error
	}{{unix.ENOENT, ErrNoPerfEvents}, {unix.ENOSYS, ErrNoPerfEvents}, {unix.EOPNOTSUPP, ErrNoPerfEvents}, {unix.EACCES, ErrPerfDenied}, {unix.EPERM, ErrPerfDenied}} {
		err := openError(tt.errno, 1, 0)
		if !errors.Is(err, tt.want) || !errors.Is(err, tt.errno) {
			t.Errorf("openError(%v) = %v, want it to wrap %v and the errno", tt.errno, err, tt.want)
		}
	}
	if err := openError(unix.EINVAL, 1, 0); errors.Is(err, ErrNoPerfEvents) || errors.Is(err, ErrPerfDenied) {
		t.Errorf("openError(EINVAL) = %v", err)
	}
}

func TestRingPages(t *testing.T) {
	for _, tt := range []struct{ hz, want int }{{1, defRingPages}, {DefaultFrequency, defRingPages}, {499, 64}, {4999, maxRingPages}, {MaxFrequency, maxRingPages}} {
		if got := ringPages(uint64(time.Second) / uint64(tt.hz)); got != tt.want {
			t.Errorf("ringPages at %d Hz = %d, want %d", tt.hz, got, tt.want)
		}
	}
}
