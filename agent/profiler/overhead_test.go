package profiler

import (
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// overheadRounds is the fixed work of each benchmark run: about a second
// of two CPUs here.
const overheadRounds = "3000"

// BenchmarkOverhead runs the hog for a fixed amount of work with and
// without the sampler at DefaultFrequency, alternately, and reports how
// much more CPU time the sampled runs took: the task's (which pays for
// the timer interrupts and the kernel's stack walks) plus this process's
// (Start and the drain loop). overhead-% is the median over the b.N
// pairs of runs, as other work on the machine skews single runs both
// ways. Collect's cost, symbolisation, is per profile rather than per
// sample and is reported apart, as collect-ms.
func BenchmarkOverhead(b *testing.B) {
	hog := buildHog(b, b.TempDir())
	cpu := func(ru *unix.Rusage) time.Duration {
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	run := func(sample bool) (used time.Duration, collect time.Duration) {
		cmd := exec.Command(hog, "-n", overheadRounds)
		cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
		var before, after unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &before)
		var s *Sampler
		if sample {
			var err error
			if s, err = Start(cmd, Options{}); err != nil {
				b.Fatal(err)
			}
			defer s.Close()
		} else if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			b.Fatal(err)
		}
		unix.Getrusage(unix.RUSAGE_SELF, &after)
		used = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime() + cpu(&after) - cpu(&before)
		if sample {
			start := time.Now()
			if p, _, err := s.Collect(); err != nil || p == nil {
				b.Fatalf("Collect: %v, %v", p, err)
			}
			collect = time.Since(start)
		}
		return used, collect
	}
	run(false) // warm the page cache
	var pcts []float64
	var without, collect time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w, _ := run(false)
		s, c := run(true)
		pcts = append(pcts, 100*(s.Seconds()-w.Seconds())/w.Seconds())
		without, collect = without+w, collect+c
	}
	sort.Float64s(pcts)
	b.ReportMetric(pcts[len(pcts)/2], "overhead-%")
	b.ReportMetric(without.Seconds()/float64(b.N), "cpu-s/run")
	b.ReportMetric(float64(collect.Microseconds())/1e3/float64(b.N), "collect-ms")
}
