package broker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keywarden/keywarden/broker/grant"
)

// Decision label values of keywarden_decisions_total: the only ones ever recorded. The reason
// is a class, never the grant's name, the secret's name or anything the caller sent.
const (
	decisionAllow = "allow"
	decisionDeny  = "deny"

	reasonGranted       = "granted"         // an allowing grant matched
	reasonNoGrant       = "no_grant"        // no grant covers the caller, secret and delivery
	reasonDeniedByGrant = "denied_by_grant" // a deny grant matched
)

// Metrics are the broker's Prometheus metrics. Create them with NewMetrics; a nil *Metrics
// records nothing.
type Metrics struct {
	decisions *prometheus.CounterVec
}

// NewMetrics registers the broker metrics with reg. Every label combination is created at
// zero, so the series exist before the first request.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Name: "decisions_total",
			Help: "Access decisions by decision (allow, deny) and reason class (granted, no_grant, denied_by_grant).",
		}, []string{"decision", "reason"}),
	}
	m.decisions.WithLabelValues(decisionAllow, reasonGranted)
	m.decisions.WithLabelValues(decisionDeny, reasonNoGrant)
	m.decisions.WithLabelValues(decisionDeny, reasonDeniedByGrant)
	if err := reg.Register(m.decisions); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Metrics) decision(dec grant.Decision) {
	if m == nil {
		return
	}
	switch {
	case dec.Allowed:
		m.decisions.WithLabelValues(decisionAllow, reasonGranted).Inc()
	case dec.Grant != "":
		m.decisions.WithLabelValues(decisionDeny, reasonDeniedByGrant).Inc()
	default:
		m.decisions.WithLabelValues(decisionDeny, reasonNoGrant).Inc()
	}
}
