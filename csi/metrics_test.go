package csi

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keywarden/keywarden/broker"
)

func TestMetrics_NewMetrics_resultsPreinitialised(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		got[mf.GetName()] = len(mf.GetMetric())
	}
	want := map[string]int{
		"keywarden_csi_publishes_total":          7,
		"keywarden_csi_rotation_writes_total":    2,
		"keywarden_csi_volumes":                  1,
		"keywarden_csi_write_seconds":            1,
		"keywarden_csi_publish_duration_seconds": 1,
	}
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s: %d series, want %d", name, got[name], n)
		}
	}
}

// TestDriver_Publish_resultLabels walks Publish through each of its outcomes and checks the
// one result label each is counted under.
func TestDriver_Publish_resultLabels(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw"})
	e.b.set("odd", "v1", map[string]string{"..": "x"}) // a key that cannot be a file name
	e.b.set("secret-denied", "v1", map[string]string{"k": "v"})
	e.b.deny("secret-denied")
	count := func(label string) float64 {
		var m dto.Metric
		if err := e.d.metrics.publishes.WithLabelValues(label).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	publishAs := func(pod, vol string, attrs map[string]string) error {
		_, err := e.publish(pod, vol, attrs)
		return err
	}
	steps := []struct {
		name    string
		do      func() error
		wantErr bool
		label   string
	}{
		{"first publish", func() error { return publishAs("a", "v", map[string]string{AttrSecrets: "db"}) }, false, resultOK},
		{"republish", func() error { return publishAs("a", "v", map[string]string{AttrSecrets: "db"}) }, false, resultRepublished},
		{"republish during an outage", func() error {
			e.b.authErr = brokerErr(broker.ErrUnavailable)
			defer func() { e.b.authErr = nil }()
			return publishAs("a", "v", map[string]string{AttrSecrets: "db"})
		}, false, resultStale},
		{"new volume during an outage", func() error {
			e.b.authErr = brokerErr(broker.ErrUnavailable)
			defer func() { e.b.authErr = nil }()
			return publishAs("b", "v", map[string]string{AttrSecrets: "db"})
		}, true, resultUnavailable},
		{"bad attribute", func() error { return publishAs("c", "v", map[string]string{AttrSecrets: "db", AttrFileMode: "9999"}) }, true, resultInvalid},
		{"same volume, other arguments", func() error {
			return publishAs("a", "v", map[string]string{AttrSecrets: "db", AttrEncoding: string(EncodingBase64)})
		}, true, resultInvalid},
		{"secret that cannot be laid out", func() error { return publishAs("d", "v", map[string]string{AttrSecrets: "odd"}) }, true, resultInvalid},
		{"denied", func() error { return publishAs("e", "v", map[string]string{AttrSecrets: "secret-denied"}) }, true, resultDenied},
	}
	for _, s := range steps {
		before := count(s.label)
		err := s.do()
		if (err != nil) != s.wantErr {
			t.Fatalf("%s: err %v, want error %v", s.name, err, s.wantErr)
		}
		if got := count(s.label) - before; got != 1 {
			t.Fatalf("%s: %s counted %v times, want 1", s.name, s.label, got)
		}
	}
}
