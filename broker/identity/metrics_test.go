package identity

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestMetrics_verification_seriesAndLabels(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	counts := func() map[[2]string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[[2]string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "keywarden_identity_verifications_total" {
				continue
			}
			for _, mm := range mf.GetMetric() {
				out[[2]string{label(mm, "result"), label(mm, "reason")}] = mm.GetCounter().GetValue()
			}
		}
		return out
	}
	if n := len(counts()); n != 3+len(verifyReasons) {
		t.Fatalf("%d series before the first verification, want %d", n, 3+len(verifyReasons))
	}
	tests := []struct {
		err  error
		want [2]string
	}{
		{nil, [2]string{"ok", ""}},
		{&VerifyError{Reason: ReasonExpired}, [2]string{"invalid", ReasonExpired}},
		{ErrUnavailable, [2]string{"unavailable", ""}},
		{errors.New("eyJhbGciOi.some-token-bytes"), [2]string{"error", ""}},
	}
	for _, tt := range tests {
		m.verification(tt.err)
		if got := counts()[tt.want]; got != 1 {
			t.Errorf("%v: %v = %v, want 1", tt.err, tt.want, got)
		}
	}
	if n := len(counts()); n != 3+len(verifyReasons) {
		t.Errorf("%d series after verifications: a label value outside the fixed set", n)
	}
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}
