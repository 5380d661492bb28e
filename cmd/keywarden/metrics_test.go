package main

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/rotate"
)

type fakeFreshness rotate.Freshness

func (f fakeFreshness) Freshness() rotate.Freshness { return rotate.Freshness(f) }

type fakeAuditStats audit.Stats

type fakeAnchorStats audit.AnchorStats

func (f fakeAnchorStats) Stats() audit.AnchorStats { return audit.AnchorStats(f) }

func (f fakeAuditStats) Stats() audit.Stats { return audit.Stats(f) }

// values gathers reg as "name{v1,v2}" → value.
func values(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var lv []string
			for _, lp := range m.GetLabel() {
				lv = append(lv, lp.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(lv, ",") + "}"
			out[key] = metricValue(m)
		}
	}
	return out
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return math.NaN()
}

func TestMetrics_collectors(t *testing.T) {
	tests := []struct {
		name      string
		collector prometheus.Collector
		want      map[string]float64
	}{
		{"freshness with expiry", newFreshnessCollector(fakeFreshness{Cached: 3, Stale: 1, OldestAge: 90 * time.Second,
			MinTimeToExpiry: 45 * time.Second, ExpiryKnown: true, RefreshFailures: 7}), map[string]float64{
			"keywarden_secrets_cached{}":                3,
			"keywarden_secrets_stale{}":                 1,
			"keywarden_secret_oldest_age_seconds{}":     90,
			"keywarden_secret_expiry_min_seconds{}":     45,
			"keywarden_secret_refresh_failures_total{}": 7,
		}},
		{"freshness without expiry", newFreshnessCollector(fakeFreshness{}), map[string]float64{
			"keywarden_secrets_cached{}":                0,
			"keywarden_secret_expiry_min_seconds{}":     math.Inf(1),
			"keywarden_secrets_stale{}":                 0,
			"keywarden_secret_oldest_age_seconds{}":     0,
			"keywarden_secret_refresh_failures_total{}": 0,
		}},
		{"audit", newAuditCollector(fakeAuditStats{Pending: 12, Flushes: 5, Failures: 2, Dropped: 1}), map[string]float64{
			"keywarden_audit_backlog_entries{}":    12,
			"keywarden_audit_flushes_total{ok}":    5,
			"keywarden_audit_flushes_total{error}": 2,
			"keywarden_audit_dropped_pending{}":    1,
		}},
		{"audit anchors", newAnchorCollector(fakeAnchorStats{Published: 4, Failures: 1, Last: audit.Anchor{Time: time.Unix(1700000000, 0)}}), map[string]float64{
			"keywarden_audit_anchors_total{ok}":               4,
			"keywarden_audit_anchors_total{error}":            1,
			"keywarden_audit_anchor_last_timestamp_seconds{}": 1700000000,
		}},
		{"audit anchors, none yet", newAnchorCollector(fakeAnchorStats{}), map[string]float64{
			"keywarden_audit_anchors_total{ok}":               0,
			"keywarden_audit_anchors_total{error}":            0,
			"keywarden_audit_anchor_last_timestamp_seconds{}": 0,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(tt.collector)
			got := values(t, reg)
			if len(got) != len(tt.want) {
				t.Errorf("series %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
				}
			}
		})
	}
}

func TestMetrics_storeCommits(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := newStoreMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	before := values(t, reg)
	for _, k := range []string{"keywarden_store_commit_duration_seconds{state}", "keywarden_store_commit_duration_seconds{node}",
		"keywarden_store_commit_errors_total{state}", "keywarden_store_commit_errors_total{node}"} {
		if _, ok := before[k]; !ok {
			t.Errorf("%s missing before the first commit", k)
		}
	}
	state, node := m.onCommit(storeState), m.onCommit(storeNode)
	state(time.Millisecond, nil)
	state(2*time.Millisecond, errors.New("no space left on device"))
	node(time.Millisecond, nil)
	got := values(t, reg)
	want := map[string]float64{
		"keywarden_store_commit_duration_seconds{state}": 2,
		"keywarden_store_commit_duration_seconds{node}":  1,
		"keywarden_store_commit_errors_total{state}":     1,
		"keywarden_store_commit_errors_total{node}":      0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestMetrics_registerBuildInfo(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := registerBuildInfo(reg, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	for k, v := range values(t, reg) {
		if !strings.HasPrefix(k, "keywarden_build_info{go") || !strings.HasSuffix(k, ",v1.2.3}") || v != 1 {
			t.Errorf("build info %s = %v", k, v)
		}
	}
}
