package main

import (
	"math"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/rotate"
)

// The metrics of parts that do not depend on a metrics library (store, audit log, rotation
// engine) are adapted here, from their hooks and stats. docs/metrics.md lists every metric the
// daemon exports; the Grafana dashboard and the alert rules in deploy/helm/keywarden/files
// use them (e2e/metrics_test.go checks that every name they use exists).

// Store names: the only values of the db label.
const (
	storeState   = "state"
	storeNode    = "node"
	storeVolumes = "volumes"
)

// storeMetrics time the commits of the stores.
type storeMetrics struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
}

func newStoreMetrics(reg prometheus.Registerer) (*storeMetrics, error) {
	m := &storeMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "keywarden", Subsystem: "store", Name: "commit_duration_seconds",
			Help:    "Duration of write transactions (fsync included, except for volumes, which commits without fsync) by store (state, node, volumes).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"db"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keywarden", Subsystem: "store", Name: "commit_errors_total",
			Help: "Write transactions whose commit failed (disk full, I/O error, store closed), by store.",
		}, []string{"db"}),
	}
	for _, db := range []string{storeState, storeNode, storeVolumes} {
		m.duration.WithLabelValues(db)
		m.errors.WithLabelValues(db)
	}
	for _, c := range []prometheus.Collector{m.duration, m.errors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// onCommit is the store.Config.OnCommit hook of one store.
func (m *storeMetrics) onCommit(db string) func(time.Duration, error) {
	h, e := m.duration.WithLabelValues(db), m.errors.WithLabelValues(db)
	return func(d time.Duration, err error) {
		h.Observe(d.Seconds())
		if err != nil {
			e.Inc()
		}
	}
}

// freshnessSource is the part of the rotation engine the freshness metrics read.
type freshnessSource interface {
	Freshness() rotate.Freshness
}

var _ freshnessSource = (*rotate.Engine)(nil)

// freshnessCollector exports the cache's freshness as aggregates: no secret names, paths or
// references, so a label can never leak what a node serves.
type freshnessCollector struct {
	src                                 freshnessSource
	cached, stale, oldest, expiry, fail *prometheus.Desc
}

func newFreshnessCollector(src freshnessSource) *freshnessCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &freshnessCollector{
		src:    src,
		cached: d("keywarden_secrets_cached", "Secrets with a value in the node's cache."),
		stale:  d("keywarden_secrets_stale", "Cached secrets served after their last refresh failed (each only until its own expiry)."),
		oldest: d("keywarden_secret_oldest_age_seconds", "Age of the oldest cached value, since it was fetched (0 when nothing is cached)."),
		expiry: d("keywarden_secret_expiry_min_seconds", "Shortest time until a cached value expires (+Inf when no cached value has an expiry)."),
		fail:   d("keywarden_secret_refresh_failures_total", "Refreshes of cached secrets that failed transiently (the cached value stays in service until it expires)."),
	}
}

func (c *freshnessCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.cached, c.stale, c.oldest, c.expiry, c.fail} {
		ch <- d
	}
}

func (c *freshnessCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.src.Freshness()
	expiry := math.Inf(1)
	if f.ExpiryKnown {
		expiry = f.MinTimeToExpiry.Seconds()
	}
	ch <- prometheus.MustNewConstMetric(c.cached, prometheus.GaugeValue, float64(f.Cached))
	ch <- prometheus.MustNewConstMetric(c.stale, prometheus.GaugeValue, float64(f.Stale))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, f.OldestAge.Seconds())
	ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, expiry)
	ch <- prometheus.MustNewConstMetric(c.fail, prometheus.CounterValue, float64(f.RefreshFailures))
}

// rawMetrics is the `metrics:` section.
type rawMetrics struct {
	// PerSecretLabels adds one series per cached secret, labelled with its source and
	// reference path (never a value). Off by default: a path names what a node serves, and
	// a node serving many leased credentials (one reference per pod) has as many series.
	PerSecretLabels bool `json:"perSecretLabels"`
}

type metricsConfig struct {
	PerSecretLabels bool
}

// statusSource is the part of the rotation engine the per-secret metrics read.
type statusSource interface {
	Status() []rotate.EntryStatus
}

var _ statusSource = (*rotate.Engine)(nil)

// secretCollector exports each cached secret's freshness with source and path labels
// (metrics.perSecretLabels). The labels are the reference, the value is never read.
type secretCollector struct {
	src                                     statusSource
	now                                     func() time.Time
	age, expiry, nextRefresh, failures, stl *prometheus.Desc
}

