package rotate

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/source"
)

// fakeSource is a hand-written source whose answers the test controls.
type fakeSource struct {
	mu      sync.Mutex
	version int
	err     error
	expires time.Time
	renew   time.Time
	fetches atomic.Int64
	gate    chan struct{} // when non-nil, Fetch waits for it (or ctx)
	lastCtx context.Context
	changes chan string
}

func (f *fakeSource) Fetch(ctx context.Context, path string) (*source.Secret, error) {
	f.fetches.Add(1)
	f.mu.Lock()
	gate := f.gate
	f.lastCtx = ctx
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return &source.Secret{
		Data:       map[string]source.Value{"k": source.Value("v" + strconv.Itoa(f.version))},
		Version:    strconv.Itoa(f.version),
		ExpiresAt:  f.expires,
		RenewAfter: f.renew,
	}, nil
}

func (f *fakeSource) set(version int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.version, f.err = version, err
}

// notifyingSource adds change notifications to fakeSource.
type notifyingSource struct{ *fakeSource }

func (n notifyingSource) Changes(ctx context.Context) <-chan string {
	out := make(chan string)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-n.changes:
				select {
				case out <- p:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newEngine(t testing.TB, src source.Source, clk *clocktesting.FakeClock) *Engine {
	t.Helper()
	e, err := New(Config{Sources: map[string]source.Source{"s": src}, Logger: discard(), Clock: clk, PollInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var ref = source.Ref{Source: "s", Path: "p"}

func TestNew_requiresDependencies(t *testing.T) {
	if _, err := New(Config{Logger: discard()}); err == nil {
		t.Error("no sources: want error")
	}
	if _, err := New(Config{Sources: map[string]source.Source{"s": &fakeSource{}}}); err == nil {
		t.Error("no logger: want error")
	}
}

func TestEngine_Get_sharesOneFetch(t *testing.T) {
	src := &fakeSource{version: 1, gate: make(chan struct{})}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	const callers = 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.Get(context.Background(), ref)
			if err == nil && s.Version != "1" {
				err = errors.New("wrong version " + s.Version)
			}
			errs <- err
		}()
	}
	// Let every caller join the flight before the source answers.
	waitFor(t, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		f := e.flights[ref]
		return f != nil && f.waiters == callers
	})
	close(src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := src.fetches.Load(); n != 1 {
		t.Fatalf("source fetched %d times for %d concurrent callers, want 1", n, callers)
	}
	// Warm cache: no more fetches.
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	if n := src.fetches.Load(); n != 1 {
		t.Fatalf("warm Get fetched again: %d fetches", n)
	}
}

func TestEngine_Get_cancelledCallerDoesNotFailOthers(t *testing.T) {
	src := &fakeSource{version: 1, gate: make(chan struct{})}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := e.Get(ctx, ref); first <- err }()
	second := make(chan error, 1)
	go func() { _, err := e.Get(context.Background(), ref); second <- err }()
	waitFor(t, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		f := e.flights[ref]
		return f != nil && f.waiters == 2
	})
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: got %v, want context.Canceled", err)
	}
	close(src.gate)
	if err := <-second; err != nil {
		t.Fatalf("other caller failed: %v", err)
	}
}

func TestEngine_Get_lastWaiterGoneCancelsFetch(t *testing.T) {
	src := &fakeSource{version: 1, gate: make(chan struct{})}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := e.Get(ctx, ref); done <- err }()
	waitFor(t, func() bool { return src.fetches.Load() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	src.mu.Lock()
	fetchCtx := src.lastCtx
	src.mu.Unlock()
	select {
	case <-fetchCtx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("backend call was not cancelled after its only caller left")
	}
	waitFor(t, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.flights) == 0
	})
	// The cache holds nothing from the abandoned call; the next Get fetches afresh.
	src.mu.Lock()
	src.gate = nil
	src.mu.Unlock()
	if s, err := e.Get(context.Background(), ref); err != nil || s.Version != "1" {
		t.Fatalf("after abandoned fetch: %v, %v", s, err)
	}
}

