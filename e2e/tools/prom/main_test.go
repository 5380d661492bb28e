package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodRules = `groups:
  - name: g
    rules:
      - alert: A
        expr: rate(x_total[5m]) > 0 or up == 0
        for: 5m
        labels: {severity: warning}
        annotations: {summary: s, description: d, runbook_url: u}
`

const goodDashboard = `{"panels":[{"title":"row","panels":[{"title":"p","targets":[{"refId":"A","expr":"histogram_quantile(0.99, sum by (le) (rate(y_seconds_bucket{instance=~\"$instance\"}[$__rate_interval])))"}]}]}]}`

func TestRun(t *testing.T) {
	tests := []struct {
		name, rules, dashboard string
		wantCode               int
		wantOut, wantErr       string
	}{
		{"valid", goodRules, goodDashboard, 0, "up\nx_total\ny_seconds_bucket\n", ""},
		{"bad rule promql", strings.Replace(goodRules, "rate(x_total[5m])", "rate(x_total)", 1), goodDashboard, 1, "", "rules.yaml"},
		{"unknown rule field", strings.Replace(goodRules, "for: 5m", "for: 5m\n        fore: 1m", 1), goodDashboard, 1, "", "fore"},
		{"alert without for", strings.Replace(goodRules, "        for: 5m\n", "", 1), goodDashboard, 1, "", "no `for:`"},
		{"bad dashboard promql", goodRules, strings.Replace(goodDashboard, "sum by (le)", "sum by (le", 1), 1, "", `panel "p" target A`},
		{"no targets", goodRules, `{"panels":[]}`, 1, "", "no panel has a target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			r, d := filepath.Join(dir, "rules.yaml"), filepath.Join(dir, "dash.json")
			if err := os.WriteFile(r, []byte(tt.rules), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(d, []byte(tt.dashboard), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := run([]string{r, d}, &out, &errb)
			if code != tt.wantCode || out.String() != tt.wantOut || !strings.Contains(errb.String(), tt.wantErr) {
				t.Fatalf("code %d, out %q, err %q; want %d, %q, %q", code, out.String(), errb.String(), tt.wantCode, tt.wantOut, tt.wantErr)
			}
		})
	}
}
