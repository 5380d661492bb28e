package identity

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the identity metrics. Label values are fixed phrases (results and reasons),
// never token content.
type Metrics struct {
	verifications *prometheus.CounterVec
	cacheHits     prometheus.Counter
	jwksRefreshes *prometheus.CounterVec
	cachedState   prometheus.Gauge
}

// verifyReasons are the Reason… constants: the only reason label values.
var verifyReasons = []string{
	ReasonTooLarge, ReasonMalformed, ReasonUnsupportedAlgorithm, ReasonMissingKeyID, ReasonUnknownKeyID,
	ReasonKeyMismatch, ReasonBadSignature, ReasonDuplicateClaim, ReasonLegacyToken, ReasonWrongIssuer,
	ReasonMissingAudience, ReasonWrongAudience, ReasonMissingExp, ReasonMissingIat, ReasonExpired,
	ReasonIssuedInFuture, ReasonNotYetValid, ReasonLifetimeTooLong, ReasonInvalidLifetime, ReasonInvalidNamespace,
	ReasonInvalidSA, ReasonSubjectMismatch, ReasonNoPodBinding, ReasonInvalidPod, ReasonInvalidNode,
	ReasonOtherNode, ReasonPodNotOnNode, ReasonPodMismatch, ReasonRejectedByReview,
}

// NewMetrics registers the identity metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "identity", Name: "verifications_total",
			Help: "Token verifications by result (ok, invalid, unavailable) and reason.",
		}, []string{"result", "reason"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "identity", Name: "cache_hits_total",
			Help: "Verifications answered from the verification cache.",
		}),
		jwksRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "identity", Name: "jwks_refreshes_total",
			Help: "Fetches of the issuer's keys by result.",
		}, []string{"result"}),
		cachedState: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "keywarden", Subsystem: "identity", Name: "apiserver_unreachable",
			Help: "1 while the pod informer cannot reach the apiserver and pod checks run on cached state.",
		}),
	}
	// Every label combination exists at zero from the start, so the dashboard's rates and the
	// alerts have series before the first token arrives.
	for _, r := range []string{"ok", "unavailable", "error"} {
		m.verifications.WithLabelValues(r, "")
	}
	for _, r := range verifyReasons {
		m.verifications.WithLabelValues("invalid", r)
	}
	for _, r := range []string{"ok", "error"} {
		m.jwksRefreshes.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.verifications, m.cacheHits, m.jwksRefreshes, m.cachedState} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) verification(err error) {
	if m == nil {
		return
	}
	var ve *VerifyError
	switch {
	case err == nil:
		m.verifications.WithLabelValues("ok", "").Inc()
	case errors.As(err, &ve):
		m.verifications.WithLabelValues("invalid", ve.Reason).Inc()
	case errors.Is(err, ErrUnavailable):
		m.verifications.WithLabelValues("unavailable", "").Inc()
	default:
		m.verifications.WithLabelValues("error", "").Inc()
	}
}

func (m *Metrics) cacheHit() {
	if m != nil {
		m.cacheHits.Inc()
	}
}

func (m *Metrics) jwksRefresh(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.jwksRefreshes.WithLabelValues("error").Inc()
		return
	}
	m.jwksRefreshes.WithLabelValues("ok").Inc()
}

func (m *Metrics) apiserverUnreachable(down bool) {
	if m == nil {
		return
	}
	if down {
		m.cachedState.Set(1)
	} else {
		m.cachedState.Set(0)
	}
}
