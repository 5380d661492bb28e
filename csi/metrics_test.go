package csi

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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
