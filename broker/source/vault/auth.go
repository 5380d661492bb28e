package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	k8sauth "github.com/hashicorp/vault/api/auth/kubernetes"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// maxJWTFile bounds the projected token file read before each login.
const maxJWTFile = 16 << 10

// Auth methods.
const (
	MethodKubernetes = "kubernetes"
	MethodJWT        = "jwt"
	MethodAppRole    = "approle"
	MethodCert       = "cert"
)

// maxCredentialFile bounds the AppRole role ID and secret ID files.
const maxCredentialFile = 4 << 10

// AuthConfig says how the daemon logs in to Vault. Nothing in it is secret: the credentials
// live in files (the projected service-account token that kubelet keeps rotating, an AppRole
// secret ID, a client key), re-read before every login.
type AuthConfig struct {
	// Method is "kubernetes", "jwt", "approle" or "cert". Required.
	Method string
	// Mount is the auth method's mount path; defaults to Method.
	Mount string
	// Role is the Vault role to log in as: required for kubernetes and jwt, optional for cert
	// (the certificate role's name; empty lets Vault pick any matching role), not used by
	// approle.
	Role string
	// TokenFile is the daemon's projected service-account token (kubernetes, jwt).
	TokenFile string
	// RoleIDFile and SecretIDFile hold the AppRole role ID and secret ID (approle).
	RoleIDFile, SecretIDFile string
	// SecretIDWrapped says SecretIDFile holds a response-wrapping token that wraps the secret
	// ID (approle): it is unwrapped at the first login, and the secret ID kept in memory for
	// later logins until the file holds another wrapping token.
	SecretIDWrapped bool
	// ClientCertFile and ClientKeyFile are the PEM client certificate and key presented on
	// every TLS connection to Vault (cert; the address must be https).
	ClientCertFile, ClientKeyFile string
	// Namespace is where the auth method is mounted and the daemon's token lives (login,
	// token renewal and lookup); defaults to Config.Namespace.
	Namespace string
}

func (c *AuthConfig) validate() error {
	need := func(v, what string) error {
		if v == "" {
			return fmt.Errorf("auth %s is required with method %s", what, c.Method)
		}
		return nil
	}
	unused := func(v, what string) error {
		if v != "" {
			return fmt.Errorf("auth %s is not used with method %s", what, c.Method)
		}
		return nil
	}
	var errs []error
	switch c.Method {
	case MethodKubernetes, MethodJWT:
		errs = append(errs, need(c.Role, "role"), need(c.TokenFile, "token file"), unused(c.RoleIDFile, "role ID file"),
			unused(c.SecretIDFile, "secret ID file"), unused(c.ClientCertFile, "client certificate file"))
	case MethodAppRole:
		errs = append(errs, need(c.RoleIDFile, "role ID file"), need(c.SecretIDFile, "secret ID file"), unused(c.Role, "role (the role ID file names the role)"),
			unused(c.TokenFile, "token file"), unused(c.ClientCertFile, "client certificate file"))
	case MethodCert:
		errs = append(errs, need(c.ClientCertFile, "client certificate file"), need(c.ClientKeyFile, "client key file"),
			unused(c.TokenFile, "token file"), unused(c.RoleIDFile, "role ID file"), unused(c.SecretIDFile, "secret ID file"))
	default:
		return fmt.Errorf("auth method must be %q, %q, %q or %q, got %q", MethodKubernetes, MethodJWT, MethodAppRole, MethodCert, c.Method)
	}
	if c.Method != MethodAppRole && c.SecretIDWrapped {
		errs = append(errs, fmt.Errorf("auth secret ID wrapping is only used with method %s", MethodAppRole))
	}
	if c.Method != MethodCert && c.ClientKeyFile != "" {
		errs = append(errs, fmt.Errorf("auth client key file is not used with method %s", c.Method))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if c.Mount == "" {
		c.Mount = c.Method
	}
	if pathProblem(c.Mount) != "" {
		return fmt.Errorf("auth mount %q is not a valid path", c.Mount)
	}
	if c.Role != "" && !vaultref.ValidRole(c.Role) {
		return errors.New("auth role must be a single name of printable ASCII")
	}
	if c.Namespace != "" {
		if d := vaultref.NamespaceProblem(c.Namespace); d != "" {
			return fmt.Errorf("auth namespace %s", d)
		}
	}
	return nil
}

// vaultToken is the daemon's Vault token. It redacts itself everywhere.
type vaultToken string

func (vaultToken) String() string               { return "[REDACTED]" }
func (vaultToken) GoString() string             { return "[REDACTED]" }
func (vaultToken) LogValue() slog.Value         { return slog.StringValue("[REDACTED]") }
func (t vaultToken) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("[REDACTED]")) }

