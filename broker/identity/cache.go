package identity

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"
)

// TokenVerifier verifies a token; *Verifier implements it.
type TokenVerifier interface {
	Verify(ctx context.Context, tok Token) (Workload, error)
}

var _ TokenVerifier = (*Verifier)(nil)

// CacheConfig configures a CachingVerifier.
type CacheConfig struct {
	// Verifier does the real verification. Required.
	Verifier TokenVerifier
	// TTL bounds how long a success is reused; a result never outlives the token's exp.
	// Default 1m. After it, a success still answers for its token, until the token's exp, when
	// the verifier is unavailable (ErrUnavailable).
	TTL time.Duration
	// NegativeTTL is how long a rejection is reused, so a flood of one bad token costs one
	// verification. Default 5s. Unavailable results are never cached.
	NegativeTTL time.Duration
	// MaxEntries bounds memory. Default 10,000.
	MaxEntries int
	// Clock gives the current time. Default the real clock.
	Clock clock.PassiveClock
	// Metrics counts cache hits; nil disables them.
	Metrics *Metrics
}

// CachingVerifier remembers verification results, keyed by an HMAC of the token under a
// per-process random key: the raw token is never kept, and the keys are useless outside this
// process. Concurrent verifications of one token share one call.
type CachingVerifier struct {
	cfg CacheConfig
	key []byte
	sf  singleflight.Group
	// macs pools *digester: a keyed HMAC and a scratch buffer for the token, so a cache hit
	// allocates neither (hmac.New and the token's copy were the lookup's main allocations).
	macs sync.Pool

	mu      sync.Mutex
	entries map[[sha256.Size]byte]cacheEntry
}

type cacheEntry struct {
	w       Workload
	err     error
	expires time.Time
	// until is how long a success may stand in for a verification that cannot be done (the
	// apiserver unreachable in TokenReview mode): the token's exp.
	until time.Time
}

// NewCachingVerifier returns a CachingVerifier.
func NewCachingVerifier(cfg CacheConfig) (*CachingVerifier, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("identity cache: verifier is required")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = time.Minute
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 5 * time.Second
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 10_000
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("identity cache: %w", err)
	}
	c := &CachingVerifier{cfg: cfg, key: key, entries: map[[sha256.Size]byte]cacheEntry{}}
	c.macs.New = func() any { return &digester{mac: hmac.New(sha256.New, c.key)} }
	return c, nil
}

// digester is one pooled HMAC with the buffer the token is copied into for it.
type digester struct {
	mac hash.Hash
	buf []byte
}

func (c *CachingVerifier) digest(tok Token) [sha256.Size]byte {
	d := c.macs.Get().(*digester)
	d.mac.Reset()
	d.buf = append(d.buf[:0], tok.Reveal()...)
	d.mac.Write(d.buf)
	clear(d.buf) // no copy of a token outlives the call in the pool
	var out [sha256.Size]byte
	d.mac.Sum(out[:0])
	c.macs.Put(d)
	return out
}

// Verify implements TokenVerifier.
func (c *CachingVerifier) Verify(ctx context.Context, tok Token) (Workload, error) {
	if len(tok.Reveal()) > DefaultMaxTokenSize*4 {
		// Not worth hashing; the verifier rejects it before parsing anyway.
		return c.cfg.Verifier.Verify(ctx, tok)
	}
	d := c.digest(tok)
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	e, ok := c.entries[d]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		c.cfg.Metrics.cacheHit()
		return copyWorkload(e.w), e.err
	}
	// The shared call runs detached from any one caller, so a caller that gives up does not
	// fail the others waiting for the same token; each waiter still honours its own ctx.
	ch := c.sf.DoChan(string(d[:]), func() (any, error) {
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), verifyTimeout)
		defer cancel()
		w, err := c.cfg.Verifier.Verify(vctx, tok)
		c.store(d, w, err)
		return w, err
	})
	select {
	case <-ctx.Done():
		return Workload{}, errors.Join(ErrUnavailable, ctx.Err())
	case r := <-ch:
		w, _ := r.Val.(Workload)
		if r.Err != nil && errors.Is(r.Err, ErrUnavailable) && ok && e.err == nil && c.cfg.Clock.Now().Before(e.until) {
			// Nothing can be checked while the verifier is unreachable, and an identity
			// verified before stays valid until its token's exp, as it does with cached keys
			// in JWT mode. It is verified again on the first call that can reach it.
			c.cfg.Metrics.cacheHit()
			return copyWorkload(e.w), nil
		}
		return copyWorkload(w), r.Err
	}
}

// verifyTimeout bounds one shared verification (a TokenReview or a JWKS fetch inside it).
const verifyTimeout = 15 * time.Second

func (c *CachingVerifier) store(d [sha256.Size]byte, w Workload, err error) {
	now := c.cfg.Clock.Now()
	var e cacheEntry
	switch {
	case err == nil:
		e = cacheEntry{w: w, expires: now.Add(c.cfg.TTL), until: w.ExpiresAt}
		if !w.ExpiresAt.IsZero() && w.ExpiresAt.Before(e.expires) {
			e.expires = w.ExpiresAt
		}
		if e.until.Before(e.expires) {
			e.until = e.expires
		}
	case errors.Is(err, ErrInvalidToken):
		e = cacheEntry{err: err, expires: now.Add(c.cfg.NegativeTTL)}
	default:
		return // unavailable or cancelled: try again next time
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.cfg.MaxEntries {
		for k, old := range c.entries {
			if !now.Before(old.expires) && !now.Before(old.until) {
				delete(c.entries, k)
			}
		}
		// Still full of live entries: drop arbitrary ones (map order) rather than grow.
		for k := range c.entries {
			if len(c.entries) < c.cfg.MaxEntries {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[d] = e
}

// Len reports the number of cached results.
func (c *CachingVerifier) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func copyWorkload(w Workload) Workload {
	w.Audiences = slices.Clone(w.Audiences)
	return w
}

// Measured wraps v so that every verification is counted by result and reason.
func Measured(v TokenVerifier, m *Metrics) TokenVerifier {
	if m == nil {
		return v
	}
	return measured{v: v, m: m}
}

type measured struct {
	v TokenVerifier
	m *Metrics
}

func (m measured) Verify(ctx context.Context, tok Token) (Workload, error) {
	w, err := m.v.Verify(ctx, tok)
	m.m.verification(err)
	return w, err
}
