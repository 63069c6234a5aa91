package work

import (
	"bytes"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The same event gives the same summary, in turn or at once, and the
// work finds what the generator put in.
func TestInvokeIsDeterministic(t *testing.T) {
	ev := Event(1, DefaultOrders)
	if len(ev) < 200<<10 || len(ev) > 800<<10 {
		t.Errorf("event is %d bytes; want a few hundred KB", len(ev))
	}
	if !bytes.Equal(ev, Event(1, DefaultOrders)) {
		t.Fatal("Event is not deterministic")
	}
	a, err := Invoke(ev)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Invoke(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("two invocations differ:\n%s\n%s", a, b)
	}
	var s Summary
	if err := json.Unmarshal(a, &s); err != nil {
		t.Fatal(err)
	}
	if s.Orders != DefaultOrders || s.Emails == 0 || s.Phones == 0 || s.Refs == 0 || s.URLs == 0 || s.Flagged == 0 || len(s.Terms) != 10 || s.Gzipped >= s.Report {
		t.Errorf("summary %+v", s)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if c, err := Invoke(ev); err != nil || !bytes.Equal(c, a) {
				t.Errorf("a concurrent invocation answered %.200s, %v", c, err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d-byte event: %s", len(ev), a)
}

// The handler the task registers gives Invoke's summary.
func TestHandle(t *testing.T) {
	ev := Event(2, DefaultOrders)
	var b Batch
	if err := json.Unmarshal(ev, &b); err != nil {
		t.Fatal(err)
	}
	s, err := Handle(b)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(s)
	if want, _ := Invoke(ev); !bytes.Equal(got, want) {
		t.Errorf("Handle: %s\nInvoke: %s", got, want)
	}
}

func TestConfigNamesUnknownRules(t *testing.T) {
	c := DefaultConfig
	c.Stemmer = "snowball"
	if _, err := newPipeline(c); err == nil || err.Error() != `unknown stemmer "snowball"` {
		t.Errorf("err %v", err)
	}
}

// BenchmarkInvoke reports the CPU time of an invocation (this process's,
// so the garbage collector's too) beside the wall time: on a busy
// machine the CPU time varies less.
func BenchmarkInvoke(b *testing.B) {
	ev := Event(1, DefaultOrders)
	b.SetBytes(int64(len(ev)))
	cpu0 := processCPU(b)
	for b.Loop() {
		if _, err := Invoke(ev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