// auth holds the daemon's Vault token and replaces it when it expires or is revoked.
type auth struct {
	s   *Source
	cfg AuthConfig

	loginMu sync.Mutex // one login at a time

	mu        sync.Mutex
	token     vaultToken
	ttl       time.Duration // as granted by the last login or renewal
	expiresAt time.Time
	renewable bool
	loggedAt  time.Time
	failures  int
	nextTry   time.Time
	changed   chan struct{} // closed and replaced on every new token or invalidation
	// The AppRole secret ID unwrapped from the wrapping token whose SHA-256 is wrapSum.
	wrapSum   [32]byte
	unwrapped vaultToken
}

func newAuth(s *Source, cfg AuthConfig) *auth {
	return &auth{s: s, cfg: cfg, changed: make(chan struct{})}
}

// current returns the token when it is valid for at least a moment longer.
func (a *auth) current() (vaultToken, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.token == "" || !a.s.clock.Now().Before(a.expiresAt) {
		return "", false
	}
	return a.token, true
}

// get returns a valid token, logging in first when there is none.
func (a *auth) get(ctx context.Context) (vaultToken, error) {
	if t, ok := a.current(); ok {
		return t, nil
	}
	if err := a.login(ctx, ""); err != nil {
		return "", err
	}
	if t, ok := a.current(); ok {
		return t, nil
	}
	return "", fmt.Errorf("%w: %w", source.ErrUnavailable, ErrNotLoggedIn)
}

// login logs in unless another login already replaced stale (the token the caller saw fail);
// pass "" to log in whenever there is no valid token. Failed logins back off.
func (a *auth) login(ctx context.Context, stale vaultToken) error {
	a.loginMu.Lock()
	defer a.loginMu.Unlock()
	a.mu.Lock()
	now := a.s.clock.Now()
	if a.token != "" && a.token != stale && now.Before(a.expiresAt) {
		a.mu.Unlock()
		return nil // someone else logged in meanwhile
	}
	if now.Before(a.nextTry) {
		a.mu.Unlock()
		return fmt.Errorf("%w: %w (retrying in %s)", source.ErrUnavailable, ErrNotLoggedIn, a.nextTry.Sub(now).Round(time.Millisecond))
	}
	a.mu.Unlock()

	err := a.doLogin(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.failures++
		a.nextTry = a.s.clock.Now().Add(backoff(a.s.cfg.MinBackoff, a.s.cfg.MaxBackoff, a.failures))
		a.s.log.Error("vault login failed", slog.String("method", a.cfg.Method), slog.String("mount", a.cfg.Mount),
			slog.String("role", a.cfg.Role), slog.String("error", err.Error()), slog.Int("failures", a.failures))
		return fmt.Errorf("%w: %w", ErrNotLoggedIn, err)
	}
	a.failures = 0
	a.nextTry = time.Time{}
	return nil
}

