package vault

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker/source"
)

// gate is the per-Vault backpressure: at most limit requests in flight, foreground waiters
// served before background ones, a token bucket, and a pause of background requests after Vault
// said 429 or 503 (so recovering Vault is not hit by every cached secret at once).
type gate struct {
	clock   clock.PassiveClock
	limiter *rate.Limiter
	minBack time.Duration
	maxBack time.Duration

	mu        sync.Mutex
	limit     int
	inUse     int
	fg, bg    []chan struct{}
	holdUntil time.Time
	overloads int
}

func newGate(c clock.PassiveClock, limit int, rps float64, burst int, minBack, maxBack time.Duration) *gate {
	return &gate{clock: c, limit: limit, limiter: rate.NewLimiter(rate.Limit(rps), burst), minBack: minBack, maxBack: maxBack}
}

// acquire takes a slot. Background callers fail fast while Vault asked to back off.
func (g *gate) acquire(ctx context.Context) error {
	bg := source.IsBackground(ctx)
	g.mu.Lock()
	if bg && g.clock.Now().Before(g.holdUntil) {
		g.mu.Unlock()
		return &callError{kind: source.ErrUnavailable, class: "gate", reason: "backing off after vault overload"}
	}
	if g.inUse < g.limit && len(g.fg) == 0 && (!bg || len(g.bg) == 0) {
		g.inUse++
		g.mu.Unlock()
		return g.wait(ctx)
	}
	ch := make(chan struct{})
	if bg {
		g.bg = append(g.bg, ch)
	} else {
		g.fg = append(g.fg, ch)
	}
	g.mu.Unlock()
	select {
	case <-ch:
		return g.wait(ctx)
	case <-ctx.Done():
		g.mu.Lock()
		removed := remove(&g.fg, ch) || remove(&g.bg, ch)
		g.mu.Unlock()
		if !removed {
			// The slot was handed over while we gave up: pass it on.
			<-ch
			g.release()
		}
		return ctx.Err()
	}
}

func (g *gate) wait(ctx context.Context) error {
	if err := g.limiter.Wait(ctx); err != nil {
		g.release()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: vault request rate limit", source.ErrUnavailable)
	}
	return nil
}

func remove(q *[]chan struct{}, ch chan struct{}) bool {
	for i, c := range *q {
		if c == ch {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return true
		}
	}
	return false
}

// release frees a slot, handing it to a foreground waiter first.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case len(g.fg) > 0:
		ch := g.fg[0]
		g.fg = g.fg[1:]
		close(ch)
	case len(g.bg) > 0:
		ch := g.bg[0]
		g.bg = g.bg[1:]
		close(ch)
	default:
		g.inUse--
	}
}

// overloaded records a 429 or 503: background requests pause for a jittered, growing backoff
// (or Vault's Retry-After, whichever is longer).
func (g *gate) overloaded(retryAfter time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.overloads++
	d := backoff(g.minBack, g.maxBack, g.overloads)
	d = max(d, retryAfter)
	if until := g.clock.Now().Add(d); until.After(g.holdUntil) {
		g.holdUntil = until
	}
}

// healthy resets the backoff after a successful answer.
func (g *gate) healthy() {
	g.mu.Lock()
	g.overloads = 0
	g.mu.Unlock()
}

// stats returns the queued foreground and background waiters and the slots in use.
func (g *gate) stats() (fg, bg, inUse int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.fg), len(g.bg), g.inUse
}

// backoff is a jittered exponential backoff: min·2^(n-1) capped at max, then ±20%.
func backoff(minD, maxD time.Duration, n int) time.Duration {
	d := minD
	for i := 1; i < n && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return d - d/5 + time.Duration(rand.Int64N(int64(2*d/5)+1))
}
