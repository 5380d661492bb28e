package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vault"
	"github.com/keywarden/keywarden/broker/source/vaultref"
	"github.com/keywarden/keywarden/crypto"
)

// KEK providers (kek.provider).
const (
	kekLocal   = "local"
	kekTransit = "transit"
)

// rawVault is the `vault:` section. Vault is enabled when address is set.
type rawVault struct {
	Address    string         `json:"address"`
	Namespace  string         `json:"namespace"`
	CAFile     string         `json:"caFile"`
	Auth       rawVaultAuth   `json:"auth"`
	Limits     rawVaultLimits `json:"limits"`
	Leases     rawVaultLeases `json:"leases"`
	TransitKEK rawTransitKEK  `json:"transitKEK"`
}

type rawVaultAuth struct {
	Method    string `json:"method"`
	Mount     string `json:"mount"`
	Role      string `json:"role"`
	TokenFile string `json:"tokenFile"`
	Namespace string `json:"namespace"`
	// approle
	RoleIDFile      string `json:"roleIDFile"`
	SecretIDFile    string `json:"secretIDFile"`
	SecretIDWrapped bool   `json:"secretIDWrapped"`
	// cert
	ClientCertFile string `json:"clientCertFile"`
	ClientKeyFile  string `json:"clientKeyFile"`
}

type rawVaultLimits struct {
	MaxConcurrent     int     `json:"maxConcurrent"`
	RequestsPerSecond float64 `json:"requestsPerSecond"`
	Burst             int     `json:"burst"`
	RequestTimeout    string  `json:"requestTimeout"`
	MaxResponseBytes  int64   `json:"maxResponseBytes"`
}

type rawVaultLeases struct {
	Grace       string `json:"grace"`
	OrphanGrace string `json:"orphanGrace"`
}

type rawTransitKEK struct {
	Mount string `json:"mount"`
	Key   string `json:"key"`
}

const defaultVaultTokenFile = "/var/run/secrets/keywarden/vault-token"

func (r rawConfig) typedVault(c *config, fail func(field, format string, args ...any)) {
	c.KEK.Provider = or(r.KEK.Provider, kekLocal)
	if c.KEK.Provider != kekLocal && c.KEK.Provider != kekTransit {
		fail("kek.provider", "want local or transit; got %q", c.KEK.Provider)
	}
	rv := r.Vault
	if rv.Address == "" {
		if c.KEK.Provider == kekTransit {
			fail("kek.provider", "transit needs the vault section (vault.address and vault.transitKEK.key)")
		}
		if rv != (rawVault{}) {
			fail("vault.address", "is required when the vault section is present, e.g. \"https://vault.vault.svc:8200\"")
		}
		return
	}
	if u, err := url.Parse(rv.Address); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		fail("vault.address", "want an http(s) URL such as \"https://vault.vault.svc:8200\"; got %q", rv.Address)
	}
	ra := rv.Auth
	vc := &vault.Config{
		Address: rv.Address, CACertFile: rv.CAFile, Namespace: rv.Namespace,
		Auth: vault.AuthConfig{Method: or(ra.Method, vault.MethodKubernetes), Mount: ra.Mount, Role: ra.Role,
			TokenFile: ra.TokenFile, Namespace: ra.Namespace, RoleIDFile: ra.RoleIDFile, SecretIDFile: ra.SecretIDFile,
			SecretIDWrapped: ra.SecretIDWrapped, ClientCertFile: ra.ClientCertFile, ClientKeyFile: ra.ClientKeyFile},
		MaxConcurrent: rv.Limits.MaxConcurrent, RequestsPerSecond: rv.Limits.RequestsPerSecond, Burst: rv.Limits.Burst,
		MaxResponseBytes: rv.Limits.MaxResponseBytes,
	}
	typedVaultAuth(&vc.Auth, rv.Address, fail)
	for field, ns := range map[string]string{"vault.namespace": rv.Namespace, "vault.auth.namespace": rv.Auth.Namespace} {
		if ns == "" {
			continue
		}
		if d := vaultref.NamespaceProblem(ns); d != "" {
			fail(field, "%s; got %q (namespaces need Vault Enterprise; leave it empty for the root namespace)", d, ns)
		}
	}
	if vc.MaxConcurrent < 0 || vc.MaxConcurrent > 1024 {
		fail("vault.limits.maxConcurrent", "want 0 (default 8) to 1024; got %d", vc.MaxConcurrent)
	}
	if vc.RequestsPerSecond < 0 || vc.Burst < 0 {
		fail("vault.limits", "requestsPerSecond and burst must not be negative")
	}
	if vc.MaxResponseBytes < 0 || vc.MaxResponseBytes > 64<<20 {
		fail("vault.limits.maxResponseBytes", "want 0 (default 1 MiB) to 67108864; got %d", vc.MaxResponseBytes)
	}
	for _, d := range []struct {
		field, raw string
		dst        *time.Duration
	}{
		{"vault.limits.requestTimeout", rv.Limits.RequestTimeout, &vc.RequestTimeout},
		{"vault.leases.grace", rv.Leases.Grace, &vc.LeaseGrace},
		{"vault.leases.orphanGrace", rv.Leases.OrphanGrace, &vc.OrphanGrace},
	} {
		if d.raw == "" {
			continue
		}
		v, err := time.ParseDuration(d.raw)
		if err != nil || v <= 0 {
			fail(d.field, "want a positive duration such as \"30s\"; got %q", d.raw)
			continue
		}
		*d.dst = v
	}
	c.Vault = vc
	c.KEK.Transit = crypto.TransitKEKConfig{Mount: or(rv.TransitKEK.Mount, "transit"), Key: rv.TransitKEK.Key}
	switch c.KEK.Provider {
	case kekLocal:
		if rv.TransitKEK.Key != "" {
			fail("kek.provider", "vault.transitKEK is set but kek.provider is local: set kek.provider: transit to use it")
		}
	case kekTransit:
		if rv.TransitKEK.Key == "" {
			fail("vault.transitKEK.key", "is required with kek.provider transit: a Transit key created with derived=true")
		}
		if r.KEK.LocalKeysetFile != "" {
			fail("kek.localKeysetFile", "is not used with kek.provider transit: remove it")
		}
	}
}