func (a *auth) doLogin(ctx context.Context) error {
	if a.cfg.Namespace != "" {
		if err := a.s.requireNamespaces(ctx); err != nil {
			return err
		}
	}
	m, err := a.method(ctx)
	if err != nil {
		a.s.metrics.requests.WithLabelValues("login", "error").Inc()
		return err
	}
	sec, err := a.s.login(ctx, "login", m)
	if err != nil {
		if errors.Is(err, source.ErrForbidden) || errors.Is(err, source.ErrNotFound) {
			// The auth method refused us (wrong role, audience, binding, secret ID, certificate):
			// configuration, not the secret, so it stays "unavailable" for callers.
			return fmt.Errorf("%w: login refused: %w", source.ErrUnavailable, err)
		}
		return err
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return fmt.Errorf("%w: vault login answered without a token", source.ErrUnavailable)
	}
	ttl := int64(sec.Auth.LeaseDuration)
	if !saneLeaseSeconds(ttl) {
		return &callError{kind: source.ErrUnavailable, class: "login", reason: "lease duration out of range"}
	}
	a.set(vaultToken(sec.Auth.ClientToken), time.Duration(ttl)*time.Second, sec.Auth.Renewable, true)
	a.s.log.Info("logged in to vault", slog.String("method", a.cfg.Method), slog.String("role", a.cfg.Role),
		slog.Duration("ttl", time.Duration(ttl)*time.Second), slog.Bool("renewable", sec.Auth.Renewable))
	return nil
}

// method builds the login of the configured method from freshly read credentials.
// Kubernetes and AppRole use vault/api's maintained auth packages; jwt and cert have none,
// and write to auth/<mount>/login directly (cert presents the client certificate that every
// connection to Vault carries: see newHTTPClient).
func (a *auth) method(ctx context.Context) (api.AuthMethod, error) {
	switch a.cfg.Method {
	case MethodKubernetes:
		jwt, err := readCredential(a.cfg.TokenFile, maxJWTFile, "login token")
		if err != nil {
			return nil, err
		}
		return k8sauth.NewKubernetesAuth(a.cfg.Role, k8sauth.WithServiceAccountToken(jwt), k8sauth.WithMountPath(a.cfg.Mount))
	case MethodJWT:
		jwt, err := readCredential(a.cfg.TokenFile, maxJWTFile, "login token")
		if err != nil {
			return nil, err
		}
		return loginWrite{path: "auth/" + a.cfg.Mount + "/login", data: map[string]any{"role": a.cfg.Role, "jwt": jwt}}, nil
	case MethodAppRole:
		roleID, err := readCredential(a.cfg.RoleIDFile, maxCredentialFile, "approle role ID")
		if err != nil {
			return nil, err
		}
		secretID, err := a.secretID(ctx)
		if err != nil {
			return nil, err
		}
		return approle.NewAppRoleAuth(roleID, &approle.SecretID{FromString: secretID}, approle.WithMountPath(a.cfg.Mount))
	default: // MethodCert
		data := map[string]any{}
		if a.cfg.Role != "" {
			data["name"] = a.cfg.Role
		}
		return loginWrite{path: "auth/" + a.cfg.Mount + "/login", data: data}, nil
	}
}

// secretID reads the AppRole secret ID. A response-wrapped one is unwrapped once per
// wrapping token (it is single-use): later logins reuse the secret ID kept in memory while
// the file still holds the same token.
func (a *auth) secretID(ctx context.Context) (string, error) {
	raw, err := readCredential(a.cfg.SecretIDFile, maxCredentialFile, "approle secret ID")
	if err != nil || !a.cfg.SecretIDWrapped {
		return raw, err
	}
	sum := sha256.Sum256([]byte(raw))
	a.mu.Lock()
	if a.wrapSum == sum && a.unwrapped != "" {
		id := a.unwrapped
		a.mu.Unlock()
		return string(id), nil
	}
	a.mu.Unlock()
	sec, err := a.s.login(ctx, "unwrap", unwrap{token: raw})
	if err != nil {
		// Not the secret's absence: a used or expired wrapping token is configuration.
		return "", fmt.Errorf("%w: unwrap approle secret ID (a wrapping token is single-use: place a fresh one): %s", source.ErrUnavailable, err)
	}
	var id string
	if sec != nil {
		id, _ = sec.Data["secret_id"].(string)
	}
	if id == "" {
		return "", fmt.Errorf("%w: unwrap approle secret ID: the wrapped answer holds no secret_id", source.ErrUnavailable)
	}
	a.mu.Lock()
	a.wrapSum, a.unwrapped = sum, vaultToken(id)
	a.mu.Unlock()
	return id, nil
}

// loginWrite is a login by a write to path, for the methods without a maintained package.
type loginWrite struct {
	path string
	data map[string]any
}