func newSecretCollector(src statusSource) *secretCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"source", "path"}, nil)
	}
	return &secretCollector{
		src: src, now: time.Now,
		age:         d("keywarden_secret_age_seconds", "Age of a cached secret's value, since it was fetched (metrics.perSecretLabels)."),
		expiry:      d("keywarden_secret_expiry_seconds", "Time until a cached secret's value expires; +Inf without an expiry (metrics.perSecretLabels)."),
		nextRefresh: d("keywarden_secret_next_refresh_seconds", "Time until a cached secret is refreshed next; absent while none is scheduled (metrics.perSecretLabels)."),
		failures:    d("keywarden_secret_refresh_failures", "Refreshes of a cached secret that failed since its last successful one (metrics.perSecretLabels)."),
		stl:         d("keywarden_secret_stale", "1 while a cached secret is served after its last refresh failed (metrics.perSecretLabels)."),
	}
}

func (c *secretCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.age, c.expiry, c.nextRefresh, c.failures, c.stl} {
		ch <- d
	}
}

func (c *secretCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for _, e := range c.src.Status() {
		if e.FetchedAt.IsZero() {
			continue // nothing cached yet
		}
		lv := []string{e.Ref.Source, e.Ref.Path}
		expiry := math.Inf(1)
		if !e.ExpiresAt.IsZero() {
			expiry = e.ExpiresAt.Sub(now).Seconds()
		}
		stale := 0.0
		if e.Stale {
			stale = 1
		}
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, now.Sub(e.FetchedAt).Seconds(), lv...)
		ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, expiry, lv...)
		if !e.NextRefresh.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.nextRefresh, prometheus.GaugeValue, e.NextRefresh.Sub(now).Seconds(), lv...)
		}
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.GaugeValue, float64(e.Failures), lv...)
		ch <- prometheus.MustNewConstMetric(c.stl, prometheus.GaugeValue, stale, lv...)
	}
}

// auditStats is the part of the audit log the audit metrics read.
type auditStats interface {
	Stats() audit.Stats
}

var _ auditStats = (*audit.Log)(nil)

// auditCollector exports the audit log's queue and flush outcomes.
type auditCollector struct {
	src                       auditStats
	backlog, flushes, dropped *prometheus.Desc
}

func newAuditCollector(src auditStats) *auditCollector {
	return &auditCollector{
		src: src,
		backlog: prometheus.NewDesc("keywarden_audit_backlog_entries",
			"Audit events waiting to be written to the state store.", nil, nil),
		flushes: prometheus.NewDesc("keywarden_audit_flushes_total",
			"Audit log flushes by result: ok (one batch written) or error (the store refused; events stay queued).", []string{"result"}, nil),
		dropped: prometheus.NewDesc("keywarden_audit_dropped_pending",
			"Audit events dropped because the queue was full, not yet recorded as a drop notice in the log.", nil, nil),
	}
}

func (c *auditCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.backlog
	ch <- c.flushes
	ch <- c.dropped
}

func (c *auditCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Stats()
	ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(c.flushes, prometheus.CounterValue, float64(st.Flushes), "ok")
	ch <- prometheus.MustNewConstMetric(c.flushes, prometheus.CounterValue, float64(st.Failures), "error")
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.GaugeValue, float64(st.Dropped))
}

// anchorStats is the part of the Anchorer the anchor metrics read.
type anchorStats interface {
	Stats() audit.AnchorStats
}

var _ anchorStats = (*audit.Anchorer)(nil)

// anchorCollector exports how audit anchors are published. A node whose last anchor gets old
// stopped publishing (or was stopped): the one failure anchors cannot detect by themselves.
type anchorCollector struct {
	src           anchorStats
	anchors, last *prometheus.Desc
}

func newAnchorCollector(src anchorStats) *anchorCollector {
	return &anchorCollector{
		src: src,
		anchors: prometheus.NewDesc("keywarden_audit_anchors_total",
			"Audit anchors by result: ok (every sink took it) or error (one per sink that refused, or the signer).", []string{"result"}, nil),
		last: prometheus.NewDesc("keywarden_audit_anchor_last_timestamp_seconds",
			"Unix time of the last audit anchor every sink took (0: none yet).", nil, nil),
	}
}

func (c *anchorCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.anchors
	ch <- c.last
}

func (c *anchorCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Stats()
	var last float64
	if !st.Last.Time.IsZero() {
		last = float64(st.Last.Time.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.anchors, prometheus.CounterValue, float64(st.Published), "ok")
	ch <- prometheus.MustNewConstMetric(c.anchors, prometheus.CounterValue, float64(st.Failures), "error")
	ch <- prometheus.MustNewConstMetric(c.last, prometheus.GaugeValue, last)
}

// registerBuildInfo exports keywarden_build_info{version,goversion} = 1.
func registerBuildInfo(reg prometheus.Registerer, version string) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "keywarden", Name: "build_info",
		Help: "Always 1; the labels say which build runs.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(version, runtime.Version()).Set(1)
	return reg.Register(g)
}
