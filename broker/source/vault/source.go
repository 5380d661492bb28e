package vault

import (
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
	"github.com/keywarden/keywarden/broker/store"
)

// Config configures a Source.
type Config struct {
	// Address is Vault's URL, e.g. https://vault.example:8200. Required.
	Address string
	// CACertFile is a PEM bundle of the CAs that may sign Vault's certificate; empty uses the
	// system roots.
	CACertFile string
	// Namespace is the Vault Enterprise namespace of every request (X-Vault-Namespace), e.g.
	// "team-a"; a reference's own namespace (a grant's vault.namespace) replaces it, and
	// Auth.Namespace replaces it for login and the daemon's token. Empty is the root
	// namespace. With any namespace set, a server that is not Enterprise is refused
	// (ErrNamespaceUnsupported).
	Namespace string
	// Auth says how the daemon logs in. Required.
	Auth AuthConfig
	// Leases persists leases and pending revocations (bucket LeaseBucket of the node store);
	// nil keeps them in memory only (a restart then leaves the old leases to expire by
	// themselves).
	Leases *store.DB
	// Logger receives operational events (paths, statuses, lease ids; never tokens, values or
	// Vault's error text). Required.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Clock drives renewals, backoff and expiry. Defaults to the real clock.
	Clock clock.WithTicker

	// MaxConcurrent bounds requests in flight to this Vault. Default 8.
	MaxConcurrent int
	// RequestsPerSecond and Burst set the token bucket. Defaults 50 and 20.
	RequestsPerSecond float64
	Burst             int
	// RequestTimeout bounds one request. Default 10s.
	RequestTimeout time.Duration
	// MaxResponseBytes bounds one response body. Default 1 MiB.
	MaxResponseBytes int64
	// MinBackoff and MaxBackoff bound the jittered backoff of logins and of background
	// requests after 429/503. Defaults 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// LeaseGrace is how long a replaced lease stays valid before it is revoked, so consumers
	// can switch to the new credential. Default 30s; never past the old lease's expiry.
	LeaseGrace time.Duration
	// OrphanGrace is how long a lease restored after a restart waits for a consumer to ask for
	// it again before it is revoked. Default 5m.
	OrphanGrace time.Duration
	// ReapInterval is how often pending revocations and expired records are processed.
	// Default 1s.
	ReapInterval time.Duration
}

// Source reads secrets from Vault. Create it with New and run it with Run.
type Source struct {
	cfg     Config
	stored  leaseBuckets // cfg.Leases: leasestore.go
	log     *slog.Logger
	clock   clock.WithTicker
	client  *api.Client // no token, root namespace; never changed after New
	shared  *api.Client // Client(): the current token and Config.Namespace
	hc      *http.Client
	auth    *auth
	gate    *gate
	metrics *metrics

	refMu   sync.Mutex
	refLock map[string]*refLock // serialises fetches of one reference

	mu         sync.Mutex
	kv         map[string]*kvEntry
	leases     map[string]*lease         // by reference
	revokes    map[string]*pendingRevoke // by lease id
	metaDenied map[string]time.Time      // kv-v2 mounts whose metadata the daemon may not read → retry after
	maxTTL     map[string]time.Duration  // learnt max_ttl by issue path (e.g. database/creds/app)
	down       bool                      // last answer was "unavailable" (for logging transitions)
	enterprise int8                      // from sys/health: 0 not asked yet, 1 Enterprise, -1 not
	released   releases                  // leases given up by their consumers: lease.go
	kick       chan struct{}             // wakes Run's reaper after a Release
	startedAt  time.Time
	versionKey []byte // HMAC key of content versions; never leaves the process
}

type refLock struct {
	mu    sync.Mutex
	users int
}

var _ source.Source = (*Source)(nil)

