package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"
)

// RemoteKeySetConfig configures a RemoteKeySet.
type RemoteKeySetConfig struct {
	// Issuer is the expected `issuer` of the discovery document. Required.
	Issuer string
	// DiscoveryURL is where `/.well-known/openid-configuration` is fetched from; default
	// Issuer. Set it when the issuer URL is not reachable from the node but the apiserver is
	// (the apiserver serves the same document).
	DiscoveryURL string
	// JWKSURL skips discovery and fetches keys from this URL.
	JWKSURL string
	// HTTPClient makes the requests; it carries the CA bundle for the issuer's TLS. Required.
	HTTPClient *http.Client
	// BearerTokenFile, when set, is read before each request and sent as a bearer token
	// (in-cluster, the apiserver may require an authenticated caller for discovery).
	BearerTokenFile string
	// RefreshInterval is how often keys are re-fetched in the background. Default 5m.
	RefreshInterval time.Duration
	// MinRefreshInterval bounds fetches caused by unknown kids, so a flood of made-up kids
	// costs at most one fetch per interval. Default 10s.
	MinRefreshInterval time.Duration
	// Logger receives fetch failures. Required.
	Logger *slog.Logger
	// Clock schedules refreshes. Default the real clock.
	Clock clock.Clock
	// Metrics records fetches; nil disables them.
	Metrics *Metrics
}

// RemoteKeySet fetches the issuer's public keys over HTTPS (OIDC discovery → jwks_uri, or a
// fixed JWKS URL), caches them, refreshes them on a schedule and — rate-limited — when a token
// names an unknown kid. While the issuer is unreachable the cached keys keep working.
type RemoteKeySet struct {
	cfg     RemoteKeySetConfig
	keys    atomic.Pointer[StaticKeySet]
	sf      singleflight.Group
	mu      sync.Mutex
	lastTry time.Time
}

var _ KeySet = (*RemoteKeySet)(nil)

// maxDiscoverySize bounds the discovery document.
const maxDiscoverySize = 64 << 10

// NewRemoteKeySet returns a RemoteKeySet. It does not fetch until the first Key or Run.
func NewRemoteKeySet(cfg RemoteKeySetConfig) (*RemoteKeySet, error) {
	switch {
	case cfg.Issuer == "":
		return nil, errors.New("remote key set: issuer is required")
	case cfg.HTTPClient == nil:
		return nil, errors.New("remote key set: http client is required")
	case cfg.Logger == nil:
		return nil, errors.New("remote key set: logger is required")
	}
	if cfg.DiscoveryURL == "" {
		cfg.DiscoveryURL = cfg.Issuer
	}
	for _, u := range []string{cfg.DiscoveryURL, cfg.JWKSURL} {
		if u == "" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || pu.Scheme != "https" || pu.Host == "" {
			return nil, fmt.Errorf("remote key set: %q must be an https URL", u)
		}
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 5 * time.Minute
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &RemoteKeySet{cfg: cfg}, nil
}

// Key implements KeySet.
func (r *RemoteKeySet) Key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	if ks := r.keys.Load(); ks != nil {
		if k, err := ks.Key(ctx, kid); err == nil {
			return k, nil
		}
	}
	// Unknown kid (or no keys yet): one rate-limited refresh shared by all callers.
	if !r.mayRefresh() {
		if r.keys.Load() == nil {
			return nil, fmt.Errorf("%w: keys not fetched yet", ErrUnavailable)
		}
		return nil, ErrUnknownKey
	}
	_, err, _ := r.sf.Do("refresh", func() (any, error) { return nil, r.refresh(ctx) })
	ks := r.keys.Load()
	if ks == nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return ks.Key(ctx, kid)
}

func (r *RemoteKeySet) mayRefresh() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Clock.Now()
	if !r.lastTry.IsZero() && now.Sub(r.lastTry) < r.cfg.MinRefreshInterval {
		return false
	}
	r.lastTry = now
	return true
}

// Run refreshes the keys every RefreshInterval until ctx is done. A failed refresh keeps
// the cached keys and is retried sooner.
func (r *RemoteKeySet) Run(ctx context.Context) error {
	for {
		next := r.cfg.RefreshInterval
		if err := r.refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.cfg.Logger.Warn("issuer keys not refreshed; verifying with the cached keys", slog.String("issuer", r.cfg.Issuer), slog.Any("error", err))
			next = min(next, 30*time.Second)
		}
		t := r.cfg.Clock.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

func (r *RemoteKeySet) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ks, err := r.fetch(ctx)
	r.cfg.Metrics.jwksRefresh(err)
	if err != nil {
		return err
	}
	r.keys.Store(ks)
	return nil
}

func (r *RemoteKeySet) fetch(ctx context.Context) (*StaticKeySet, error) {
	jwksURL := r.cfg.JWKSURL
	if jwksURL == "" {
		body, err := r.get(ctx, strings.TrimSuffix(r.cfg.DiscoveryURL, "/")+"/.well-known/openid-configuration", maxDiscoverySize)
		if err != nil {
			return nil, fmt.Errorf("oidc discovery: %w", err)
		}
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return nil, errors.New("oidc discovery: invalid document")
		}
		if doc.Issuer != r.cfg.Issuer {
			return nil, errors.New("oidc discovery: the document names another issuer")
		}
		u, err := url.Parse(doc.JWKSURI)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, errors.New("oidc discovery: jwks_uri is not an https URL")
		}
		jwksURL = r.rebase(u)
	}
	body, err := r.get(ctx, jwksURL, maxJWKSSize)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	return ParseJWKS(body)
}

// rebase keeps discovery working when the node reaches the issuer through another address
// (DiscoveryURL differs from Issuer): a jwks_uri on the issuer's host is fetched from the
// discovery host instead.
func (r *RemoteKeySet) rebase(u *url.URL) string {
	iss, err1 := url.Parse(r.cfg.Issuer)
	disc, err2 := url.Parse(r.cfg.DiscoveryURL)
	if err1 == nil && err2 == nil && disc.Host != iss.Host && u.Host == iss.Host {
		u.Host = disc.Host
	}
	return u.String()
}

func (r *RemoteKeySet) trustedHost(host string) bool {
	for _, u := range []string{r.cfg.Issuer, r.cfg.DiscoveryURL, r.cfg.JWKSURL} {
		if pu, err := url.Parse(u); err == nil && u != "" && pu.Host == host {
			return true
		}
	}
	return false
}

func (r *RemoteKeySet) get(ctx context.Context, u string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	// The daemon's own token goes only to the hosts it was configured with, never to
	// whatever host a discovery document names.
	if r.cfg.BearerTokenFile != "" && r.trustedHost(req.URL.Host) {
		tok, err := os.ReadFile(r.cfg.BearerTokenFile)
		if err != nil {
			return nil, fmt.Errorf("read bearer token file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := r.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, errors.New("read failed")
	}
	if int64(len(body)) > limit {
		return nil, errors.New("response too large")
	}
	return body, nil
}
