package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// maxJWTFile bounds the projected token file read before each login.
const maxJWTFile = 16 << 10

// Auth methods.
const (
	MethodKubernetes = "kubernetes"
	MethodJWT        = "jwt"
)

// AuthConfig says how the daemon logs in to Vault. Nothing in it is secret: the credential is
// the projected service-account token that kubelet keeps rotating in TokenFile.
type AuthConfig struct {
	// Method is "kubernetes" or "jwt". Required.
	Method string
	// Mount is the auth method's mount path; defaults to Method.
	Mount string
	// Role is the Vault role to log in as. Required.
	Role string
	// TokenFile is the daemon's projected service-account token, re-read before every login.
	// Required.
	TokenFile string
	// Namespace is where the auth method is mounted and the daemon's token lives (login,
	// token renewal and lookup); defaults to Config.Namespace.
	Namespace string
}

func (c *AuthConfig) validate() error {
	switch c.Method {
	case MethodKubernetes, MethodJWT:
	default:
		return fmt.Errorf("auth method must be %q or %q, got %q", MethodKubernetes, MethodJWT, c.Method)
	}
	if c.Mount == "" {
		c.Mount = c.Method
	}
	if pathProblem(c.Mount) != "" {
		return fmt.Errorf("auth mount %q is not a valid path", c.Mount)
	}
	if c.Role == "" {
		return errors.New("auth role is required")
	}
	if c.TokenFile == "" {
		return errors.New("auth token file is required")
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
	jwt, err := readJWT(a.cfg.TokenFile)
	if err != nil {
		a.s.metrics.requests.WithLabelValues("login", "error").Inc()
		return err
	}
	resp, err := a.s.do(ctx, call{class: "login", method: http.MethodPost, path: "auth/" + a.cfg.Mount + "/login",
		body: map[string]any{"role": a.cfg.Role, "jwt": jwt}, ns: a.cfg.Namespace})
	if err != nil {
		if errors.Is(err, source.ErrForbidden) || errors.Is(err, source.ErrNotFound) {
			// The auth method refused us (wrong role, audience, binding): configuration, not
			// the secret, so it stays "unavailable" for callers.
			return fmt.Errorf("%w: login refused: %w", source.ErrUnavailable, err)
		}
		return err
	}
	if resp.Auth == nil || resp.Auth.ClientToken == "" {
		return fmt.Errorf("%w: vault login answered without a token", source.ErrUnavailable)
	}
	a.set(vaultToken(resp.Auth.ClientToken), time.Duration(resp.Auth.LeaseDuration)*time.Second, resp.Auth.Renewable, true)
	a.s.log.Info("logged in to vault", slog.String("method", a.cfg.Method), slog.String("role", a.cfg.Role),
		slog.Duration("ttl", time.Duration(resp.Auth.LeaseDuration)*time.Second), slog.Bool("renewable", resp.Auth.Renewable))
	return nil
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

func readJWT(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: read vault login token file: %w", source.ErrUnavailable, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJWTFile+1))
	if err != nil {
		return "", fmt.Errorf("%w: read vault login token file: %w", source.ErrUnavailable, err)
	}
	if len(b) > maxJWTFile {
		return "", fmt.Errorf("%w: vault login token file is larger than %d bytes", source.ErrUnavailable, maxJWTFile)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "", fmt.Errorf("%w: vault login token file is empty", source.ErrUnavailable)
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
