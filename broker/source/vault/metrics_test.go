package vault

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keywarden/keywarden/broker/source"
)

// families gathers reg by family name.
func families(t testing.TB, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func TestMetrics_newMetrics_seriesExistAtStart(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	newEnv(t, func(c *Config) { c.Registerer = reg })
	fams := families(t, reg)
	for _, name := range []string{
		"keywarden_vault_requests_total", "keywarden_vault_request_duration_seconds",
		"keywarden_vault_lease_renewals_total", "keywarden_vault_lease_reissues_total", "keywarden_vault_lease_revocations_total",
		"keywarden_vault_gate_waiting", "keywarden_vault_gate_in_flight", "keywarden_vault_up",
		"keywarden_vault_leases", "keywarden_vault_lease_ttl_remaining_min_seconds",
	} {
		if fams[name] == nil || len(fams[name].GetMetric()) == 0 {
			t.Errorf("%s: no series before the first request", name)
		}
	}
	if got := fams["keywarden_vault_up"].GetMetric()[0].GetGauge().GetValue(); got != 1 {
		t.Errorf("vault_up before any request = %v, want 1", got)
	}
}

func TestMetrics_send_recordsLatencyAndUp(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := newEnv(t, func(c *Config) { c.Registerer = reg })
	e.f.putKV2("a", map[string]any{"k": "s3cr3t-value"})
	if err := e.s.Login(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	r := ref(t, kv2("a"))
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		fault  bool
		wantUp float64
	}{
		{"vault answers", false, 1},
		{"vault unavailable", true, 0},
		{"vault back", false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.f.mu.Lock()
			e.f.fault = nil
			if tt.fault {
				e.f.fault = func(w http.ResponseWriter, _ *http.Request) bool {
					vaultError(w, http.StatusServiceUnavailable)
					return true
				}
			}
			e.f.mu.Unlock()
			e.s.dropKV(r)
			e.clock.Step(2 * e.s.cfg.MaxBackoff) // past any overload pause
			_, err := e.s.Fetch(ctxT(t), r)
			if tt.fault != errors.Is(err, source.ErrUnavailable) {
				t.Fatalf("fetch: %v", err)
			}
			fams := families(t, reg)
			if got := fams["keywarden_vault_up"].GetMetric()[0].GetGauge().GetValue(); got != tt.wantUp {
				t.Errorf("vault_up = %v, want %v", got, tt.wantUp)
			}
		})
	}
	var kvReads uint64
	for _, m := range families(t, reg)["keywarden_vault_request_duration_seconds"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "kv-read" {
			kvReads = m.GetHistogram().GetSampleCount()
		}
	}
	if kvReads < 4 {
		t.Errorf("kv-read latency samples = %d, want ≥ 4", kvReads)
	}
	for name, mf := range families(t, reg) {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v := lp.GetValue(); strings.Contains(v, "s3cr3t") || strings.Contains(v, "secret/") || strings.Contains(v, "hvs.") {
					t.Errorf("%s: label %s=%q holds secret material or a path", name, lp.GetName(), v)
				}
			}
		}
	}
}

func TestGate_stats_countsWaiters(t *testing.T) {
	g := newGate(nil, 1, 1e9, 1e9, 0, 0)
	g.inUse = 1
	g.fg = append(g.fg, make(chan struct{}), make(chan struct{}))
	g.bg = append(g.bg, make(chan struct{}))
	if fg, bg, n := g.stats(); fg != 2 || bg != 1 || n != 1 {
		t.Fatalf("stats = %d, %d, %d; want 2, 1, 1", fg, bg, n)
	}
}