func TestEngine_Refresh_transientErrorKeepsServing(t *testing.T) {
	src := &fakeSource{version: 1}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	src.set(2, source.ErrUnavailable)
	if err := e.Refresh(context.Background(), ref); !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("refresh: %v", err)
	}
	s, err := e.Get(context.Background(), ref)
	if err != nil || s.Version != "1" {
		t.Fatalf("during outage: got %v, %v; want cached version 1", s, err)
	}
	st := e.Status()
	if len(st) != 1 || !st[0].Stale || st[0].LastError != source.ErrUnavailable.Error() {
		t.Fatalf("status during outage: %+v", st)
	}
}

func TestEngine_Refresh_deletedPurgesAndSignals(t *testing.T) {
	src := &fakeSource{version: 1}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	sub := e.Subscribe(ref)
	defer sub.Close()
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	drain(sub)
	src.set(1, source.ErrDeleted)
	_ = e.Refresh(context.Background(), ref)
	select {
	case <-sub.C():
	default:
		t.Fatal("subscriber not signalled after deletion")
	}
	if _, err := e.Get(context.Background(), ref); !errors.Is(err, source.ErrDeleted) {
		t.Fatalf("after deletion Get = %v, want ErrDeleted (never the purged value)", err)
	}
}

func TestEngine_Get_expiredValueNotServed(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	src := &fakeSource{version: 1, expires: clk.Now().Add(time.Minute)}
	e := newEngine(t, src, clk)
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	src.set(1, source.ErrUnavailable)
	clk.Step(time.Minute)
	if _, err := e.Get(context.Background(), ref); !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("past expiry with source down: got %v, want the source error, never the expired value", err)
	}
}

// TestEngine_Get_expiredOnArrivalNotServed: a fetch that answers a value already past its
// expiry (a 0 s lease, or one that ran out while the answer was slow) fails as Unavailable
// and is not cached, so no waiter, watch or volume gets it; the value cached before stays.
func TestEngine_Get_expiredOnArrivalNotServed(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	src := &fakeSource{version: 1, expires: clk.Now()}
	e := newEngine(t, src, clk)
	s, err := e.Get(context.Background(), ref)
	if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("a value expired on arrival: secret %v, err %v; want Unavailable", s, err)
	}
	src.mu.Lock()
	src.expires = clk.Now().Add(time.Minute)
	src.mu.Unlock()
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatalf("the next fetch of a valid value: %v", err)
	}
	src.mu.Lock()
	src.version, src.expires = 2, clk.Now().Add(-time.Second)
	src.mu.Unlock()
	if err := e.Refresh(context.Background(), ref); !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("refresh answered with an expired value: %v, want Unavailable", err)
	}
	got, err := e.Get(context.Background(), ref)
	if err != nil || got.Version != "1" {
		t.Fatalf("after an expired answer the cache holds %v (%v), want version 1 still", got, err)
	}
}

func TestEngine_Run_notificationRefreshesSubscribers(t *testing.T) {
	src := notifyingSource{&fakeSource{version: 1, changes: make(chan string)}}
	clk := clocktesting.NewFakeClock(time.Now())
	e := newEngine(t, src, clk)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Error(err)
		}
	}()
	sub := e.Subscribe(ref)
	defer sub.Close()
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	drain(sub)
	src.set(2, nil)
	src.changes <- "p"
	select {
	case <-sub.C():
	case <-time.After(10 * time.Second):
		t.Fatal("no signal after a change notification")
	}
	s, err := e.Get(context.Background(), ref)
	if err != nil || s.Version != "2" {
		t.Fatalf("after change: %v, %v", s, err)
	}
	if n := src.fetches.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2 (initial + one refresh)", n)
	}
}