// New returns a Source. It does not contact Vault: Login or the first Fetch does.
func New(cfg Config) (*Source, error) {
	u, err := url.Parse(cfg.Address)
	switch {
	case cfg.Address == "":
		return nil, errors.New("vault source: address is required")
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		return nil, fmt.Errorf("vault source: address %q must be an http(s) URL", cfg.Address)
	case cfg.Logger == nil:
		return nil, errors.New("vault source: logger is required")
	}
	if cfg.Namespace != "" {
		if d := vaultref.NamespaceProblem(cfg.Namespace); d != "" {
			return nil, fmt.Errorf("vault source: namespace %s", d)
		}
	}
	if cfg.Auth.Namespace == "" {
		cfg.Auth.Namespace = cfg.Namespace
	}
	if err := cfg.Auth.validate(); err != nil {
		return nil, fmt.Errorf("vault source: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.RequestTimeout, 10*time.Second)
	def(&cfg.MinBackoff, time.Second)
	def(&cfg.MaxBackoff, time.Minute)
	def(&cfg.LeaseGrace, 30*time.Second)
	def(&cfg.OrphanGrace, 5*time.Minute)
	def(&cfg.ReapInterval, time.Second)
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 8
	}
	if cfg.RequestsPerSecond <= 0 {
		cfg.RequestsPerSecond = 50
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 20
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = 1 << 20
	}
	if cfg.Auth.Method == MethodCert && u.Scheme != "https" {
		return nil, errors.New("vault source: auth method cert needs an https address")
	}
	hc, err := newHTTPClient(cfg.CACertFile, cfg.Auth.ClientCertFile, cfg.Auth.ClientKeyFile, cfg.MaxResponseBytes, cfg.RequestTimeout)
	if err != nil {
		return nil, fmt.Errorf("vault source: %w", err)
	}
	c, err := newAPIClient(cfg, hc, "")
	if err != nil {
		return nil, fmt.Errorf("vault source: client: %w", err)
	}
	// The shared client (Client(), for the Transit KEK) is another one: roundTrip copies c
	// for each request's namespace, so c is never changed after this point.
	shared, err := newAPIClient(cfg, hc, cfg.Namespace)
	if err != nil {
		return nil, fmt.Errorf("vault source: client: %w", err)
	}
	s := &Source{
		cfg: cfg, log: cfg.Logger, clock: cfg.Clock, client: c, shared: shared, hc: hc,
		gate:    newGate(cfg.Clock, cfg.MaxConcurrent, cfg.RequestsPerSecond, cfg.Burst, cfg.MinBackoff, cfg.MaxBackoff),
		refLock: map[string]*refLock{}, kv: map[string]*kvEntry{}, leases: map[string]*lease{},
		revokes: map[string]*pendingRevoke{}, released: releases{at: map[string]releaseMark{}}, kick: make(chan struct{}, 1), metaDenied: map[string]time.Time{}, maxTTL: map[string]time.Duration{}, startedAt: cfg.Clock.Now(),
		versionKey: make([]byte, 32),
	}
	s.stored.leases = store.NewBucket[lease](cfg.Leases, LeaseBucket).Prefix("lease/")
	s.stored.revokes = store.NewBucket[pendingRevoke](cfg.Leases, LeaseBucket).Prefix("revoke/")
	if _, err := cryptorand.Read(s.versionKey); err != nil {
		return nil, fmt.Errorf("vault source: %w", err)
	}
	s.auth = newAuth(s, cfg.Auth)
	if s.metrics, err = newMetrics(cfg.Registerer, s); err != nil {
		return nil, fmt.Errorf("vault source: %w", err)
	}
	if err := s.restore(); err != nil {
		return nil, fmt.Errorf("vault source: %w", err)
	}
	return s, nil
}

// Client is the Vault client, carrying the daemon's current token once logged in (for the
// Transit KEK). Do not change its token.
func (s *Source) Client() *api.Client { return s.shared }

// newAPIClient returns a vault/api client on hc in namespace ns.
func newAPIClient(cfg Config, hc *http.Client, ns string) (*api.Client, error) {
	// MaxRetries 0: retries and backoff are ours, on the injected clock.
	c, err := api.NewClient(&api.Config{Address: cfg.Address, HttpClient: hc, MaxRetries: 0, Timeout: cfg.RequestTimeout})
	if err != nil {
		return nil, err
	}
	// vault/api reads VAULT_TOKEN, VAULT_NAMESPACE and VAULT_HEADERS from the environment:
	// nothing static may authenticate the daemon, so drop whatever it picked up.
	c.ClearToken()
	c.ClearNamespace()
	c.SetHeaders(http.Header{api.RequestHeaderName: []string{"true"}})
	// VAULT_WRAP_TTL would have every answer response-wrapped.
	c.SetWrappingLookupFunc(noWrapping)
	if ns != "" {
		c.SetNamespace(ns)
	}
	return c, nil
}

// Login logs in now (for a caller that needs Vault before anything else, like the Transit
// KEK at start-up).
func (s *Source) Login(ctx context.Context) error {
	_, err := s.auth.get(ctx)
	return err
}

// Run renews the Vault token, revokes replaced and orphaned leases when due, and forgets
// expired records, until ctx is done.
func (s *Source) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.auth.run(ctx)
	}()
	t := s.clock.NewTicker(s.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			s.reap(source.Background(ctx))
		case <-s.kick:
			s.reap(source.Background(ctx))
		}
	}
}

