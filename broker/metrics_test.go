package broker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
)

const denyDoc = `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: no-intruder}
spec:
  effect: Deny
  subjects: [{namespace: demo, serviceAccount: intruder}]
  secrets:
    - name: db
      source: {local: {}}
`

func TestMetrics_decision_countsEachClass(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	// Every series exists at zero before the first decision.
	if n := len(gather(t, reg)["keywarden_decisions_total"]); n != 3 {
		t.Fatalf("pre-initialised series: %d, want 3", n)
	}
	clk := clocktesting.NewFakeClock(time.Now())
	src := mapSource{"db": {Data: map[string]source.Value{"password": source.Value("s3cr3t-pw")}, Version: "1"}}
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{"local": src}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Verifier: fakeVerifier{}, Cache: eng, Audit: audit.Discard{}, Logger: discard(), Clock: clk, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	set, err := grant.Parse([]byte(grantDoc + "---\n" + denyDoc))
	if err != nil {
		t.Fatal(err)
	}
	gs, err := grant.NewSet(set)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", gs); err != nil {
		t.Fatal(err)
	}
	intruder := identity.Workload{Namespace: "demo", ServiceAccount: "intruder"}
	stranger := identity.Workload{Namespace: "other", ServiceAccount: "x"}
	calls := []struct {
		w       identity.Workload
		secret  string
		wantErr bool
	}{
		{app, "db", false},
		{app, "db", false},
		{intruder, "db", true},
		{stranger, "db", true},
		{stranger, "unknown-secret", true},
	}
	for _, c := range calls {
		if _, err := b.GetSecret(context.Background(), c.w, c.secret, grant.DeliveryGRPC); (err != nil) != c.wantErr {
			t.Fatalf("%v %s: err %v", c.w, c.secret, err)
		}
	}
	tests := []struct {
		decision, reason string
		want             float64
	}{
		{"allow", "granted", 2},
		{"deny", "denied_by_grant", 1},
		{"deny", "no_grant", 2},
	}
	got := map[string]float64{}
	for _, mm := range gather(t, reg)["keywarden_decisions_total"] {
		var labels []string
		for _, lp := range mm.GetLabel() {
			labels = append(labels, lp.GetValue())
			// Labels hold classes only: no secret, grant, namespace or value.
			for _, bad := range []string{"s3cr3t-pw", "db", "no-intruder", "g1", "intruder", "demo"} {
				if strings.Contains(lp.GetValue(), bad) {
					t.Errorf("label %s=%q holds %q", lp.GetName(), lp.GetValue(), bad)
				}
			}
		}
		got[strings.Join(labels, ",")] = mm.GetCounter().GetValue()
	}
	for _, tt := range tests {
		if v := got[tt.decision+","+tt.reason]; v != tt.want {
			t.Errorf("decisions{%s,%s} = %v, want %v", tt.decision, tt.reason, v, tt.want)
		}
	}
}

// gather returns the registry's metrics by family name.
func gather(t testing.TB, reg prometheus.Gatherer) map[string][]*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*dto.Metric{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()
	}
	return out
}

func TestMetrics_nilRecordsNothing(t *testing.T) {
	var m *Metrics
	m.decision(grant.Decision{Allowed: true}) // must not panic
}