func (l loginWrite) Login(ctx context.Context, c *api.Client) (*api.Secret, error) {
	return c.Logical().WriteWithContext(ctx, l.path, l.data)
}

// unwrap unwraps a response-wrapping token (sys/wrapping/unwrap, authenticated by the token).
type unwrap struct{ token string }

func (u unwrap) Login(ctx context.Context, c *api.Client) (*api.Secret, error) {
	return c.Logical().UnwrapWithContext(ctx, u.token)
}

// set records a new token (or a renewed TTL) and wakes the renewal loop.
func (a *auth) set(tok vaultToken, ttl time.Duration, renewable, fresh bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ttl <= 0 {
		// Root-like tokens never expire; re-check now and then anyway.
		ttl = 24 * time.Hour
	}
	now := a.s.clock.Now()
	a.token, a.ttl, a.renewable = tok, ttl, renewable
	a.expiresAt = now.Add(ttl)
	if fresh {
		a.loggedAt = now
		// The client's own token is used by the Transit KEK.
		a.s.shared.SetToken(string(tok))
	}
	close(a.changed)
	a.changed = make(chan struct{})
}

// invalidate drops tok if it is still the current token, so the next call logs in again.
func (a *auth) invalidate(tok vaultToken) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.token == tok {
		a.token = ""
		close(a.changed)
		a.changed = make(chan struct{})
	}
}

// readCredential reads a credential file of at most limit bytes, trimmed of white space.
// Errors name the file's purpose, never its content.
func readCredential(path string, limit int64, what string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: read vault %s file: %w", source.ErrUnavailable, what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return "", fmt.Errorf("%w: read vault %s file: %w", source.ErrUnavailable, what, err)
	}
	if int64(len(b)) > limit {
		return "", fmt.Errorf("%w: vault %s file is larger than %d bytes", source.ErrUnavailable, what, limit)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "", fmt.Errorf("%w: vault %s file is empty", source.ErrUnavailable, what)
	}
	return string(b), nil
}

// run keeps the token valid: it renews at ⅔ of the TTL (plus jitter) and logs in again when
// renewal fails, the token cannot be renewed, or renewal was capped by the token's max TTL.
func (a *auth) run(ctx context.Context) {
	for {
		a.mu.Lock()
		tok, ttl, exp, renewable, changed, nextTry := a.token, a.ttl, a.expiresAt, a.renewable, a.changed, a.nextTry
		a.mu.Unlock()
		now := a.s.clock.Now()
		var wait time.Duration
		switch {
		case tok == "":
			wait = max(nextTry.Sub(now), 0)
		default:
			at := exp.Add(-ttl / 3).Add(-jitter(ttl / 20))
			// After a failed renewal and login, wait for the login backoff.
			wait = max(at.Sub(now), nextTry.Sub(now), 0)
		}
		t := a.s.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
			t.Stop()
			continue
		case <-t.C():
		}
		bctx := source.Background(ctx)
		if tok == "" || !renewable {
			_ = a.login(bctx, tok)
			continue
		}
		a.renew(bctx, tok, ttl)
	}
}

func (a *auth) renew(ctx context.Context, tok vaultToken, ttl time.Duration) {
	resp, err := a.s.do(ctx, call{class: "token-renew", method: http.MethodPost, path: "auth/token/renew-self",
		body: map[string]any{"increment": int64(ttl / time.Second)}, token: string(tok), ns: a.cfg.Namespace})
	if err == nil && resp.Auth != nil {
		got := time.Duration(resp.Auth.LeaseDuration) * time.Second
		if got >= ttl-time.Second {
			a.set(tok, got, resp.Auth.Renewable, false)
			return
		}
		// Capped by the token's max TTL: keep it until a fresh login replaces it.
		a.mu.Lock()
		a.expiresAt = a.s.clock.Now().Add(got)
		a.mu.Unlock()
	}
	if err != nil && !errors.Is(err, source.ErrForbidden) {
		a.s.log.Warn("vault token renewal failed; logging in again", slog.String("error", err.Error()))
	}
	_ = a.login(ctx, tok)
}
