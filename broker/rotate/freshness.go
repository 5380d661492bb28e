package rotate

import (
	"time"
)

// Freshness summarises the cache for monitoring, without references or values: how many
// secrets are cached, how old the oldest value is, how soon the next one expires, and how
// often refreshes have failed.
type Freshness struct {
	// Cached is the number of entries holding a value.
	Cached int
	// Stale is the number of cached values served after their last refresh failed.
	Stale int
	// OldestAge is the age of the oldest cached value (since it was fetched); 0 when none.
	OldestAge time.Duration
	// MinTimeToExpiry is the shortest time until a cached value expires. ExpiryKnown is false
	// when no cached value has an expiry (static secrets only, or nothing cached).
	MinTimeToExpiry time.Duration
	ExpiryKnown     bool
	// RefreshFailures counts refreshes that failed transiently (the cached value, if any,
	// stays in service), since the engine was created.
	RefreshFailures uint64
}

// Freshness computes the cache summary at the engine clock's current time.
func (e *Engine) Freshness() Freshness {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	f := Freshness{RefreshFailures: e.refreshFailures.Load()}
	for _, en := range e.entries {
		if en.secret == nil {
			continue
		}
		f.Cached++
		if en.stale {
			f.Stale++
		}
		f.OldestAge = max(f.OldestAge, now.Sub(en.fetchedAt))
		if exp := en.secret.ExpiresAt; !exp.IsZero() {
			left := exp.Sub(now)
			if !f.ExpiryKnown || left < f.MinTimeToExpiry {
				f.MinTimeToExpiry = left
			}
			f.ExpiryKnown = true
		}
	}
	return f
}
