package server

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

func TestMetrics_NewMetrics_everyMethodHasSeries(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	series := func() map[string]int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, mf := range mfs {
			out[mf.GetName()] = len(mf.GetMetric())
		}
		return out
	}
	before := series()
	for _, name := range []string{"keywarden_grpc_requests_total", "keywarden_grpc_request_duration_seconds", "keywarden_grpc_watch_streams"} {
		if before[name] == 0 {
			t.Errorf("%s: no series before the first call", name)
		}
	}
	if n := before["keywarden_grpc_watch_streams_refused_total"]; n != 2 {
		t.Errorf("keywarden_grpc_watch_streams_refused_total: %d series before the first refusal, want 2 (per_workload, total)", n)
	}
	m.Observe("/keywarden.v1.SecretService/GetSecret", codes.OK, time.Millisecond)
	if after := series(); after["keywarden_grpc_requests_total"] != before["keywarden_grpc_requests_total"] {
		t.Errorf("GetSecret OK was not pre-initialised: %d → %d series", before["keywarden_grpc_requests_total"], after["keywarden_grpc_requests_total"])
	}
}