// typedVaultAuth checks vault.auth for its method: which files it needs, which it does not
// use, and that every file is an absolute path.
func typedVaultAuth(a *vault.AuthConfig, address string, fail func(field, format string, args ...any)) {
	files := map[string]*string{}
	need := func(field string, v *string, what string) {
		if *v == "" {
			fail("vault.auth."+field, "is required with method %s: %s", a.Method, what)
		}
		if field != "role" {
			files[field] = v
		}
	}
	unused := func(field, v string) {
		if v != "" {
			fail("vault.auth."+field, "is not used with method %s: remove it", a.Method)
		}
	}
	switch a.Method {
	case vault.MethodKubernetes, vault.MethodJWT:
		a.TokenFile = or(a.TokenFile, defaultVaultTokenFile)
		need("role", &a.Role, "the Vault role the daemon logs in as")
		need("tokenFile", &a.TokenFile, "the daemon's projected service-account token")
		unused("roleIDFile", a.RoleIDFile)
		unused("secretIDFile", a.SecretIDFile)
		unused("clientCertFile", a.ClientCertFile)
		unused("clientKeyFile", a.ClientKeyFile)
	case vault.MethodAppRole:
		need("roleIDFile", &a.RoleIDFile, "a file holding the AppRole role ID")
		need("secretIDFile", &a.SecretIDFile, "a file holding the secret ID (or, with secretIDWrapped, a wrapping token)")
		unused("role", a.Role)
		unused("tokenFile", a.TokenFile)
		unused("clientCertFile", a.ClientCertFile)
		unused("clientKeyFile", a.ClientKeyFile)
	case vault.MethodCert:
		need("clientCertFile", &a.ClientCertFile, "the PEM client certificate presented to Vault")
		need("clientKeyFile", &a.ClientKeyFile, "its PEM private key")
		unused("tokenFile", a.TokenFile)
		unused("roleIDFile", a.RoleIDFile)
		unused("secretIDFile", a.SecretIDFile)
		if u, err := url.Parse(address); err == nil && u.Scheme != "https" {
			fail("vault.auth.method", "cert needs an https vault.address (the client certificate is a TLS credential); got %q", address)
		}
	default:
		fail("vault.auth.method", "want kubernetes, jwt, approle or cert; got %q", a.Method)
		return
	}
	if a.SecretIDWrapped && a.Method != vault.MethodAppRole {
		fail("vault.auth.secretIDWrapped", "is only used with method approle")
	}
	for _, field := range slices.Sorted(maps.Keys(files)) {
		if v := *files[field]; v != "" && !filepath.IsAbs(v) {
			fail("vault.auth."+field, "must be an absolute path; got %q", v)
		}
	}
}

