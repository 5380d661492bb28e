package vault

import (
	"errors"
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the source's Prometheus metrics. Labels are fixed classes, never paths, lease
// ids or anything from a response.
type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	renewals    *prometheus.CounterVec
	reissues    *prometheus.CounterVec
	revocations *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Source) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "vault", Name: "requests_total",
			Help: "Requests to Vault by path class and result.",
		}, []string{"class", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "keywarden", Subsystem: "vault", Name: "request_duration_seconds",
			Help:    "Duration of requests to Vault by path class, from leaving the gate to the answer (gate wait excluded).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"class"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "vault", Name: "lease_renewals_total",
			Help: "Lease renewals by result (ok, capped by max_ttl, refused, failed).",
		}, []string{"result"}),
		reissues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "vault", Name: "lease_reissues_total",
			Help: "Credentials issued to replace a lease, by reason.",
		}, []string{"reason"}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "vault", Name: "lease_revocations_total",
			Help: "Revocations of replaced or orphaned leases by result.",
		}, []string{"result"}),
	}
	m.initLabels()
	if reg == nil {
		return m, nil
	}
	ttl := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "keywarden", Subsystem: "vault", Name: "lease_ttl_remaining_min_seconds",
		Help: "Shortest remaining TTL over the current leases (+Inf when there are none).",
	}, func() float64 {
		now := s.clock.Now()
		out := math.Inf(1)
		for _, l := range s.Leases() {
			out = math.Min(out, l.ExpiresAt.Sub(now).Seconds())
		}
		return out
	})
	count := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "keywarden", Subsystem: "vault", Name: "leases",
		Help: "Current leases held by this daemon.",
	}, func() float64 { return float64(len(s.Leases())) })
	waiting := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "keywarden", Subsystem: "vault", Name: "gate_waiting",
		Help: "Requests queued at the Vault gate for a slot, by priority (foreground: a caller waits; background: scheduled refreshes).",
	}, []string{"priority"})
	gateCollector := gaugeFuncs{
		waiting.WithLabelValues("foreground"): func() float64 { fg, _, _ := s.gate.stats(); return float64(fg) },
		waiting.WithLabelValues("background"): func() float64 { _, bg, _ := s.gate.stats(); return float64(bg) },
	}
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "keywarden", Subsystem: "vault", Name: "gate_in_flight",
		Help: "Requests holding a Vault gate slot (in flight or waiting for the token bucket).",
	}, func() float64 { _, _, n := s.gate.stats(); return float64(n) })
	up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "keywarden", Subsystem: "vault", Name: "up",
		Help: "1 when the last request to Vault (or login) got an answer, 0 when it found Vault unavailable or overloaded.",
	}, func() float64 {
		if s.isDown() {
			return 0
		}
		return 1
	})
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.renewals, m.reissues, m.revocations, ttl, count, gateCollector, inFlight, up} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("register vault metrics"), err)
		}
	}
	return m, nil
}

// Label values known in advance. Every combination the dashboard and the alerts use is
// created at zero, so the series exist before the first request.
var (
	requestClasses = []string{"login", "token-renew", "token-lookup", "kv-read", "kv-metadata", "mount-lookup",
		"lease-issue", "generic-read", "lease-renew", "lease-revoke", "unwrap", "health"}
	renewalResults    = []string{"ok", "capped", "refused", "failed"}
	reissueReasons    = []string{"new", "not_renewable", "max_ttl", "renewal_refused", "expired"}
	revocationResults = []string{"ok", "failed"}
)

func (m *metrics) initLabels() {
	for _, c := range requestClasses {
		for _, r := range []string{"ok", "unavailable", "error"} {
			m.requests.WithLabelValues(c, r)
		}
		m.duration.WithLabelValues(c)
	}
	for _, r := range renewalResults {
		m.renewals.WithLabelValues(r)
	}
	for _, r := range reissueReasons {
		m.reissues.WithLabelValues(r)
	}
	for _, r := range revocationResults {
		m.revocations.WithLabelValues(r)
	}
}

// gaugeFuncs is a collector of gauges (children of one GaugeVec) whose values are read at
// scrape time.
type gaugeFuncs map[prometheus.Gauge]func() float64

func (g gaugeFuncs) Describe(ch chan<- *prometheus.Desc) {
	for m := range g {
		ch <- m.Desc()
	}
}

func (g gaugeFuncs) Collect(ch chan<- prometheus.Metric) {
	for m, f := range g {
		m.Set(f())
		ch <- m
	}
}

// RegisterStaleGauge exports how many cached Vault secrets are being served after a failed
// refresh (the rotation engine knows; the daemon wires its count here).
func RegisterStaleGauge(reg prometheus.Registerer, stale func() float64) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "keywarden", Subsystem: "vault", Name: "stale_served",
		Help: "Cached Vault secrets served while their refresh fails (Vault unreachable); each is served until its own expiry, never after.",
	}, stale))
}