// Fetch implements source.Source. path is a vaultref string.
func (s *Source) Fetch(ctx context.Context, path string) (*source.Secret, error) {
	spec, err := vaultref.Parse(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", source.ErrInvalidRef, err)
	}
	if spec.Namespace != "" {
		if err := s.requireNamespaces(ctx); err != nil {
			return nil, err
		}
	}
	unlock := s.lockRef(path)
	defer unlock()
	var sec *source.Secret
	switch spec.Engine {
	case vaultref.KVv2:
		sec, err = s.fetchKVv2(ctx, path, spec)
	case vaultref.KVv1:
		sec, err = s.fetchKVv1(ctx, path, spec)
	case vaultref.PKI:
		sec, err = s.fetchPKI(ctx, spec)
	default:
		sec, err = s.fetchLeased(ctx, path, spec)
	}
	if err != nil {
		return nil, err
	}
	return sec.Select(spec.Keys)
}

func (s *Source) lockRef(path string) func() {
	s.refMu.Lock()
	l := s.refLock[path]
	if l == nil {
		l = &refLock{}
		s.refLock[path] = l
	}
	l.users++
	s.refMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.refMu.Lock()
		if l.users--; l.users == 0 {
			delete(s.refLock, path)
		}
		s.refMu.Unlock()
	}
}

// nsOf is the namespace of the requests for spec: its own, else the daemon-wide one.
func (s *Source) nsOf(spec vaultref.Spec) string {
	if spec.Namespace != "" {
		return spec.Namespace
	}
	return s.cfg.Namespace
}

// nsOfRef is nsOf for a stored reference (leases to renew or revoke).
func (s *Source) nsOfRef(ref string) string {
	spec, err := vaultref.Parse(ref)
	if err != nil {
		return s.cfg.Namespace
	}
	return s.nsOf(spec)
}

// healthQuery makes sys/health answer 200 whatever the node's state: only the body matters.
var healthQuery = url.Values{"standbyok": {"true"}, "perfstandbyok": {"true"}, "sealedcode": {"200"},
	"uninitcode": {"200"}, "drsecondarycode": {"200"}, "performancestandbycode": {"200"}, "removedcode": {"200"}}

// CheckNamespaces asks Vault, when Config.Namespace or Auth.Namespace is set, whether it is
// Vault Enterprise, so that a daemon configured with a namespace for an open-source Vault
// stops at start (ErrNamespaceUnsupported) instead of reading the root namespace. Without a
// namespace it does nothing. An unreachable Vault is source.ErrUnavailable: the check then
// happens again before the first login.
func (s *Source) CheckNamespaces(ctx context.Context) error {
	if s.cfg.Namespace == "" && s.cfg.Auth.Namespace == "" {
		return nil
	}
	return s.requireNamespaces(ctx)
}

// requireNamespaces returns nil when the server has namespaces (Vault Enterprise), else
// ErrNamespaceUnsupported (wrapping source.ErrUnavailable: a configuration error, like a
// refused login). It asks sys/health once and remembers a clear answer: its "enterprise"
// field (Vault 1.13 and later), or else the "+ent" suffix of its version.
func (s *Source) requireNamespaces(ctx context.Context) error {
	s.mu.Lock()
	known := s.enterprise
	s.mu.Unlock()
	if known == 0 {
		resp, err := s.send(ctx, call{class: "health", method: http.MethodGet, path: "sys/health", query: healthQuery, root: true})
		if err != nil {
			return err
		}
		known = -1
		if (resp.Enterprise != nil && *resp.Enterprise) || strings.Contains(resp.Version, "+ent") {
			known = 1
		}
		s.mu.Lock()
		s.enterprise = known
		s.mu.Unlock()
		if known < 0 {
			s.log.Error("a vault namespace is configured but the server is not Vault Enterprise; requests in a namespace are refused",
				slog.String("version", resp.Version))
		}
	}
	if known < 0 {
		return fmt.Errorf("%w: %w", source.ErrUnavailable, ErrNamespaceUnsupported)
	}
	return nil
}

func noWrapping(string, string) string { return "" }