func TestEngine_Run_renewsWhenDue(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	src := &fakeSource{version: 1, renew: clk.Now().Add(time.Minute)}
	e := newEngine(t, src, clk)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- e.Run(ctx) }()
	defer func() { cancel(); <-runDone }()
	sub := e.Subscribe(ref)
	defer sub.Close()
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	drain(sub)
	src.mu.Lock()
	src.version, src.renew = 2, clk.Now().Add(time.Hour)
	src.mu.Unlock()
	waitFor(t, func() bool {
		clk.Step(30 * time.Second)
		select {
		case <-sub.C():
			return true
		default:
			return false
		}
	})
	if s, _ := e.Get(context.Background(), ref); s.Version != "2" {
		t.Fatalf("after renewal: version %s", s.Version)
	}
}

func TestEngine_Get_unknownSource(t *testing.T) {
	e := newEngine(t, &fakeSource{}, clocktesting.NewFakeClock(time.Now()))
	if _, err := e.Get(context.Background(), source.Ref{Source: "nope", Path: "x"}); !errors.Is(err, source.ErrUnknownSource) {
		t.Fatalf("got %v", err)
	}
}

func TestEngine_Get_returnsCopies(t *testing.T) {
	e := newEngine(t, &fakeSource{version: 1}, clocktesting.NewFakeClock(time.Now()))
	s1, _ := e.Get(context.Background(), ref)
	s1.Data["k"][0] = 'X'
	s2, _ := e.Get(context.Background(), ref)
	if string(s2.Data["k"]) != "v1" {
		t.Fatal("a caller modified the cached value")
	}
}

func drain(s *Subscription) {
	select {
	case <-s.C():
	default:
	}
}

// waitFor polls cond; the bound only keeps a broken test from hanging.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func BenchmarkEngine_Get_warm(b *testing.B) {
	e := newEngine(b, &fakeSource{version: 1}, clocktesting.NewFakeClock(time.Now()))
	ctx := context.Background()
	if _, err := e.Get(ctx, ref); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.Get(ctx, ref); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// orderedSource answers each fetch with the version it was given when the fetch started,
// after the test releases it.
type orderedSource struct {
	mu      sync.Mutex
	started []chan int
}

func (o *orderedSource) Fetch(ctx context.Context, _ string) (*source.Secret, error) {
	ch := make(chan int, 1)
	o.mu.Lock()
	o.started = append(o.started, ch)
	o.mu.Unlock()
	select {
	case v := <-ch:
		return &source.Secret{Version: strconv.Itoa(v), Data: map[string]source.Value{}}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (o *orderedSource) release(i, version int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.started[i] <- version
}

func (o *orderedSource) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.started)
}

func TestEngine_Refresh_slowOlderFetchNeverOverwritesNewer(t *testing.T) {
	src := &orderedSource{}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- e.Refresh(ctx, ref) }()
	waitFor(t, func() bool { return src.count() == 1 })
	second := make(chan error, 1)
	go func() { second <- e.Refresh(ctx, ref) }()
	waitFor(t, func() bool { return src.count() == 2 })
	src.release(1, 2) // the later fetch answers first, with the newer version
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	src.release(0, 1) // then the older, slower one
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	s, err := e.Get(ctx, ref)
	if err != nil || s.Version != "2" {
		t.Fatalf("cached version %v (%v), want 2: a slow older fetch overwrote a newer one", s, err)
	}
}

func TestEngine_Get_afterAbandonedFlightStartsAfresh(t *testing.T) {
	src := &fakeSource{version: 1, gate: make(chan struct{})}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := e.Get(ctx, ref); first <- err }()
	waitFor(t, func() bool { return src.fetches.Load() == 1 })
	// Hold the abandoned call inside the source so its flight is still registered when the
	// next caller arrives.
	src.mu.Lock()
	held := src.lastCtx
	src.mu.Unlock()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	<-held.Done()
	close(src.gate)
	s, err := e.Get(context.Background(), ref)
	if err != nil || s.Version != "1" {
		t.Fatalf("a caller arriving after an abandoned fetch got %v, %v; want a fresh fetch", s, err)
	}
}
