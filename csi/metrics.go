package csi

import "github.com/prometheus/client_golang/prometheus"

// Publish results (the only label values of keywarden_csi_publishes_total).
const (
	resultOK          = "ok"
	resultRepublished = "republished"
	resultStale       = "stale" // republish during an outage: old content kept
	resultInvalid     = "invalid"
	resultDenied      = "denied"
	resultUnavailable = "unavailable"
	resultError       = "error"
)

// Metrics are the driver's Prometheus metrics. Labels never carry pod, secret or volume names.
type Metrics struct {
	volumes        prometheus.Gauge
	publishes      *prometheus.CounterVec
	rotationWrites *prometheus.CounterVec
	writeSeconds   prometheus.Histogram
	publishSeconds prometheus.Histogram
}

// NewMetrics registers the driver's metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		volumes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keywarden_csi_volumes", Help: "Published CSI volumes on this node."}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keywarden_csi_publishes_total",
			Help: "NodePublishVolume calls by result (ok, republished, stale, invalid, denied, unavailable, error)."}, []string{"result"}),
		rotationWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keywarden_csi_rotation_writes_total",
			Help: "Volume rewrites after a secret changed, by result (ok, error)."}, []string{"result"}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keywarden_csi_write_seconds",
			Help: "Time to write a volume's files atomically.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keywarden_csi_publish_duration_seconds",
			Help:    "NodePublishVolume duration, whatever the result (first publishes include fetching the secrets).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
	}
	// Every label value exists at zero from the start, so the dashboard's rates are defined
	// before the first publish.
	for _, r := range []string{resultOK, resultRepublished, resultStale, resultInvalid, resultDenied, resultUnavailable, resultError} {
		m.publishes.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error"} {
		m.rotationWrites.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.volumes, m.publishes, m.rotationWrites, m.writeSeconds, m.publishSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
