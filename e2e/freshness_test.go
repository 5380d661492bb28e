//go:build e2e

package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/e2e/framework"
)

// TestFreshness_statusAndPerSecretMetrics reads a KV secret through a daemon started with
// metrics.perSecretLabels: true, and checks `keywarden status` and /metrics for that secret's
// freshness: age, expiry, next refresh, failures. Neither carries the value.
func TestFreshness_statusAndPerSecretMetrics(t *testing.T) {
	s := startVaultSetup(t, vaultOptions{pollInterval: 2 * time.Second, leaseGrace: time.Second,
		extraVaultConfigYAML: "metrics: {perSecretLabels: true}\n"})
	const value = "freshness-kv-value-7d2e"
	remember(value)
	if _, err := s.vault.Client.KVv2("secret").Put(ctx(t), "app/api", map[string]any{"token": value}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.client.Get(ctx(t), "api"); err != nil || string(got.Data["token"]) != value {
		t.Fatalf("get: %v", err)
	}

	const path = "engine=kv-v2&mount=secret&path=app%2Fapi"
	ex := scrape(t, s.daemon.HealthAddr)
	for _, name := range []string{"keywarden_secret_age_seconds", "keywarden_secret_expiry_seconds", "keywarden_secret_next_refresh_seconds",
		"keywarden_secret_refresh_failures", "keywarden_secret_stale"} {
		series := name + `{path="` + path + `",source="vault"}`
		if _, ok := ex.values[series]; !ok {
			t.Errorf("no %s", series)
		}
	}
	if v := ex.values[`keywarden_secret_refresh_failures{path="`+path+`",source="vault"}`]; v != 0 {
		t.Errorf("refresh failures = %v, want 0", v)
	}
	for _, lv := range ex.labelValues {
		if strings.Contains(lv, value) || strings.Contains(lv, "hvs.") {
			t.Errorf("label value %q holds a value or a token", lv)
		}
	}

	cmd := exec.Command(framework.DaemonBinary(t), "status", "--admin-socket", filepath.Join(s.daemon.Dir, "admin.sock"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("keywarden status: %v\n%s", err, out)
	}
	t.Logf("keywarden status:\n%s", out)
	if !strings.Contains(string(out), "AGE") || !strings.Contains(string(out), "NEXT REFRESH") || !strings.Contains(string(out), path) {
		t.Fatalf("status lacks the freshness columns or the secret:\n%s", out)
	}
	if strings.Contains(string(out), value) {
		t.Fatal("keywarden status printed a value")
	}
}
