package framework

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const vaultReadyTimeout = 10 * time.Second

// VaultRootToken is the root token of every dev-mode Vault the framework
// starts. It is a throwaway value for a loopback server that lives as long
// as one test.
const VaultRootToken = "keywarden-e2e-root"

// Vault is a running `vault server -dev` (in-memory storage, unsealed) with a
// root-token client. Dev mode also binds the port after Addr's (cluster port).
type Vault struct {
	// Addr is the http URL, e.g. http://127.0.0.1:23456.
	Addr string
	// Client is authenticated with VaultRootToken.
	Client  *vaultapi.Client
	Process *Process
	// CAFile is the PEM CA of the listener's certificate (StartVaultTLS only).
	CAFile string

	dir string
}

// StartVault starts Vault in dev mode with telemetry enabled (Prometheus
// metrics at /v1/sys/metrics?format=prometheus) and waits (10 s bound) for
// /v1/sys/health.
func StartVault(t testing.TB) *Vault {
	t.Helper()
	return startVault(t, false)
}

// StartVaultTLS is StartVault with an https listener (-dev-tls: a certificate for 127.0.0.1
// signed by a CA in CAFile). The listener asks for client certificates without requiring
// them, so TLS certificate auth works.
func StartVaultTLS(t testing.TB) *Vault {
	t.Helper()
	return startVault(t, true)
}

func startVault(t testing.TB, withTLS bool) *Vault {
	t.Helper()
	bin := ToolPath(t, ToolVault)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "telemetry.hcl")
	if err := os.WriteFile(cfg, []byte("telemetry {\n  prometheus_retention_time = \"1h\"\n  disable_hostname = true\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	v := &Vault{dir: dir}
	err := retryOnAddrInUse(func() error {
		port, err := freePorts(2) // dev mode listens on port and port+1
		if err != nil {
			return err
		}
		addr := "http://127.0.0.1:" + strconv.Itoa(port)
		args := []string{
			"server", "-dev",
			"-dev-root-token-id=" + VaultRootToken,
			"-dev-listen-address=127.0.0.1:" + strconv.Itoa(port),
			"-dev-no-store-token",
			"-config=" + cfg,
		}
		hc := &http.Client{Timeout: 2 * time.Second}
		var caFile string
		if withTLS {
			certDir, err := os.MkdirTemp(dir, "tls")
			if err != nil {
				return err
			}
			addr = "https://127.0.0.1:" + strconv.Itoa(port)
			caFile = filepath.Join(certDir, "vault-ca.pem")
			args = append(args, "-dev-tls", "-dev-tls-cert-dir="+certDir)
		}
		p, err := startProcess(t, "vault", bin, args, procOptions{Dir: dir, Env: []string{"VAULT_ADDR=" + addr, "VAULT_LOG_LEVEL=info"}})
		if err != nil {
			return err
		}
		if err := p.waitReady(vaultReadyTimeout, func() error {
			if withTLS {
				pem, err := os.ReadFile(caFile)
				if err != nil {
					return err
				}
				hc = HTTPClient(pem)
			}
			return vaultHealthy(hc, addr)
		}); err != nil {
			return err
		}
		vc := &vaultapi.Config{Address: addr, Timeout: 30 * time.Second, MaxRetries: 2}
		if withTLS {
			vc.HttpClient = hc
		}
		c, err := vaultapi.NewClient(vc)
		if err != nil {
			return fmt.Errorf("vault client: %w", err)
		}
		c.SetToken(VaultRootToken)
		v.Addr, v.Client, v.Process, v.CAFile = addr, c, p, caFile
		return nil
	})
	if err != nil {
		t.Fatalf("start vault: %v", err)
	}
	return v
}

func vaultHealthy(c *http.Client, addr string) error {
	resp, err := c.Get(addr + "/v1/sys/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("vault health: %s", resp.Status)
	}
	return nil
}

// Write writes data at path with the root token.
func (v *Vault) Write(t testing.TB, path string, data map[string]any) *vaultapi.Secret {
	t.Helper()
	s, err := v.Client.Logical().WriteWithContext(ctxT(t), path, data)
	if err != nil {
		t.Fatalf("vault write %s: %v", path, err)
	}
	return s
}

// Mount enables a secrets engine of type typ at path.
func (v *Vault) Mount(t testing.TB, path, typ string, options map[string]string) {
	t.Helper()
	if err := v.Client.Sys().MountWithContext(ctxT(t), path, &vaultapi.MountInput{Type: typ, Options: options}); err != nil {
		t.Fatalf("vault mount %s at %s: %v", typ, path, err)
	}
}

// EnableKV mounts a KV version 2 engine at path and waits until it accepts
// writes (a fresh KV v2 mount answers "upgrading" for a moment). Dev mode
// already has one at "secret".
func (v *Vault) EnableKV(t testing.TB, path string) {
	t.Helper()
	v.Mount(t, path, "kv", map[string]string{"version": "2"})
	deadline := time.Now().Add(vaultReadyTimeout)
	for {
		_, err := v.Client.Logical().WriteWithContext(ctxT(t), path+"/data/keywarden-e2e-probe", map[string]any{"data": map[string]any{"ok": "1"}})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kv v2 at %s not writable: %v", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := v.Client.Logical().DeleteWithContext(ctxT(t), path+"/metadata/keywarden-e2e-probe"); err != nil {
		t.Fatalf("kv v2 probe cleanup: %v", err)
	}
}

// EnableTransit mounts the Transit engine at path and creates the named keys
// (aes256-gcm96).
func (v *Vault) EnableTransit(t testing.TB, path string, keys ...string) {
	t.Helper()
	v.Mount(t, path, "transit", nil)
	for _, k := range keys {
		v.Write(t, path+"/keys/"+k, map[string]any{"type": "aes256-gcm96"})
	}
}

// DatabaseOptions configures EnableDatabase.
type DatabaseOptions struct {
	// Path of the engine; default "database".
	Path string
	// Role is the dynamic role name; default "app".
	Role string
	// DefaultTTL and MaxTTL of issued credentials; default 1m and 5m.
	DefaultTTL, MaxTTL time.Duration
}

// EnableDatabase mounts the database engine wired to pg as its superuser and
// creates a dynamic role that issues login roles with short TTLs. It returns
// the role name; credentials are at <path>/creds/<role>.
func (v *Vault) EnableDatabase(t testing.TB, pg *Postgres, o DatabaseOptions) string {
	t.Helper()
	if o.Path == "" {
		o.Path = "database"
	}
	if o.Role == "" {
		o.Role = "app"
	}
	if o.DefaultTTL == 0 {
		o.DefaultTTL = time.Minute
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = 5 * time.Minute
	}
	v.Mount(t, o.Path, "database", nil)
	v.Write(t, o.Path+"/config/postgres", map[string]any{
		"plugin_name":       "postgresql-database-plugin",
		"connection_url":    pg.VaultConnectionURL(),
		"username":          PostgresSuperuser,
		"password":          pg.SuperuserPassword,
		"allowed_roles":     "*",
		"verify_connection": true,
	})
	v.Write(t, o.Path+"/roles/"+o.Role, map[string]any{
		"db_name": "postgres",
		"creation_statements": []string{
			`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
			`GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";`,
		},
		"default_ttl": int(o.DefaultTTL / time.Second),
		"max_ttl":     int(o.MaxTTL / time.Second),
	})
	return o.Role
}

// PutPolicy writes an ACL policy.
func (v *Vault) PutPolicy(t testing.TB, name, hcl string) {
	t.Helper()
	if err := v.Client.Sys().PutPolicyWithContext(ctxT(t), name, hcl); err != nil {
		t.Fatalf("vault policy %s: %v", name, err)
	}
}

// EnableFileAudit enables a file audit device and returns the file's path;
// each request and response is one JSON line (handy for counting requests).
func (v *Vault) EnableFileAudit(t testing.TB) string {
	t.Helper()
	path := filepath.Join(v.dir, "audit.log")
	if err := v.Client.Sys().EnableAuditWithOptionsWithContext(ctxT(t), "file", &vaultapi.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": path},
	}); err != nil {
		t.Fatalf("vault audit: %v", err)
	}
	return path
}

