package identity

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clocktesting "k8s.io/utils/clock/testing"
)

type countingVerifier struct {
	n   atomic.Int64
	w   Workload
	err error
}

func (c *countingVerifier) Verify(context.Context, Token) (Workload, error) {
	c.n.Add(1)
	return c.w, c.err
}

func TestCachingVerifier_Verify_reusesSuccessUntilExpiry(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	inner := &countingVerifier{w: Workload{Namespace: "demo", ExpiresAt: clk.Now().Add(30 * time.Second)}}
	c, err := NewCachingVerifier(CacheConfig{Verifier: inner, TTL: time.Minute, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	tok := NewToken("a.b.c")
	for range 5 {
		if w, err := c.Verify(context.Background(), tok); err != nil || w.Namespace != "demo" {
			t.Fatal(w, err)
		}
	}
	if inner.n.Load() != 1 {
		t.Fatalf("verified %d times, want 1", inner.n.Load())
	}
	clk.Step(30 * time.Second) // the token's exp, before the cache TTL
	_, _ = c.Verify(context.Background(), tok)
	if inner.n.Load() != 2 {
		t.Fatal("a cached result outlived the token's exp")
	}
	_, _ = c.Verify(context.Background(), NewToken("other"))
	if inner.n.Load() != 3 {
		t.Fatal("different tokens shared a result")
	}
}

func TestCachingVerifier_Verify_negativeCachedBrieflyUnavailableNever(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	inner := &countingVerifier{err: &VerifyError{Reason: ReasonExpired}}
	c, _ := NewCachingVerifier(CacheConfig{Verifier: inner, NegativeTTL: 5 * time.Second, Clock: clk})
	tok := NewToken("bad")
	for range 3 {
		if _, err := c.Verify(context.Background(), tok); !errors.Is(err, ErrInvalidToken) {
			t.Fatal(err)
		}
	}
	if inner.n.Load() != 1 {
		t.Fatalf("negative result not reused: %d", inner.n.Load())
	}
	clk.Step(5 * time.Second)
	_, _ = c.Verify(context.Background(), tok)
	if inner.n.Load() != 2 {
		t.Fatal("negative result outlived NegativeTTL")
	}
	inner.err = ErrUnavailable
	tok2 := NewToken("x")
	_, _ = c.Verify(context.Background(), tok2)
	_, _ = c.Verify(context.Background(), tok2)
	if inner.n.Load() != 4 {
		t.Fatal("an unavailable result was cached")
	}
}

func TestCachingVerifier_Verify_bounded(t *testing.T) {
	inner := &countingVerifier{w: Workload{Namespace: "demo"}}
	c, _ := NewCachingVerifier(CacheConfig{Verifier: inner, MaxEntries: 10})
	for i := range 100 {
		_, _ = c.Verify(context.Background(), NewToken(string(rune('a'+i%26))+string(rune(i))))
	}
	if c.Len() > 10 {
		t.Fatalf("cache grew to %d entries", c.Len())
	}
}

func TestCachingVerifier_Verify_concurrentShareOneCall(t *testing.T) {
	gate := make(chan struct{})
	inner := &blockingVerifier{gate: gate}
	c, _ := NewCachingVerifier(CacheConfig{Verifier: inner})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = c.Verify(context.Background(), NewToken("same"))
		}()
	}
	for inner.n.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(gate)
	wg.Wait()
	// Callers that arrived while the flight ran shared it; the others found the cached
	// result. Either way the inner verifier ran exactly once.
	if n := inner.n.Load(); n != 1 {
		t.Fatalf("%d verifications for 20 concurrent identical tokens, want 1", n)
	}
}

func TestCachingVerifier_Verify_cancelledCallerDoesNotFailOthers(t *testing.T) {
	gate := make(chan struct{})
	inner := &blockingVerifier{gate: gate}
	c, _ := NewCachingVerifier(CacheConfig{Verifier: inner})
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := c.Verify(ctx, NewToken("same")); first <- err }()
	for inner.n.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { _, err := c.Verify(context.Background(), NewToken("same")); second <- err }()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	close(gate)
	if err := <-second; err != nil {
		t.Fatalf("the other caller failed because the first gave up: %v", err)
	}
}

