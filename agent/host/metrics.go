package host

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are kindlingd's Prometheus series, in a registry of their own
// (no package-level state).
type metrics struct {
	reg         *prometheus.Registry
	starts      *prometheus.CounterVec
	phases      *prometheus.HistogramVec
	invocations *prometheus.CounterVec
	// profiles shipped by guest agents, merged or refused.
	profiles *prometheus.CounterVec
	// snapshotsAbandoned: warm snapshots whose checkpoint failed.
	snapshotsAbandoned prometheus.Counter
}

func newMetrics(d *Daemon) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kindling_instance_starts_total",
			Help: "Instances handed to invocations, by how they were started: warm (from a pool), restore (from a warm snapshot) or cold (booted).",
		}, []string{"kind"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kindling_invocation_phase_seconds",
			Help: "Time invocations spend in each phase: queued (waiting for a concurrency slot), start (getting an instance), run (handler), total.",
			// 100 us to ~100 s.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 16),
		}, []string{"phase", "start"}),
		invocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kindling_invocations_total",
			Help: "Finished invocations by outcome.",
		}, []string{"state", "async"}),
		profiles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kindling_profiles_total",
			Help: "CPU profiles shipped by guest agents, by outcome: merged, or refused (corrupt, foreign, another build of the task).",
		}, []string{"outcome"}),
		snapshotsAbandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kindling_snapshots_abandoned_total",
			Help: "Warm snapshots abandoned because the task did not reach its checkpoint (a before-snapshot hook hung or failed).",
		}),
	}
	m.reg.MustRegister(m.starts, m.phases, m.invocations, m.profiles, m.snapshotsAbandoned, poolCollector{d},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// poolCollector reports pool sizes and queue depths at scrape time.
type poolCollector struct{ d *Daemon }

var (
	poolDesc = prometheus.NewDesc("kindling_pool_instances", "Instances per function version, tenant and state.",
		[]string{"function", "version", "tenant", "state"}, nil)
	queueDesc = prometheus.NewDesc("kindling_queue_depth", "Invocations waiting for a concurrency slot, per function version.",
		[]string{"function", "version"}, nil)
	runningDesc = prometheus.NewDesc("kindling_running_invocations", "Invocations holding a concurrency slot, per function version.",
		[]string{"function", "version"}, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolDesc
	ch <- queueDesc
	ch <- runningDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ fn, ver, tenant, state string }
	counts := map[key]int{}
	c.d.mu.Lock()
	for _, inst := range c.d.instances {
		counts[key{inst.fn.key.name, inst.fn.key.version, inst.tenant, inst.state}]++
	}
	fns := make([]*function, 0, len(c.d.functions))
	for _, fn := range c.d.functions {
		fns = append(fns, fn)
	}
	c.d.mu.Unlock()
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(n), k.fn, k.ver, k.tenant, k.state)
	}
	for _, fn := range fns {
		running, queued := fn.gate.depth()
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(queued), fn.key.name, fn.key.version)
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, float64(running), fn.key.name, fn.key.version)
	}
}
