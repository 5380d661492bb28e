package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// Metrics are the gRPC server's Prometheus metrics. Labels hold only method names and status
// codes: never tokens, secret names chosen by callers, or values.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// The watch stream caps (watches.go): a limit label of fixed values, never an identity.
	watchesOpen    prometheus.Gauge
	watchesRefused *prometheus.CounterVec
}

// NewMetrics registers the server metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "grpc", Name: "requests_total",
			Help: "gRPC calls by method and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "keywarden", Subsystem: "grpc", Name: "request_duration_seconds",
			Help:    "gRPC call duration by method (streams: lifetime).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 300},
		}, []string{"method"}),
		watchesOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "keywarden", Subsystem: "grpc", Name: "watch_streams",
			Help: "WatchSecrets streams open now (limits.maxWatches caps them).",
		}),
		watchesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "grpc", Name: "watch_streams_refused_total",
			Help: "WatchSecrets streams refused by a cap, by limit (per_workload or total).",
		}, []string{"limit"}),
	}
	// Every method's OK series and histogram exist from the start, so rates and ratios are
	// defined before the first call (other codes appear when they first happen).
	for _, method := range fullMethods(&keywardenv1.SecretService_ServiceDesc, &keywardenv1.AdminService_ServiceDesc) {
		m.requests.WithLabelValues(method, codes.OK.String())
		m.duration.WithLabelValues(method)
	}
	for _, l := range []string{limitPerWorkload, limitTotal} {
		m.watchesRefused.WithLabelValues(l)
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.watchesOpen, m.watchesRefused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

var _ grpcx.Observer = (*Metrics)(nil)

// Observe records one call. A nil *Metrics records nothing, so a Config without metrics can
// hand its nil field to the logging interceptor.
func (m *Metrics) Observe(method string, code codes.Code, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(method, code.String()).Inc()
	m.duration.WithLabelValues(method).Observe(d.Seconds())
}

// refuseWatch records a WatchSecrets stream refused by limit (limitPerWorkload, limitTotal).
func (m *Metrics) refuseWatch(limit string) {
	if m == nil {
		return
	}
	m.watchesRefused.WithLabelValues(limit).Inc()
}

// addWatches adds delta to the open WatchSecrets streams.
func (m *Metrics) addWatches(delta float64) {
	if m == nil {
		return
	}
	m.watchesOpen.Add(delta)
}

// fullMethods lists the services' methods as interceptors see them ("/pkg.Service/Method").
func fullMethods(descs ...*grpc.ServiceDesc) []string {
	var out []string
	for _, d := range descs {
		for _, m := range d.Methods {
			out = append(out, "/"+d.ServiceName+"/"+m.MethodName)
		}
		for _, s := range d.Streams {
			out = append(out, "/"+d.ServiceName+"/"+s.StreamName)
		}
	}
	return out
}
