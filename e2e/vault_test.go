//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
)

// vaultSetup is a cluster, Vault (Kubernetes auth for the daemon), PostgreSQL behind Vault's
// database engine, a daemon with the Vault source, and a pod-shaped caller.
type vaultSetup struct {
	kube    *framework.Kube
	vault   *framework.Vault
	pg      *framework.Postgres
	daemon  *framework.Daemon
	kubelet *framework.Kubelet
	ns      string
	token   string // the pod's bound token (audience keywarden)
	client  *client.Client
}

type vaultOptions struct {
	pollInterval         time.Duration
	dbTTL, dbMaxTTL      time.Duration
	leaseGrace           time.Duration
	share                string
	withPostgres         bool
	extraVaultConfigYAML string
	logLevel             string // default debug
	transitKEK           bool   // the stores' KEK is the Transit key transit/keys/kek (derived)
	// auth, when set, prepares another login for the daemon and returns its vault.auth flow
	// map; default: kubernetes auth as role keywarden.
	auth func(t testing.TB, v *framework.Vault) string
}

const daemonPolicy = `
path "secret/data/*"     { capabilities = ["read"] }
path "secret/metadata/*" { capabilities = ["read"] }
path "database/creds/*"  { capabilities = ["read"] }
path "sys/leases/renew"  { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "transit/keys/kek"    { capabilities = ["read"] }
path "transit/encrypt/kek" { capabilities = ["update"] }
path "transit/decrypt/kek" { capabilities = ["update"] }
`

