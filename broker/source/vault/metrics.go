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
	for _, c := range []prometheus.Collector{m.requests, m.renewals, m.reissues, m.revocations, ttl, count} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("register vault metrics"), err)
		}
	}
	return m, nil
}

// RegisterStaleGauge exports how many cached Vault secrets are being served after a failed
// refresh (the rotation engine knows; the daemon wires its count here).
func RegisterStaleGauge(reg prometheus.Registerer, stale func() float64) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "keywarden", Subsystem: "vault", Name: "stale_served",
		Help: "Cached Vault secrets served while their refresh fails (Vault unreachable); each is served until its own expiry, never after.",
	}, stale))
}