// loadKEK returns the key-encryption key the stores are opened with: the local keyset file,
// or a Vault Transit key (then Vault must answer at start: the stores cannot be opened
// without it). The Transit KEK has its own Vault login, kept fresh by a runner.
func (d *daemon) loadKEK(ctx context.Context) (tink.AEAD, error) {
	if d.cfg.KEK.Provider != kekTransit {
		kek, err := crypto.LoadOrCreateLocalKEK(d.cfg.KEK.File)
		if err != nil {
			return nil, fmt.Errorf("load key-encryption key: %w", err)
		}
		return kek, nil
	}
	vc := *d.cfg.Vault
	vc.Logger = d.log.With(slog.String("component", "vault-kek"))
	src, err := vault.New(vc)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := src.CheckNamespaces(lctx); errors.Is(err, vault.ErrNamespaceUnsupported) {
		return nil, fmt.Errorf("vault.namespace: %w", err)
	}
	if err := src.Login(lctx); err != nil {
		return nil, fmt.Errorf("kek.provider transit: log in to Vault at %s: %w (the encrypted stores cannot be opened without Vault)", vc.Address, err)
	}
	tc := d.cfg.KEK.Transit
	tc.Client = src.Client()
	kek, err := crypto.NewTransitKEK(lctx, tc)
	if err != nil {
		return nil, fmt.Errorf("kek.provider transit: %w", err)
	}
	// Prove the key works before a store is opened with it, so an outage is reported as
	// such and not as a corrupt store.
	probe := []byte("keywarden/kek-probe/v1")
	ct, err := kek.Encrypt(probe, probe)
	if err == nil {
		_, err = kek.Decrypt(ct, probe)
	}
	if err != nil {
		return nil, fmt.Errorf("kek.provider transit: %w", err)
	}
	d.runners = append(d.runners, src.Run)
	return kek, nil
}

// addVaultSource registers the Vault source as "vault" when configured. Its leases live in
// the node store (sealed); its metrics go to the daemon's registry.
func (d *daemon) addVaultSource(ctx context.Context, sources map[string]source.Source) error {
	if d.cfg.Vault == nil {
		return nil
	}
	vc := *d.cfg.Vault
	vc.Logger = d.log.With(slog.String("component", "vault"))
	vc.MaxBackoff = retryBackoffCap(d.cfg.Rotation.PollInterval)
	vc.Leases = d.node
	vc.Registerer = d.metrics
	src, err := vault.New(vc)
	if err != nil {
		return err
	}
	if err := checkNamespaces(ctx, src, vc.Logger); err != nil {
		return err
	}
	err = vault.RegisterStaleGauge(d.metrics, func() float64 {
		if d.engine == nil {
			return 0
		}
		n := 0
		for _, st := range d.engine.Status() {
			if st.Ref.Source == broker.VaultSourceName && st.Stale {
				n++
			}
		}
		return float64(n)
	})
	if err != nil {
		return err
	}
	sources[broker.VaultSourceName] = src
	d.runners = append(d.runners, src.Run)
	return nil
}

// checkNamespaces stops the daemon when a namespace is configured and Vault answers that it
// is not Vault Enterprise: its open-source edition would ignore the namespace. A Vault that
// does not answer is not a reason to stop (the source checks again before its first login).
func checkNamespaces(ctx context.Context, src *vault.Source, log *slog.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := src.CheckNamespaces(cctx)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, vault.ErrNamespaceUnsupported):
		return fmt.Errorf("vault.namespace / vault.auth.namespace: %w: remove the namespace or point vault.address at Vault Enterprise", err)
	default:
		log.Warn("could not ask vault whether it supports namespaces; checking again before the first login", slog.String("error", err.Error()))
		return nil
	}
}

var _ prometheus.Registerer = (*prometheus.Registry)(nil)

// retryBackoffCap bounds every retry backoff after a Vault failure by the poll interval (at
// least 1s, at most the packages' default 1m): the Vault source's login and overload backoff,
// the cache's refresh backoff and each volume's rotation backoff. During an outage the node
// tries Vault no more often than it polls when healthy (the Vault source's token bucket and
// its pause on 429/503 still bound the rate), and the first poll after Vault returns finds
// it logged in and every value refreshed. With the default cap a long outage, which outlives
// the daemon's Vault token, delayed recovery by up to a minute (66 s measured after 10
// minutes, 1 s poll), and two minutes of a Vault failing 60% of its answers delayed a
// volume's next value by 60 s.
func retryBackoffCap(poll time.Duration) time.Duration {
	if poll <= 0 {
		return 0 // the source's default
	}
	return min(max(poll, time.Second), time.Minute)
}