type blockingVerifier struct {
	n    atomic.Int64
	gate chan struct{}
}

func (b *blockingVerifier) Verify(context.Context, Token) (Workload, error) {
	b.n.Add(1)
	<-b.gate
	return Workload{Namespace: "demo"}, nil
}

func TestCachingVerifier_realVerifierEndToEnd(t *testing.T) {
	dir := t.TempDir()
	dev, err := LoadOrCreateDevIssuer(dir+"/k.jwk", "https://i")
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(Config{Issuer: "https://i", Keys: dev.KeySet(), TrustDomain: mustTD(t)})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := NewCachingVerifier(CacheConfig{Verifier: v})
	tok, _ := dev.Issue(DevTokenRequest{Namespace: "demo", ServiceAccount: "app"})
	w1, err := c.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	w2, _ := c.Verify(context.Background(), tok)
	if w1.PodUID != w2.PodUID || w1.ID != w2.ID {
		t.Fatal("cached workload differs")
	}
	tampered := NewToken(tok.Reveal() + "x")
	if _, err := c.Verify(context.Background(), tampered); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("tampered token after a cached success: %v", err)
	}
}

// BenchmarkCachingVerifier_Verify_warm is the cached path: an HMAC of the token and a map
// lookup. BenchmarkVerifier_Verify is the cold path (signature and claims).
func BenchmarkCachingVerifier_Verify_warm(b *testing.B) {
	dev, _ := LoadOrCreateDevIssuer(b.TempDir()+"/k.jwk", "https://i")
	v, _ := NewVerifier(Config{Issuer: "https://i", Keys: dev.KeySet(), TrustDomain: mustTD(b)})
	c, _ := NewCachingVerifier(CacheConfig{Verifier: v})
	tok, _ := dev.Issue(DevTokenRequest{Namespace: "demo", ServiceAccount: "app"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Verify(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}

func mustTD(t testing.TB) spiffeid.TrustDomain {
	t.Helper()
	return spiffeid.RequireTrustDomainFromString("td")
}

// With the verifier unavailable (the apiserver down in TokenReview mode), a success verified
// before answers past the cache TTL until the token's exp, and never after it; a token never
// verified gets the unavailable error, and a rejection is not turned into a success.
func TestCachingVerifier_Verify_unavailableServesCachedUntilExp(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	inner := &countingVerifier{w: Workload{Namespace: "demo", ExpiresAt: clk.Now().Add(10 * time.Minute)}}
	c, err := NewCachingVerifier(CacheConfig{Verifier: inner, TTL: time.Minute, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	tok := NewToken("a.b.c")
	if _, err := c.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	inner.w, inner.err = Workload{}, &unavailableError{cause: errors.New("apiserver unreachable")}
	clk.Step(5 * time.Minute) // past the TTL, before exp
	if w, err := c.Verify(context.Background(), tok); err != nil || w.Namespace != "demo" {
		t.Fatalf("verified identity during the outage: %v %v", w, err)
	}
	if inner.n.Load() != 2 {
		t.Fatalf("verified %d times, want 2: the verifier is asked first", inner.n.Load())
	}
	if _, err := c.Verify(context.Background(), NewToken("never-seen")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a token never verified during the outage: %v, want ErrUnavailable", err)
	}
	clk.Step(5 * time.Minute) // the token's exp
	if _, err := c.Verify(context.Background(), tok); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("after exp: %v, want ErrUnavailable", err)
	}

	// A rejection while the verifier works is not a success that could later stand in.
	bad := NewToken("bad")
	inner.err = &VerifyError{Reason: ReasonExpired}
	_, _ = c.Verify(context.Background(), bad)
	inner.err = &unavailableError{cause: errors.New("apiserver unreachable")}
	clk.Step(time.Minute)
	if _, err := c.Verify(context.Background(), bad); err == nil {
		t.Fatal("a rejected token was allowed during the outage")
	}
}