// do sends one authenticated (or login) request through the gate. A 403 with a token that a
// lookup says is no longer valid (revoked out of band, expired early) makes it log in again
// and retry once; a 403 with a valid token is the policy's answer (ErrForbidden).
func (s *Source) do(ctx context.Context, c call) (*response, error) {
	var tok vaultToken
	if c.token == "" {
		t, err := s.auth.get(ctx)
		if err != nil {
			s.metrics.requests.WithLabelValues(c.class, "unavailable").Inc()
			return nil, err
		}
		tok = t
		c.token = string(t)
	}
	resp, err := s.send(ctx, c)
	if tok == "" || !errors.Is(err, source.ErrForbidden) {
		return resp, err
	}
	if s.tokenValid(ctx, tok) {
		return nil, err
	}
	s.log.Warn("vault token no longer valid; logging in again")
	s.auth.invalidate(tok)
	if lerr := s.auth.login(ctx, tok); lerr != nil {
		return nil, lerr
	}
	t, ok := s.auth.current()
	if !ok {
		return nil, fmt.Errorf("%w: %w", source.ErrUnavailable, ErrNotLoggedIn)
	}
	c.token = string(t)
	return s.send(ctx, c)
}

// tokenValid asks Vault whether tok still works (lookup-self is allowed by the default policy).
// Anything but a clear 403 counts as valid, so an outage never triggers logins.
func (s *Source) tokenValid(ctx context.Context, tok vaultToken) bool {
	_, err := s.send(ctx, call{class: "token-lookup", method: http.MethodGet, path: "auth/token/lookup-self", token: string(tok), ns: s.cfg.Auth.Namespace})
	return !errors.Is(err, source.ErrForbidden)
}

// send passes the gate, sends c once, and records the outcome.
func (s *Source) send(ctx context.Context, c call) (*response, error) {
	if err := s.gate.acquire(ctx); err != nil {
		s.metrics.requests.WithLabelValues(c.class, result(err)).Inc()
		return nil, err
	}
	start := s.clock.Now()
	resp, err := s.roundTrip(ctx, c)
	s.finish(c.class, start, err)
	return resp, err
}

// login passes the gate and logs in (or unwraps) with m on a fresh client in the auth
// namespace, without a token. Errors are reduced like roundTrip's: Vault's text never kept.
func (s *Source) login(ctx context.Context, class string, m api.AuthMethod) (*api.Secret, error) {
	if err := s.gate.acquire(ctx); err != nil {
		s.metrics.requests.WithLabelValues(class, result(err)).Inc()
		return nil, err
	}
	start := s.clock.Now()
	sec, err := s.loginOnce(ctx, class, m)
	s.finish(class, start, err)
	return sec, err
}

func (s *Source) loginOnce(ctx context.Context, class string, m api.AuthMethod) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	// A fresh client per login: the wrapped secret ID's unwrap sets the client's token.
	c, err := newAPIClient(s.cfg, s.hc, s.cfg.Auth.Namespace)
	if err != nil {
		return nil, &callError{kind: source.ErrUnavailable, class: class, reason: "client"}
	}
	sec, err := m.Login(ctx, c)
	var re *api.ResponseError
	switch {
	case err == nil:
		return sec, nil
	case errors.As(err, &re):
		return nil, statusError(class, re.StatusCode, nil, nil)
	default:
		return nil, transportError(ctx, class, err)
	}
}

// finish records the outcome of one request that passed the gate, and releases it.
func (s *Source) finish(class string, start time.Time, err error) {
	s.metrics.duration.WithLabelValues(class).Observe(s.clock.Since(start).Seconds())
	s.gate.release()
	s.metrics.requests.WithLabelValues(class, result(err)).Inc()
	var ce *callError
	switch {
	case err == nil:
		s.gate.healthy()
		s.setDown(false)
	case errors.As(err, &ce) && (ce.status == http.StatusTooManyRequests || ce.status == http.StatusServiceUnavailable):
		s.gate.overloaded(ce.retryAfter)
		s.setDown(true)
	case errors.Is(err, source.ErrUnavailable):
		s.setDown(true)
	}
}

// setDown logs transitions between reachable and unreachable once each, not per request.
func (s *Source) setDown(down bool) {
	s.mu.Lock()
	changed := s.down != down
	s.down = down
	s.mu.Unlock()
	switch {
	case changed && down:
		s.log.Warn("vault is unavailable; cached secrets are served until they expire, never after")
	case changed:
		s.log.Info("vault is available again")
	}
}

// isDown reports whether the last answer found Vault unavailable.
func (s *Source) isDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down
}

// jitter returns a random duration in [0, d].
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

// pathProblem is vaultref's path check for the auth mount.
func pathProblem(p string) string {
	_, err := vaultref.Spec{Engine: vaultref.KVv1, Mount: p, Path: "x"}.Encode()
	if err != nil {
		return err.Error()
	}
	return ""
}