// Metrics returns Vault's Prometheus metrics text (telemetry is enabled by
// StartVault), e.g. to count requests the daemon made.
func (v *Vault) Metrics(t testing.TB) string {
	t.Helper()
	resp, err := v.Client.Logical().ReadRawWithDataWithContext(ctxT(t), "sys/metrics", map[string][]string{"format": {"prometheus"}})
	if err != nil {
		t.Fatalf("vault metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("vault metrics: %v", err)
	}
	return string(b)
}

// KubernetesAuthOptions configures EnableKubernetesAuth.
type KubernetesAuthOptions struct {
	// Path of the auth method; default "kubernetes".
	Path string
	// Role is created when non-empty.
	Role string
	// ServiceAccounts and Namespaces bound to the role (required with Role).
	ServiceAccounts, Namespaces []string
	// Audience the role requires, if any.
	Audience string
	// Policies attached to tokens issued for the role.
	Policies []string
	// TokenTTL of Vault tokens issued for the role; default 10m.
	TokenTTL time.Duration
}

var reviewerMu sync.Mutex

// EnableKubernetesAuth enables the Kubernetes auth method against kube: it
// creates a token-reviewer ServiceAccount bound to system:auth-delegator and
// gives Vault its token and the cluster CA.
func (v *Vault) EnableKubernetesAuth(t testing.TB, kube *Kube, o KubernetesAuthOptions) {
	t.Helper()
	if o.Path == "" {
		o.Path = "kubernetes"
	}
	reviewer := kube.vaultReviewerToken(t)
	if err := v.Client.Sys().EnableAuthWithOptionsWithContext(ctxT(t), o.Path, &vaultapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatalf("enable kubernetes auth: %v", err)
	}
	v.Write(t, "auth/"+o.Path+"/config", map[string]any{
		"kubernetes_host":      kube.URL,
		"kubernetes_ca_cert":   string(kube.CAPEM),
		"token_reviewer_jwt":   reviewer,
		"disable_local_ca_jwt": true,
	})
	if o.Role == "" {
		return
	}
	ttl := o.TokenTTL
	if ttl == 0 {
		ttl = 10 * time.Minute
	}
	data := map[string]any{
		"bound_service_account_names":      o.ServiceAccounts,
		"bound_service_account_namespaces": o.Namespaces,
		"token_policies":                   o.Policies,
		"token_ttl":                        int(ttl / time.Second),
	}
	if o.Audience != "" {
		data["audience"] = o.Audience
	}
	v.Write(t, "auth/"+o.Path+"/role/"+o.Role, data)
}

// vaultReviewerToken returns a token for kube-system/vault-token-reviewer,
// creating the account and its system:auth-delegator binding once.
func (k *Kube) vaultReviewerToken(t testing.TB) string {
	t.Helper()
	reviewerMu.Lock()
	defer reviewerMu.Unlock()
	const ns, name = "kube-system", "vault-token-reviewer"
	if _, err := k.Client.CoreV1().ServiceAccounts(ns).Get(ctxT(t), name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		k.CreateServiceAccount(t, ns, name)
		k.BindClusterRole(t, "vault-token-reviewer", "system:auth-delegator", ServiceAccountSubject(ns, name))
	} else if err != nil {
		t.Fatalf("get reviewer service account: %v", err)
	}
	tok, _ := k.TokenRequest(t, ns, name, nil, 24*time.Hour, nil)
	return tok
}

// JWTAuthOptions configures EnableJWTAuth.
type JWTAuthOptions struct {
	// Path of the auth method; default "jwt".
	Path string
	// PublicKeys, when true, configures the service-account public key
	// (jwt_validation_pubkeys) instead of OIDC discovery against the
	// apiserver's issuer.
	PublicKeys bool
	// Role is created when non-empty (role_type jwt, user_claim sub).
	Role string
	// BoundAudiences the token must carry (required with Role).
	BoundAudiences []string
	// BoundSubject, e.g. system:serviceaccount:<ns>:<name>, if any.
	BoundSubject string
	// Policies attached to tokens issued for the role.
	Policies []string
	// TokenTTL of Vault tokens issued for the role; default 10m.
	TokenTTL time.Duration
}

// EnableJWTAuth enables the JWT auth method trusting kube's service-account
// issuer, through OIDC discovery (the apiserver's JWKS) or its public key.
func (v *Vault) EnableJWTAuth(t testing.TB, kube *Kube, o JWTAuthOptions) {
	t.Helper()
	if o.Path == "" {
		o.Path = "jwt"
	}
	if err := v.Client.Sys().EnableAuthWithOptionsWithContext(ctxT(t), o.Path, &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatalf("enable jwt auth: %v", err)
	}
	cfg := map[string]any{"bound_issuer": kube.Issuer}
	if o.PublicKeys {
		cfg["jwt_validation_pubkeys"] = []string{string(kube.SAPublicKeyPEM)}
	} else {
		cfg["oidc_discovery_url"] = kube.Issuer
		cfg["oidc_discovery_ca_pem"] = string(kube.CAPEM)
	}
	v.Write(t, "auth/"+o.Path+"/config", cfg)
	if o.Role == "" {
		return
	}
	ttl := o.TokenTTL
	if ttl == 0 {
		ttl = 10 * time.Minute
	}
	data := map[string]any{
		"role_type":       "jwt",
		"user_claim":      "sub",
		"bound_audiences": o.BoundAudiences,
		"token_policies":  o.Policies,
		"token_ttl":       int(ttl / time.Second),
	}
	if o.BoundSubject != "" {
		data["bound_subject"] = o.BoundSubject
	}
	v.Write(t, "auth/"+o.Path+"/role/"+o.Role, data)
}

// Login logs in at auth/<path>/login with a JWT for a role and returns a
// client holding the resulting Vault token.
func (v *Vault) Login(ctx context.Context, path, role, jwt string) (*vaultapi.Client, error) {
	c, err := v.Client.Clone()
	if err != nil {
		return nil, err
	}
	c.ClearToken()
	s, err := c.Logical().WriteWithContext(ctx, "auth/"+path+"/login", map[string]any{"role": role, "jwt": jwt})
	if err != nil {
		return nil, redactErr(err, jwt)
	}
	if s == nil || s.Auth == nil {
		return nil, fmt.Errorf("login at %s: no auth in response", path)
	}
	c.SetToken(s.Auth.ClientToken)
	return c, nil
}
