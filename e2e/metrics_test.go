//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
)

// promGenerated are names Prometheus writes itself (per scrape target), which the rules may
// use but no daemon exports.
var promGenerated = map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true,
	// kube-state-metrics, for a node whose daemon pod is missing (no target to scrape at all).
	"kube_daemonset_status_number_unavailable": true}

// TestMetrics_dashboardAndRulesMatchTheDaemon: the Grafana dashboard and the alert rules that
// the chart ships parse with Prometheus's own parsers, and every metric they use exists on a
// real daemon's /metrics after a full flow (publish, GetSecret, a denied call, a KV rotation);
// no label value on /metrics is a token or a secret value of that flow.
func TestMetrics_dashboardAndRulesMatchTheDaemon(t *testing.T) {
	root := framework.RepoRoot(t)
	files := filepath.Join(root, "deploy", "helm", "keywarden", "files")
	used := checkDashboardAndRules(t, filepath.Join(root, "e2e", "tools", "prom"),
		filepath.Join(files, "prometheus-rules.yaml"), filepath.Join(files, "grafana-dashboard.json"))

	e := startCSIVault(t, csiVaultOptions{})
	e.putKV(t, "app/api", map[string]any{"token": "metrics-kv-value-1"})
	pods, targets := e.publishPods(t, 1, map[string]string{"secrets": "api"})
	waitFile(t, filepath.Join(targets[0], "api/token"), "metrics-kv-value-1")

	// GetSecret over the daemon's socket with the public client.
	sock := filepath.Join(e.d.Dir, "kw.sock")
	tok := e.kl.PodToken(t, pods[0], framework.DefaultAudience).Token
	remember(tok)
	c, err := client.New(sock, client.WithToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Get(ctx(t), "api")
	_ = c.Close()
	if err != nil || string(s.Data["token"]) != "metrics-kv-value-1" {
		t.Fatalf("GetSecret: %v", err)
	}
	// A denied call: service account other holds no grant.
	other := e.kl.CreatePod(t, e.ns, "other")
	otherTok := e.kl.PodToken(t, other, framework.DefaultAudience).Token
	remember(otherTok)
	c, err = client.New(sock, client.WithToken(otherTok))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx(t), "api"); err == nil {
		t.Fatal("service account other read api")
	}
	_ = c.Close()
	// A KV rotation reaches the volume.
	e.putKV(t, "app/api", map[string]any{"token": "metrics-kv-value-2"})
	waitFile(t, filepath.Join(targets[0], "api/token"), "metrics-kv-value-2")

	exposed := scrape(t, e.d.HealthAddr)
	for _, name := range used {
		if promGenerated[name] {
			continue
		}
		if _, ok := exposed.series[name]; ok {
			continue
		}
		// A histogram named by its base name is present through its _bucket series.
		if _, ok := exposed.series[name+"_bucket"]; ok {
			continue
		}
		t.Errorf("the dashboard or the rules use %s, which the daemon does not export", name)
	}
	// The flow is visible in the series the alerts and panels read.
	checks := []struct {
		series string
		ok     func(float64) bool
		want   string
	}{
		{`keywarden_decisions_total{decision="allow",reason="granted"}`, func(v float64) bool { return v >= 2 }, "≥ 2 (publish + GetSecret)"},
		{`keywarden_decisions_total{decision="deny",reason="no_grant"}`, func(v float64) bool { return v >= 1 }, "≥ 1"},
		{`keywarden_vault_up`, func(v float64) bool { return v == 1 }, "1"},
		{`keywarden_secrets_cached`, func(v float64) bool { return v >= 1 }, "≥ 1"},
		{`keywarden_audit_flushes_total{result="ok"}`, func(v float64) bool { return v >= 1 }, "≥ 1"},
		{`keywarden_store_commit_duration_seconds_count{db="state"}`, func(v float64) bool { return v >= 1 }, "≥ 1"},
		{`keywarden_csi_publish_duration_seconds_count`, func(v float64) bool { return v >= 1 }, "≥ 1"},
	}
	for _, c := range checks {
		v, ok := exposed.values[c.series]
		if !ok || !c.ok(v) {
			t.Errorf("%s = %v (present %v), want %s", c.series, v, ok, c.want)
		}
	}
	// Invariant 4: no token or secret value in a label.
	secretsSeen.Range(func(k, _ any) bool {
		for _, lv := range exposed.labelValues {
			if lv == k.(string) || strings.Contains(lv, k.(string)) {
				t.Errorf("a label value on /metrics holds a secret or token (%d bytes long)", len(k.(string)))
			}
		}
		return true
	})
	for _, lv := range exposed.labelValues {
		if strings.Contains(lv, "hvs.") || strings.Contains(lv, "app/api") || strings.Contains(lv, "eyJ") {
			t.Errorf("label value %q looks like a Vault token, a Vault path or a JWT", lv)
		}
	}
}

// checkDashboardAndRules runs e2e/tools/prom on the rules and the dashboard and returns the
// metric names they use.
func checkDashboardAndRules(t *testing.T, dir, rules, dashboard string) []string {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // first build compiles the parsers
	defer cancel()
	cmd := exec.CommandContext(c, "go", "run", ".", rules, dashboard)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("e2e/tools/prom: %v\n%s", err, stderr.String())
	}
	names := strings.Fields(string(out))
	if len(names) < 10 {
		t.Fatalf("e2e/tools/prom found only %d metric names: %q", len(names), names)
	}
	return names
}

type exposition struct {
	series      map[string]bool    // metric names
	values      map[string]float64 // "name{labels}" as exposed → value
	labelValues []string
}

// scrape reads /metrics in the text format: a small parser, enough for names, label values
// and sample values.
func scrape(t *testing.T, addr string) exposition {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("/metrics: %s\n%s", resp.Status, b)
	}
	ex := exposition{series: map[string]bool{}, values: map[string]float64{}}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, labels, value, err := parseSample(line)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		name, _, _ := strings.Cut(series, "{")
		ex.series[name] = true
		ex.values[series] = value
		ex.labelValues = append(ex.labelValues, labels...)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ex
}

// parseSample splits `name{a="x",b="y"} 1.5` into its series text, label values and value.
func parseSample(line string) (series string, labelValues []string, value float64, err error) {
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return "", nil, 0, errors.New("no value")
	}
	if line[i] == '{' {
		j := i + 1
		for j < len(line) && line[j] != '}' {
			eq := strings.IndexByte(line[j:], '=')
			if eq < 0 || j+eq+1 >= len(line) || line[j+eq+1] != '"' {
				return "", nil, 0, errors.New("bad label")
			}
			k := j + eq + 2
			var v strings.Builder
			for ; k < len(line) && line[k] != '"'; k++ {
				if line[k] == '\\' && k+1 < len(line) {
					k++
					if line[k] == 'n' {
						v.WriteByte('\n')
						continue
					}
				}
				v.WriteByte(line[k])
			}
			if k >= len(line) {
				return "", nil, 0, errors.New("unterminated label value")
			}
			labelValues = append(labelValues, v.String())
			j = k + 1
			if j < len(line) && line[j] == ',' {
				j++
			}
		}
		if j >= len(line) {
			return "", nil, 0, errors.New("unterminated labels")
		}
		i = j + 1
	}
	series = line[:i]
	fields := strings.Fields(line[i:])
	if len(fields) == 0 {
		return "", nil, 0, errors.New("no value")
	}
	value, err = strconv.ParseFloat(fields[0], 64)
	return series, labelValues, value, err
}