func startVaultSetup(t testing.TB, o vaultOptions) *vaultSetup {
	t.Helper()
	s := &vaultSetup{kube: framework.StartKube(t, framework.KubeOptions{}), vault: framework.StartVault(t)}
	if o.withPostgres {
		s.pg = framework.StartPostgres(t)
		s.vault.EnableDatabase(t, s.pg, framework.DatabaseOptions{DefaultTTL: o.dbTTL, MaxTTL: o.dbMaxTTL})
	}
	s.vault.PutPolicy(t, "keywarden", daemonPolicy)
	if o.transitKEK {
		s.vault.Mount(t, "transit", "transit", nil)
		s.vault.Write(t, "transit/keys/kek", map[string]any{"type": "aes256-gcm96", "derived": true})
		o.extraVaultConfigYAML += "  transitKEK: {key: kek}\nkek: {provider: transit}\n"
	}
	s.vault.EnableKubernetesAuth(t, s.kube, framework.KubernetesAuthOptions{
		Role: "keywarden", ServiceAccounts: []string{"keywarden"}, Namespaces: []string{"keywarden-system"},
		Audience: "vault", Policies: []string{"keywarden"},
	})
	authYAML := "{method: kubernetes, role: keywarden, tokenFile: {{.TokenFile}}}"
	if o.auth != nil {
		authYAML = o.auth(t, s.vault)
	}
	s.kubelet = framework.NewKubelet(t, s.kube, framework.KubeletOptions{})
	s.ns = s.kube.CreateNamespace(t, "vault")
	pod := s.kubelet.CreatePod(t, s.ns, "app")
	s.token = s.kubelet.PodToken(t, pod, framework.DefaultAudience).Token

	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	writeIssuerJWKS(t, s.kube, jwks)
	share := ""
	if o.share != "" {
		share = "\n      share: " + o.share
	}
	grants := filepath.Join(dir, "grants.yaml")
	writeFile(t, grants, fmt.Sprintf(`apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: app-vault}
spec:
  subjects: [{namespace: %s, serviceAccount: app}]
  secrets:
    - name: api
      source: {vault: {mount: secret, path: app/api}}
    - name: shared
      source: {vault: {mount: secret, path: app/shared}}
    - name: db
      source: {vault: {mount: database, engine: database, role: app}}%s
`, s.ns, share))
	s.daemon = framework.StartDaemon(t, framework.DaemonOptions{Kube: s.kube, Config: fmt.Sprintf(`
dataDir: {{.Dir}}/data
socket: {path: {{.Dir}}/kw.sock}
adminSocket: {path: {{.Dir}}/admin.sock}
identity:
  issuer: {{.Issuer}}
  audiences: [keywarden]
  jwksFile: %s
  nodeBinding: false
grants: {file: %s, reloadInterval: 1s}
rotation: {pollInterval: %s}
vault:
  address: %s
  auth: %s
  leases: {grace: %s}
%s
log: {level: %s}
`, jwks, grants, o.pollInterval, s.vault.Addr, authYAML, o.leaseGrace, o.extraVaultConfigYAML, or(o.logLevel, "debug"))})
	c, err := client.New(filepath.Join(s.daemon.Dir, "kw.sock"), client.WithToken(s.token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	s.client = c
	t.Cleanup(func() { assertNoSecretsInLogs(t, s) })
	return s
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeIssuerJWKS fetches the service-account issuer's JWKS from the apiserver's OIDC endpoint.
func writeIssuerJWKS(t testing.TB, kube *framework.Kube, path string) {
	t.Helper()
	hc := framework.HTTPClient(kube.CAPEM)
	var disc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	resp, err := hc.Get(kube.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&disc)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	resp, err = hc.Get(disc.JWKSURI)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("jwks: %s %v", resp.Status, err)
	}
	writeFile(t, path, string(b))
}

// secretsSeen collects every token and secret value a test used, for the log check.
var secretsSeen sync.Map

func remember(vals ...string) {
	for _, v := range vals {
		if len(v) >= 6 {
			secretsSeen.Store(v, true)
		}
	}
}

func assertNoSecretsInLogs(t testing.TB, s *vaultSetup) {
	logs := s.daemon.Process.Log()
	remember(s.token)
	secretsSeen.Range(func(k, _ any) bool {
		if strings.Contains(logs, k.(string)) {
			t.Errorf("daemon log contains a secret or token (%d bytes long)", len(k.(string)))
		}
		return true
	})
	// Vault tokens of the daemon.
	if strings.Contains(logs, "hvs.") {
		t.Error("daemon log contains a Vault token")
	}
}

// TestVault_kvUpdateSeenWithinPollInterval checks that a KV write reaches a watch stream at the
// first metadata poll after it: counted in Vault's audit log (at most two metadata reads of the
// path between the write and the delivery: the one in flight and the next), not timed, so a
// loaded machine cannot fail it. The observed latency is logged.
func TestVault_kvUpdateSeenWithinPollInterval(t *testing.T) {
	const poll = 2 * time.Second
	s := startVaultSetup(t, vaultOptions{pollInterval: poll, leaseGrace: time.Second})
	auditLog := s.vault.EnableFileAudit(t)
	kv := s.vault.Client.KVv2("secret")
	remember("kv-value-one", "kv-value-two")
	if _, err := kv.Put(ctx(t), "app/api", map[string]any{"token": "kv-value-one"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.client.Get(ctx(t), "api")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if string(got.Data["token"]) != "kv-value-one" || got.Version != "1" {
		t.Fatalf("got version %s", got.Version)
	}

	wctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	first := make(chan struct{}, 1)
	updates := make(chan time.Time, 4)
	go func() {
		_ = s.client.Watch(wctx, []string{"api"}, func(sec *client.Secret) error {
			switch string(sec.Data["token"]) {
			case "kv-value-one":
				first <- struct{}{}
			case "kv-value-two":
				updates <- time.Now()
			}
			return nil
		})
	}()
	select {
	case <-first:
	case <-time.After(30 * time.Second):
		t.Fatal("the watch never delivered version 1")
	}
	metadataReads := func() int {
		b, err := os.ReadFile(auditLog)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"type":"request"`) && strings.Contains(line, `"path":"secret/metadata/app/api"`) {
				n++
			}
		}
		return n
	}
	before := metadataReads()
	wrote := time.Now()
	if _, err := kv.Put(ctx(t), "app/api", map[string]any{"token": "kv-value-two"}); err != nil {
		t.Fatal(err)
	}
	select {
	case seen := <-updates:
		polls := metadataReads() - before
		t.Logf("update seen after %v and %d metadata polls (poll interval %v)", seen.Sub(wrote), polls, poll)
		if polls > 2 {
			t.Fatalf("update needed %d metadata polls after the write, want at most 2 (the next poll)", polls)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("update never seen")
	}
}

func TestVault_fiftyConcurrentCallersOneRead(t *testing.T) {
	s := startVaultSetup(t, vaultOptions{pollInterval: time.Hour, leaseGrace: time.Second})
	audit := s.vault.EnableFileAudit(t)
	remember("shared-value")
	if _, err := s.vault.Client.KVv2("secret").Put(ctx(t), "app/shared", map[string]any{"v": "shared-value"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	start := make(chan struct{})
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			sec, err := s.client.Get(ctx(t), "shared")
			if err == nil && string(sec.Data["v"]) != "shared-value" {
				err = fmt.Errorf("wrong value")
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := countAuditReads(t, audit, "secret/data/app/shared"); n != 1 {
		t.Fatalf("vault saw %d reads of the secret for 50 callers, want 1", n)
	}
	// The counter counts: one direct read makes it 2.
	if _, err := s.vault.Client.KVv2("secret").Get(ctx(t), "app/shared"); err != nil {
		t.Fatal(err)
	}
	if n := countAuditReads(t, audit, "secret/data/app/shared"); n != 2 {
		t.Fatalf("audit counter broken: %d reads after a direct read, want 2", n)
	}
}

// countAuditReads counts request entries for path in a Vault file audit log.
func countAuditReads(t *testing.T, file, path string) int {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct {
			Type    string `json:"type"`
			Request struct {
				Path      string `json:"path"`
				Operation string `json:"operation"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Type == "request" && e.Request.Path == path && e.Request.Operation == "read" {
			n++
		}
	}
	return n
}

func TestVault_databaseCredsRenewedReissuedAndRevoked(t *testing.T) {
	// The re-issue comes a third of a TTL before max_ttl; with a 9 s TTL the old lease has
	// ~3 s left, well past the 500 ms grace, so the daemon (not expiry) must revoke it.
	const ttl, maxTTL, grace = 9 * time.Second, 20 * time.Second, 500 * time.Millisecond
	s := startVaultSetup(t, vaultOptions{pollInterval: 30 * time.Second, dbTTL: ttl, dbMaxTTL: maxTTL, leaseGrace: grace, share: "Pod", withPostgres: true})

	first, err := s.client.Get(ctx(t), "db")
	if err != nil {
		t.Fatalf("get db: %v", err)
	}
	user, pass := string(first.Data["username"]), string(first.Data["password"])
	remember(pass)
	if err := s.pg.CanLogin(ctx(t), user, pass); err != nil {
		t.Fatalf("issued credentials do not log in: %v", err)
	}
	if first.ExpiresAt.IsZero() || first.RenewAfter.IsZero() {
		t.Fatal("leased secret without expiry or renew time")
	}

	// Poll like a careful client for longer than max_ttl: every answer must log in and be
	// unexpired (no gap), and the credential must change once max_ttl nears.
	var reissued *client.Secret
	deadline := time.Now().Add(maxTTL + 10*time.Second)
	checks := 0
	for time.Now().Before(deadline) {
		sec, err := s.client.Get(ctx(t), "db")
		if err != nil {
			t.Fatalf("get db after %d checks: %v", checks, err)
		}
		remember(string(sec.Data["password"]))
		if !time.Now().Before(sec.ExpiresAt) {
			t.Fatalf("served an expired credential (expires %v)", sec.ExpiresAt)
		}
		if err := s.pg.CanLogin(ctx(t), string(sec.Data["username"]), string(sec.Data["password"])); err != nil {
			t.Fatalf("served credential does not log in (check %d, version %s): %v", checks, sec.Version, err)
		}
		checks++
		if sec.Version != first.Version && reissued == nil {
			reissued = sec
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if reissued == nil {
		t.Fatalf("credential never re-issued within max_ttl + 10s (%d checks)", checks)
	}
	// After the grace period the old credential is revoked by the daemon; the new one works.
	deadlineRevoke := time.Now().Add(grace + 10*time.Second)
	for s.pg.CanLogin(ctx(t), user, pass) == nil {
		if time.Now().After(deadlineRevoke) {
			t.Fatal("old credential still logs in after re-issue and grace")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := s.pg.CanLogin(ctx(t), string(reissued.Data["username"]), string(reissued.Data["password"])); err != nil {
		t.Fatalf("new credential does not log in: %v", err)
	}
	// The metrics are scraped until they show the renewal, the re-issue and the revocation
	// (bounded: the revocation lands on the daemon's next reap after the grace).
	want := []string{`keywarden_vault_lease_renewals_total{result="ok"}`, `keywarden_vault_lease_reissues_total{reason="max_ttl"}`, `keywarden_vault_lease_revocations_total{result="ok"}`}
	deadlineMetrics := time.Now().Add(15 * time.Second)
	for {
		m := daemonMetrics(t, s.daemon)
		var missing []string
		for _, w := range want {
			if !strings.Contains(m, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadlineMetrics) {
			t.Fatalf("metrics lack %v", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func daemonMetrics(t *testing.T, d *framework.Daemon) string {
	t.Helper()
	resp, err := http.Get("http://" + d.HealthAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestVault_transitKEKDaemonServesSecrets(t *testing.T) {
	s := startVaultSetup(t, vaultOptions{pollInterval: time.Hour, leaseGrace: time.Second, transitKEK: true})
	remember("transit-kv-value")
	if _, err := s.vault.Client.KVv2("secret").Put(ctx(t), "app/api", map[string]any{"token": "transit-kv-value"}); err != nil {
		t.Fatal(err)
	}
	sec, err := s.client.Get(ctx(t), "api")
	if err != nil || string(sec.Data["token"]) != "transit-kv-value" {
		t.Fatalf("get with a Transit KEK: %v", err)
	}
	// No local KEK file was created: the DEK keyset on disk is wrapped by Vault only.
	if _, err := os.Stat(filepath.Join(s.daemon.Dir, "data", "kek.json")); err == nil {
		t.Fatal("a local kek.json exists although kek.provider is transit")
	}
	if !strings.Contains(s.daemon.Process.Log(), `"component":"vault-kek"`) {
		t.Fatal("the Transit KEK did not log in")
	}
}
